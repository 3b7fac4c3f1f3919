"""engine.logs: the process's log setup (API, worker, benchmarks)."""

from __future__ import annotations

import logging

import pytest

from engine.logs import configure_logging


@pytest.fixture
def restored_logging():
    """Put the root logger and shap's level back as they were."""
    root, shap_log = logging.getLogger(), logging.getLogger("shap")
    handlers, level, shap_level = list(root.handlers), root.level, shap_log.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    shap_log.setLevel(shap_level)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_info_lines_pass_and_shaps_intermediate_arrays_do_not(restored_logging, log_format):
    """The root logger takes INFO; shap's INFO lines (every intermediate array) stay out, its warnings do not."""
    logging.getLogger("shap").setLevel(logging.NOTSET)
    configure_logging(log_format)
    assert logging.getLogger("onnxplain.request").isEnabledFor(logging.INFO)
    assert not logging.getLogger("shap").isEnabledFor(logging.INFO)
    assert logging.getLogger("shap").isEnabledFor(logging.WARNING)
