"""Quantized and pruned variants of a stored model: their state on disk, and which one serves.

Each variant lives in ``name/version/variants/KIND/``: ``state.json`` (a :class:`VariantState`: its
:class:`State`, the fidelity report, the error) and, only once it passed the fidelity gate, ``model.onnx``.
A rejected or failed variant therefore cannot be served, and nothing a variant does touches the fp32 model.
Building one is :mod:`engine.variants.build`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequest, NotFound
from engine.files import write_atomic
from engine.models.card import VARIANT_KINDS
from engine.models.store import ModelVersion
from engine.settings import Settings
from engine.timestamps import utc_now

ALIASES = {"int8": ("int8_static", "int8_dynamic")}


class State(StrEnum):
    """Where a variant is: only ``ready`` ones are served."""

    BUILDING = "building"
    READY = "ready"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class VariantState:
    """A variant's ``state.json``.

    Attributes:
        kind: The variant kind (one of :data:`~engine.models.card.VARIANT_KINDS`).
        state: Its :class:`State`.
        created: When it was first requested.
        updated: When the state last changed.
        job: The id of the job building it, once queued.
        error: ``{code, message}`` when it failed.
        report: The fidelity and speed report, once measured.
        gate: Why the gate passed or rejected it.
        measured_on_this_cpu: Whether its report was made on this kind of CPU (set when listed, not stored);
            ``fastest`` trusts only those.
    """

    kind: str
    state: State
    created: str
    updated: str
    job: str | None = None
    error: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    gate: Any = None
    measured_on_this_cpu: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rebuildable(self) -> bool:
        """A new build may replace this state (it failed or was rejected)."""
        return self.state in (State.FAILED, State.REJECTED)

    def to_dict(self) -> dict[str, Any]:
        """The state as stored and shown (``openapi.yaml``'s Variant)."""
        out: dict[str, Any] = {"kind": self.kind, "created": self.created, **self.extra}
        for name in ("job", "error", "report", "gate", "measured_on_this_cpu"):
            value = getattr(self, name)
            if value is not None or name == "error":
                out[name] = value
        return out | {"state": self.state.value, "updated": self.updated}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantState:
        """Read a stored state (fields this version does not know are kept in ``extra``)."""
        known = {f.name for f in fields(cls)} - {"extra", "state"}
        return cls(
            state=State(data["state"]),
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known and k != "state"},
        )


def variant_dir(model: ModelVersion, kind: str) -> Path:
    """Return the directory of one variant of ``model``."""
    return model.path / "variants" / kind


def read_state(model: ModelVersion, kind: str) -> VariantState | None:
    """Return a variant's state, or ``None`` when it was never requested."""
    path = variant_dir(model, kind) / "state.json"
    if not path.exists():
        return None
    return VariantState.from_dict(json.loads(path.read_text()))


def write_state(model: ModelVersion, kind: str, state: State, **changes: Any) -> VariantState:
    """Record a variant's state atomically (keeping its earlier fields) and return it."""
    directory = variant_dir(model, kind)
    directory.mkdir(parents=True, exist_ok=True)
    now = utc_now()
    current = read_state(model, kind) or VariantState(kind=kind, state=state, created=now, updated=now)
    updated = replace(current, state=state, updated=now, **changes)
    write_atomic(directory / "state.json", json.dumps(updated.to_dict(), indent=2))
    return updated


def publish(model: ModelVersion, kind: str, onnx_bytes: bytes) -> Path:
    """Place a variant's ONNX file so it can be served (call only after the gate passed)."""
    directory = variant_dir(model, kind)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "model.onnx"
    write_atomic(target, onnx_bytes)
    return target


def list_variants(model: ModelVersion) -> list[VariantState]:
    """Return the state of every requested variant of ``model``.

    A measured variant says whether its report was made on this kind of CPU
    (``measured_on_this_cpu``); ``fastest`` trusts only those.
    """
    from engine.runtime.hardware import host_cpu, same_kind

    found = []
    for kind in VARIANT_KINDS:
        state = read_state(model, kind)
        if state is not None:
            if isinstance(state.report, dict):
                state = replace(state, measured_on_this_cpu=same_kind(state.report.get("measured_on"), host_cpu()))
            found.append(state)
    return found


def check_kind(kind: object) -> str:
    """Validate a requested variant kind.

    Raises:
        InvalidRequest: ``invalid_parameter`` naming ``kind``.
    """
    if kind not in VARIANT_KINDS:
        raise InvalidRequest(f"kind must be one of {list(VARIANT_KINDS)}", code="invalid_parameter", field="kind")
    return str(kind)


def resolve(model: ModelVersion, requested: str, gate: dict[str, float], *, allow_drift: bool = False) -> str:
    """Resolve a requested variant name to a ready variant kind (or ``fp32``).

    ``fastest`` is the ready variant that measured fastest without being
    slower than fp32 on single rows or in batches (else ``fp32``), skipping
    unstructured pruning and, unless ``allow_drift``, variants flagged for
    explanation drift; ``int8`` is the faster ready int8 variant.

    Raises:
        NotFound: ``variant_not_found`` when the name is unknown or not ready.

    Args:
        model: The model version.
        requested: ``fp32``, ``fastest``, ``int8`` or a kind.
        gate: ``min_top1`` / ``max_norm_error`` of the fidelity gate.
        allow_drift: Whether ``fastest`` may pick a ``drift_flagged`` variant.
    """
    if requested == "fp32":
        return "fp32"  # every plain :predict asks this; nothing to read
    from engine.variants.fidelity import pick_fastest

    ready = {s.kind: s.report or {} for s in list_variants(model) if s.state is State.READY}
    if requested == "fastest":
        return pick_fastest(
            ready,
            model.card.task,
            min_top1=gate["min_top1"],
            max_norm_error=gate["max_norm_error"],
            allow_drift=allow_drift,
        )
    options = [k for k in ALIASES.get(requested, (requested,)) if k in ready]
    if not options:
        raise NotFound(
            f"model {model.name!r} v{model.version} has no ready variant {requested!r}",
            code="variant_not_found",
            field="variant",
        )
    fastest = pick_fastest(
        {k: ready[k] for k in options},
        model.card.task,
        min_top1=gate["min_top1"],
        max_norm_error=gate["max_norm_error"],
    )
    return fastest if fastest != "fp32" else options[0]


def gate_of(settings: Settings) -> dict[str, float]:
    """Return the fidelity gate's thresholds from the settings."""
    return {"min_top1": settings.variant_min_top1, "max_norm_error": settings.variant_max_norm_error}
