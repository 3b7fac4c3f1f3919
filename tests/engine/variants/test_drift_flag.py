"""A variant whose explanations drift is flagged in its report, and ``fastest`` skips it unless the operator allows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.models.card import ModelCard
from engine.models.store import ModelRegistry
from engine.serving import Predictor
from engine.settings import Settings
from engine.variants.build import build
from engine.variants.state import State, write_state
from tests import builders


def test_a_drifting_variant_is_flagged_and_fastest_serves_it_only_when_allowed(tmp_path: Path) -> None:
    built = builders.study_mlp()
    # No rank correlation reaches 1.01: every variant built under it drifts "beyond the threshold".
    settings = Settings(model_dir=tmp_path / "models", variant_min_drift_spearman=1.01)
    registry = ModelRegistry(settings)
    model = registry.register(built.onnx_bytes, ModelCard.from_dict(built.card), built.background_csv(rows=40), "csv")
    state = build(model, "prune_structured", registry.background(model), settings, 0.25)
    assert state.state is State.READY and state.report is not None
    assert state.report["drift_flagged"] is True and state.report["drift_min_spearman"] == 1.01
    assert state.report["explanation_drift"]["spearman_median"] <= 1.0
    # Its build measured on this CPU; make it unambiguously faster, so only the flag can keep fastest from it.
    faster = {**state.report["latency"], "speedup": {"single_row": 1.5, "batch": 1.5}}
    write_state(model, "prune_structured", State.READY, report={**state.report, "latency": faster})

    strict, lenient = (
        Predictor(settings, registry),
        Predictor(replace(settings, variant_fastest_allows_drift=True), registry),
    )
    assert strict.resolve(model, "fastest")[0] == "fp32"
    assert lenient.resolve(model, "fastest")[0] == "prune_structured"
    assert strict.resolve(model, "prune_structured")[0] == "prune_structured"  # named, it is served all the same

    unflagged = build(
        model, "int8_static", registry.background(model), replace(settings, variant_min_drift_spearman=0.0)
    )
    assert unflagged.report is not None and unflagged.report["drift_flagged"] is False
