"""Request rows: the all-numbers fast path answers exactly as the cell-by-cell path, errors included."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from engine.errors import InvalidRequest
from engine.models.card import ModelCard
from engine.models.rows import parse_instances

NUMERIC = ModelCard.from_dict({"name": "m", "task": "regression", "features": ["a", "b", "c"]})


def test_numeric_array_rows_become_the_float64_matrix() -> None:
    rows = [[1, 2.5, -3e-05], [0, 1e300, 7]]
    out = parse_instances(rows, NUMERIC, max_rows=10)
    assert out.dtype == np.float64
    assert out.tolist() == [[1.0, 2.5, -3e-05], [0.0, 1e300, 7.0]]


def test_object_rows_and_array_rows_agree() -> None:
    rows: list[Any] = [[1, 2, 3], {"c": 6, "a": 4, "b": 5}]
    assert parse_instances(rows, NUMERIC, max_rows=10).tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


@pytest.mark.parametrize(
    ("rows", "code", "field"),
    [
        ([[1, 2, 3], [1, True, 3]], "not_numeric", "instances[1].b"),
        ([[1, 2, 3], [1, "2", 3]], "not_numeric", "instances[1].b"),
        ([[1, 2, 3], [1, None, 3]], "not_numeric", "instances[1].b"),
        ([[1, 2, 3], [1, 2]], "wrong_row_length", "instances[1]"),
        ([[1, 2, math.nan], [1, "x", 3]], "non_finite", "instances[0].c"),  # the first fault, in row order
        ([[1, 2, 3], [math.inf, 2, 3]], "non_finite", "instances[1].a"),
        ([[1, 2, 3], 4], "invalid_instances", "instances[1]"),
    ],
)
def test_faults_name_the_first_bad_cell(rows: list[Any], code: str, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_instances(rows, NUMERIC, max_rows=10)
    assert (caught.value.code, caught.value.field) == (code, field)


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        (b'{"instances": [[1e-05, 2E+99, 1e400]]}', "non_finite_number", "instances[0][2]"),
        (b'{"x": -1.8E+0308}', "non_finite_number", "x"),
        (b'{"x": 1' + b"0" * 400 + b".0}", "non_finite_number", "x"),
        (b'{"x": 12345678901234567890}', "number_out_of_range", "x"),
    ],
)
def test_json_reader_still_finds_overflowing_numbers(text: bytes, code: str, field: str) -> None:
    from service.json_text import read_json

    with pytest.raises(InvalidRequest) as caught:
        read_json(text, limit=10_000)
    assert (caught.value.code, caught.value.field) == (code, field)


def test_json_reader_takes_ordinary_exponents_and_long_fractions() -> None:
    from service.json_text import read_json

    text = b'{"instances": [[1e-05, 2E+99, 0.12345678901234567, 1e-300]]}'
    assert read_json(text, limit=10_000) == {"instances": [[1e-05, 2e99, 0.12345678901234567, 1e-300]]}
