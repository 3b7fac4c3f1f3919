"""Audit labels as users keep them: class names, class indices 0 … k−1, or true/false for two classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.audits.dataset import check_dataset
from engine.models.card import ModelCard


def _card(classes: list[str]) -> ModelCard:
    return ModelCard.from_dict(
        {"name": "m", "task": "classification", "features": ["income", "age"], "class_names": classes}
    )


def _frame(labels: list[object]) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({"income": np.arange(n, dtype=float), "age": np.full(n, 30.0), "y": labels})


@pytest.mark.parametrize(
    ("labels", "encoding"),
    [
        (["denied", "approved", "approved", None], "names"),
        ([0, 1, 1, None], "indices"),
        ([0.0, 1.0, 1.0, np.nan], "indices"),  # a CSV column with a gap reads as floats
        (["0", "1", "1", None], "indices"),
        ([False, True, True, None], "booleans"),
        (["false", "TRUE", "True", None], "booleans"),
    ],
)
def test_binary_labels_are_read_however_they_are_kept(labels: list[object], encoding: str) -> None:
    checked = check_dataset(_frame(labels), _card(["denied", "approved"]), label="y", sensitive=[])
    assert checked.bad_rows == 0 and checked.label_encoding == encoding
    assert checked.rows["label"].tolist() == ["denied", "approved", "approved", None]


def test_multiclass_indices_follow_the_card_order_and_booleans_do_not_apply() -> None:
    card = _card(["low", "mid", "high"])
    checked = check_dataset(_frame([2, 0, 1, 2]), card, label="y", sensitive=[])
    assert checked.label_encoding == "indices" and checked.rows["label"].tolist() == ["high", "low", "mid", "high"]
    refused = check_dataset(_frame([True, False, True, False]), card, label="y", sensitive=[])
    assert refused.bad_rows == 4 and refused.listed[0].code == "unknown_label"


def test_class_names_that_are_digits_are_names_first() -> None:
    """A card whose classes are "1" and "0" (in that order) reads "0" as the class named "0", not index 0."""
    checked = check_dataset(_frame(["0", "1", "0"]), _card(["1", "0"]), label="y", sensitive=[])
    assert checked.label_encoding == "names" and checked.rows["label"].tolist() == ["0", "1", "0"]


def test_bad_labels_are_quoted_as_the_user_wrote_them() -> None:
    checked = check_dataset(_frame([0, 1, 7, 1]), _card(["denied", "approved"]), label="y", sensitive=[])
    assert checked.label_encoding == "indices" and checked.bad_rows == 1
    (cell,) = checked.listed
    assert cell.field == "dataset[2].y" and cell.code == "unknown_label"
    assert cell.detail.startswith("7 is not one of the classes ['denied', 'approved'], nor a class index 0 … 1")
    assert "np." not in cell.detail
    typo = check_dataset(_frame(["denied", "aproved"]), _card(["denied", "approved"]), label="y", sensitive=[])
    assert typo.label_encoding == "names" and typo.listed[0].detail.startswith("'aproved' is not one of")
