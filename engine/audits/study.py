"""The ``variants`` of an audit spec, checked at submission: the compression study's variants, all ready.

The study itself runs in the chunks and the merge (:mod:`engine.audits.compression`). Example::

    study = check_variants(["int8_static"], model, settings, variant="fp32")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import InvalidRequest, NotFound
from engine.models.store import ModelVersion
from engine.settings import Settings
from engine.variants.state import gate_of, read_state, resolve

TOP_K = 3
"""Size of the top-feature sets compared per row (as the variant build's drift report)."""
_Dict = dict[str, Any]


def check_variants(value: object, model: ModelVersion, settings: Settings, *, variant: str) -> _Dict | None:
    """Validate the spec's ``variants`` at submission: each must name a ready variant of ``model``.

    Args:
        value: The spec's ``variants`` (``None`` when absent).
        model: The audited model version.
        settings: The fidelity gate (which resolves ``int8``) and the drift threshold.
        variant: The audited variant; a study compares with fp32, so it must be ``fp32``.

    Returns:
        ``None`` without a study, else ``{"variants", "top_k", "min_spearman", "built"}`` (``built``: per variant,
        its build report's size ratio and speedups), as stored in the spec.

    Raises:
        InvalidRequest: ``invalid_parameter`` naming ``variants`` or ``variants[i]`` (not a list of names, fp32,
            ``fastest``, a repeat), or ``variant`` when the audit is not of fp32.
        NotFound: ``variant_not_found`` naming ``variants[i]`` when it is not ready.
    """
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(
            "variants must be a non-empty list of variant names", code="invalid_parameter", field="variants"
        )
    if variant != "fp32":
        msg = "a compression study compares each variant with fp32; audit fp32 (leave variant out)"
        raise InvalidRequest(msg, code="invalid_parameter", field="variant")
    kinds: list[str] = []
    for i, name in enumerate(value):
        where = f"variants[{i}]"
        if name in ("fp32", "fastest"):
            msg = f"{name!r} is not a variant to compare with fp32; name a variant kind"
            raise InvalidRequest(msg, code="invalid_parameter", field=where)
        try:
            kind = resolve(model, name, gate_of(settings))
        except NotFound as exc:  # the same answer as a direct call, naming the entry of the list
            raise NotFound(exc.detail, code=exc.code, field=where) from exc
        if kind in kinds:
            raise InvalidRequest(f"{name!r} repeats {kind!r}", code="invalid_parameter", field=where)
        kinds.append(kind)
    return {
        "variants": kinds,
        "top_k": min(TOP_K, len(model.card.features)),
        "min_spearman": settings.variant_min_drift_spearman,
        "built": {kind: _built(model, kind) for kind in kinds},
    }


def _built(model: ModelVersion, kind: str) -> _Dict:
    """What the variant buys, from its build report: size ratio and speedups (``None`` where unmeasured)."""
    state = read_state(model, kind)
    report = (state.report if state is not None else None) or {}
    speedup = (report.get("latency") or {}).get("speedup") or {}
    return {
        "size_ratio": (report.get("size_bytes") or {}).get("ratio"),
        "speedup_single_row": speedup.get("single_row"),
        "speedup_batch": speedup.get("batch"),
        "build_spearman_mean": (report.get("explanation_drift") or {}).get("spearman_mean"),
    }


def variant_dir(audit_dir: Path, kind: str) -> Path:
    """The directory of one variant's files in the audit stored at ``audit_dir``."""
    return audit_dir / "variants" / kind


def rows_path(audit_dir: Path, kind: str) -> Path:
    """The merged per-row table of one variant of the study of the audit stored at ``audit_dir``."""
    return variant_dir(audit_dir, kind) / "rows.parquet"
