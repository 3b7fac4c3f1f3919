"""The method table is the one place methods are described: the API contract and validation read it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.methods import METHODS, evaluations_per_row, find_method, get_explainer, validate_params

ROOT = Path(__file__).resolve().parents[3]


def _method_enums(node: object) -> list[list[str]]:
    """Every ``enum`` in the contract that lists ``auto`` (the method enums of explain and audit requests)."""
    found = []
    if isinstance(node, dict):
        enum = node.get("enum")
        if isinstance(enum, list) and "auto" in enum:
            found.append(enum)
        for value in node.values():
            found += _method_enums(value)
    elif isinstance(node, list):
        for value in node:
            found += _method_enums(value)
    return found


def test_openapi_method_enums_are_the_table_names() -> None:
    enums = _method_enums(yaml.safe_load((ROOT / "openapi.yaml").read_text()))
    assert len(enums) == 2  # explain request and audit spec
    for enum in enums:
        assert enum == ["auto", *METHODS]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_entry_is_complete_and_loads(name: str) -> None:
    entry = METHODS[name]
    assert entry.name == name and entry.input_kinds and "seed" in entry.params
    assert get_explainer(name).name == name
    defaults = validate_params(name, {})
    assert evaluations_per_row(name, defaults, d=4, background_rows=10) > 0
    if entry.max_features is not None:
        assert entry.params["max_features"].default == entry.max_features


def test_cost_comes_from_the_parameters() -> None:
    assert evaluations_per_row("kernel_shap", {"nsamples": 100}, d=4, background_rows=10) == 1000
    assert evaluations_per_row("exact", {"max_features": 14}, d=4, background_rows=10) == 160
    assert evaluations_per_row("lime", {"num_samples": 300}, d=4, background_rows=10) == 300


def test_unknown_methods_are_unknown_method() -> None:
    with pytest.raises(Exception) as caught:
        find_method("gradcam")
    assert getattr(caught.value, "code", None) == "unknown_method"
