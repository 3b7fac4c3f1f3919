"""An audit's specification, validated against the model before any work starts.

:func:`prepare_audit` checks the spec fields, the method and its parameters (through
:func:`engine.explain.run.build_request`, on one synthetic row, so without the explain row cap), the columns of
the dataset against the model card, and every cell (:func:`engine.audits.dataset.check_dataset`). With
``on_bad_rows: "skip"`` bad rows are left out and counted; with ``"reject"`` the caller refuses the upload.
Example::

    spec, checked = prepare_audit({"model": "credit", "label": "y"}, frame, model, settings, variant="fp32")
    if checked.bad_rows and spec.on_bad_rows == "reject":
        raise bad_rows_error(checked)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.audits.dataset import CheckedDataset, check_dataset
from engine.audits.fairness import FairnessThresholds
from engine.audits.recourse import recourse_options
from engine.audits.study import check_variants
from engine.errors import InvalidRequest, UnknownField
from engine.explain.plan import ExplainRequest, plan_explanation
from engine.models.store import ModelVersion
from engine.settings import Settings

SPEC_FIELDS = frozenset(
    {"model", "version", "variant", "method", "parameters", "label", "sensitive"}
    | {"positive", "on_bad_rows", "thresholds", "title", "variants", "recourse", "callback_url"}
)
BAD_ROW_POLICIES = ("reject", "skip")


@dataclass(frozen=True)
class AuditSpec:
    """What an audit explains and how it reports, as stored in ``spec.json``.

    Attributes:
        title: Report title.
        task: The model's task.
        features: Model feature names, in model order.
        label: Ground-truth column of the upload, if any.
        sensitive: Sensitive columns of the upload.
        positive: The class whose rate fairness compares (classification).
        on_bad_rows: ``reject`` or ``skip``.
        thresholds: Fairness limits (fields of :class:`FairnessThresholds`).
        request: The explanation request of every chunk, without its rows.
        recourse: Recourse options (:mod:`engine.audits.recourse`), or ``None`` when not asked for.
        compression: The compression study (:func:`engine.audits.study.check_variants`), or ``None``.
        input_kind: The model's input kind: ``tabular``, or ``image``/``text``
            (:mod:`engine.audits.perception` explains and reports those).
    """

    title: str
    task: str
    features: list[str]
    label: str | None
    sensitive: list[str]
    positive: str | None
    on_bad_rows: str
    thresholds: dict[str, float]
    request: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] | None = None
    input_kind: str = "tabular"
    recourse: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditSpec:
        """Rebuild a spec from :meth:`to_dict` output."""
        return cls(**dict(data))

    def explain_request(self, rows: list[Any] | dict[str, Any]) -> ExplainRequest:
        """The explanation request of one chunk of rows (raw feature space, texts or packed images)."""
        return ExplainRequest.from_payload({**self.request, "rows": rows})


def prepare_audit(
    body: Mapping[str, Any],
    frame: pd.DataFrame,
    model: ModelVersion,
    settings: Settings,
    *,
    variant: str,
    where: str = "dataset",
) -> tuple[AuditSpec, CheckedDataset]:
    """Validate an audit spec and its dataset against ``model`` (no model evaluation).

    Args:
        body: The spec fields (see :data:`SPEC_FIELDS`); ``model``/``version``/``variant`` already resolved.
        frame: The uploaded rows, one column per feature, plus label and sensitive columns.
        model: The model version to audit.
        settings: Row caps and explanation limits.
        variant: The resolved variant.
        where: Name of the dataset in error fields (``dataset`` or ``rows``).

    Returns:
        The spec, and the checked dataset (its good rows, and its bad cells listed).

    Raises:
        UnknownField: A spec or thresholds field is unknown.
        InvalidRequest: A bad field, method or parameter; missing or unknown columns; too many rows; no valid row.
        NotFound: ``variant_not_found`` naming ``variants[i]``, a variant of the study that is not ready.
    """
    for key in body:
        if key not in SPEC_FIELDS:
            raise UnknownField(f"unknown field {key!r}", field=key)
    if len(frame) > settings.max_audit_rows:
        msg = f"{len(frame)} rows is more than the limit of {settings.max_audit_rows}"
        raise InvalidRequest(msg, code="too_many_rows", field=where)
    card = model.card
    if card.input_kind != "tabular":
        # Image and text audits are validated by engine.audits.perception.prepare_perception_audit.
        raise InvalidRequest(
            f"a {card.input_kind} model's audit is prepared by prepare_perception_audit",
            code="method_not_applicable",
            field="model",
        )
    label = _optional_str(body, "label")
    sensitive = body.get("sensitive", [])
    if not isinstance(sensitive, list) or not all(isinstance(s, str) for s in sensitive):
        raise InvalidRequest("sensitive must be a list of column names", code="invalid_parameter", field="sensitive")
    positive = _positive(body, card.task, list(card.class_names), sensitive)
    policy = body.get("on_bad_rows", "reject")
    if policy not in BAD_ROW_POLICIES:
        raise InvalidRequest(
            f"on_bad_rows must be one of {list(BAD_ROW_POLICIES)}", code="invalid_parameter", field="on_bad_rows"
        )
    title = _optional_str(body, "title") or f"Audit of {model.name} v{model.version}"
    template = {k: body[k] for k in ("method", "parameters") if k in body}
    template["targets"] = [positive] if positive is not None else None
    plan = plan_explanation(template, model, settings, variant, rows=1)  # each slice is costed again as it runs
    spec = AuditSpec(
        title=title,
        task=card.task,
        features=card.feature_names,
        label=label,
        sensitive=list(sensitive),
        positive=positive,
        on_bad_rows=str(policy),
        thresholds=_thresholds(body.get("thresholds")),
        request=plan.to_dict(),
        recourse=recourse_options(body.get("recourse"), model, positive),
        compression=check_variants(body.get("variants"), model, settings, variant=variant),
    )
    _check_columns(frame, spec, where)
    checked = check_dataset(frame, card, label=label, sensitive=spec.sensitive, where=where)
    if spec.on_bad_rows == "skip" and len(checked.rows) == 0:
        raise InvalidRequest(f"none of the {len(frame)} rows of {where} is valid", code="no_rows", field=where)
    return spec, checked


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string", code="invalid_parameter", field=key)
    return value


def _positive(body: Mapping[str, Any], task: str, classes: list[str], sensitive: list[str]) -> str | None:
    positive = _optional_str(body, "positive")
    if task == "regression":
        if positive is not None:
            raise InvalidRequest("a regressor has no positive class", code="invalid_parameter", field="positive")
        return None
    if positive is not None and positive not in classes:
        msg = f"{positive!r} is not a class of the model: {classes}"
        raise InvalidRequest(msg, code="unknown_target", field="positive")
    if positive is None and len(classes) == 2:
        return classes[-1]
    if positive is None and sensitive:
        msg = f"fairness of a {len(classes)}-class model needs the positive class"
        raise InvalidRequest(msg, code="positive_required", field="positive")
    return positive


def _thresholds(value: object) -> dict[str, float]:
    defaults = asdict(FairnessThresholds())
    if value is None:
        return defaults
    if not isinstance(value, dict):
        raise InvalidRequest("thresholds must be an object", code="invalid_parameter", field="thresholds")
    for key, number in value.items():
        if key not in defaults:
            raise UnknownField(f"unknown threshold {key!r}; known: {sorted(defaults)}", field=f"thresholds.{key}")
        if isinstance(number, bool) or not isinstance(number, int | float) or not np.isfinite(number) or number < 0:
            raise InvalidRequest(f"{key} must be a number ≥ 0", code="invalid_parameter", field=f"thresholds.{key}")
    return {**defaults, **{k: float(v) for k, v in value.items()}}


def _check_columns(frame: pd.DataFrame, spec: AuditSpec, where: str) -> None:
    missing = [f for f in spec.features if f not in frame.columns]
    if missing:
        shown = ", ".join(repr(m) for m in missing)
        raise InvalidRequest(f"{where} lacks the feature columns {shown}", code="missing_feature", field=where)
    if spec.label is not None:
        if spec.label not in frame.columns:
            raise InvalidRequest(f"{where} has no column {spec.label!r}", code="unknown_column", field="label")
        if spec.label in spec.features:
            msg = f"{spec.label!r} is a model feature; the label must not be fed to the model"
            raise InvalidRequest(msg, code="invalid_parameter", field="label")
    for i, name in enumerate(spec.sensitive):
        if name not in frame.columns:
            raise InvalidRequest(f"{where} has no column {name!r}", code="unknown_column", field=f"sensitive[{i}]")
