"""Bounded model calls: the watchdog stops a call past its limit; the trial run sees input-shaped models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.errors import ModelLimitExceeded
from engine.models.card import ModelCard
from engine.models.screening import screen_model
from engine.runtime.limits import TIME_LIMIT, Watchdog
from engine.runtime.sessions import SessionCache
from tests import builders

CARD = ModelCard.from_dict({"name": "bomb", "task": "regression", "features": ["a"]})


def _session(model: onnx.ModelProto, tmp_path, **limits):
    data = model.SerializeToString()
    _, signature = screen_model(data, CARD)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return SessionCache(1, 1, ["CPUExecutionProvider"], **limits).get(path, "k", CARD, signature)


def test_a_call_past_its_limit_is_terminated(tmp_path):
    """A Loop of 10^12 trips, set off by its input, fails with model_time_limit; other inputs answer."""
    session = _session(builders.spin_model(), tmp_path, timeout_s=1.0)
    np.testing.assert_array_equal(session.scores(np.array([[3.0]])), [[3.0]])
    with pytest.raises(ModelLimitExceeded) as caught:
        session.scores(np.array([[9.0]]))
    assert caught.value.code == TIME_LIMIT
    # The session is still usable afterwards: the flag belonged to that call's options only.
    np.testing.assert_array_equal(session.scores(np.array([[4.0]])), [[4.0]])


def test_the_watchdog_leaves_finished_calls_alone():
    """Options of calls that ended before their deadline are never terminated."""
    dog = Watchdog()
    kept = []
    for _ in range(50):
        with dog.guard(0.05) as options:
            kept.append(options)
    with dog.guard(0.05) as slow:
        import time

        deadline = time.monotonic() + 10
        while not slow.terminate and time.monotonic() < deadline:
            time.sleep(0.01)
    assert slow.terminate and not any(o.terminate for o in kept)
