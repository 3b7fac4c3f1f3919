"""orjson in place of json: job payloads, results and responses decode to the same values as before."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from rq.serializers import JSONSerializer

from engine.jobs import JobSerializer, dumps_json

VALUES: list[Any] = [
    {"instances": [[1e-05, 2.5, -0.0, 1e300]], "parameters": {"seed": 2**63 - 1}, "wait": 0},
    ["explain", None, [{"rows": [1, 2]}], {}],  # RQ's job data: function, instance, args, kwargs
    {"text": "Zürich ✓", "nested": {"a": [True, False, None]}},
]


@pytest.mark.parametrize("value", VALUES)
def test_job_serializer_round_trips_and_reads_rq_json(value: Any) -> None:
    expected = json.loads(json.dumps(value))
    assert JobSerializer.loads(JobSerializer.dumps(value)) == expected
    assert JobSerializer.loads(JSONSerializer.dumps(value)) == expected
    assert JSONSerializer.loads(JobSerializer.dumps(value)) == expected


def test_numpy_scalars_tuples_and_int_keys_encode_as_numbers_lists_and_strings() -> None:
    value = {"a": np.float64(0.25), "b": (np.int64(3), 1), 7: "seven", "c": np.float32(0.5)}
    assert json.loads(dumps_json(value)) == {"a": 0.25, "b": [3, 1], "7": "seven", "c": 0.5}


def test_what_json_cannot_encode_is_still_a_type_error() -> None:
    with pytest.raises(TypeError):
        dumps_json({"x": object()})


def test_flask_responses_keep_their_values_order_dates_and_dataclasses() -> None:
    from flask import Flask, jsonify

    from service.json_text import FastJSONProvider

    @dataclasses.dataclass
    class Point:
        x: float

    app = Flask(__name__)
    app.json = FastJSONProvider(app)
    app.json.sort_keys = False
    reference = Flask(__name__)
    reference.json.sort_keys = False  # type: ignore[attr-defined]
    when = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    body = {"z": 1, "a": [np.float64(0.1), "é"], "when": when, "point": Point(1.5)}
    with app.app_context():
        fast = jsonify(body)
    with reference.app_context():
        slow = jsonify({**body, "a": [0.1, "é"]})
    assert fast.mimetype == slow.mimetype == "application/json"
    assert json.loads(fast.get_data()) == json.loads(slow.get_data())
    assert list(json.loads(fast.get_data())) == ["z", "a", "when", "point"]
    assert fast.get_data().endswith(b"\n")
