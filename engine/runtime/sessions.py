"""onnxruntime sessions: created lazily per process, cached, batched.

Every model evaluation in onnxplain goes through :meth:`ModelSession.scores`,
which takes raw-feature rows in large batches and returns the explained
output as a float64 matrix. Sessions are never created at import time, so
gunicorn can fork workers before any onnxruntime state exists.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed
from engine.models.card import ModelCard
from engine.models.rows import Inputs, encode_feeds, row_dtype
from engine.models.screening import Signature
from engine.runtime.limits import WATCHDOG, limit_error
from engine.telemetry import MODEL_LOAD, SESSION_CACHE, observe, timed

if TYPE_CHECKING:
    from engine.models.text import TokenIds

BATCH_ROWS = 65_536


def session_options(threads: int) -> ort.SessionOptions:
    """Return session options with explicit, non-spinning threads and no CPU memory arena.

    Measured here: onnxruntime's intra-op threads busy-wait by default, which
    halved the speed of the numpy work explainers do between model calls.
    The arena would keep the peak of the largest call for the life of the
    session; without it a call's memory goes back when the call ends.
    """
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def read_scores(value: Any, card: ModelCard) -> FloatArray:
    """Turn the explained ONNX output into an ``(n, k)`` float64 matrix.

    Handles plain tensors, 1-D regression outputs and skl2onnx's ZipMap
    (a list of ``{class: probability}`` dicts, in class order).
    """
    if isinstance(value, list):
        rows = [list(d.values()) for d in value]
        array = np.asarray(rows, dtype=np.float64)
    else:
        array = np.asarray(value, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    elif array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
    want = len(card.output_names)
    if array.shape[1] != want:
        raise ExplanationFailed(
            f"the model output has {array.shape[1]} columns, the card expects {want}", code="card_mismatch"
        )
    return array


@dataclass
class ModelSession:
    """A loaded model: its card, signature and onnxruntime session."""

    card: ModelCard
    signature: Signature
    session: ort.InferenceSession
    timeout_s: float = 0.0
    memory_bytes: int = 0
    encoder: TokenIds | None = None
    """Token ids for token-id text models (the card's tokenizer, stored beside the model)."""

    @property
    def row_dtype(self) -> type[np.floating[Any]]:
        """The type :meth:`scores` takes raw-feature rows in without a cast (:func:`engine.models.rows.row_dtype`)."""
        return row_dtype(self.card, self.signature)

    @property
    def provider(self) -> str:
        """The execution provider that runs this session."""
        return str(self.session.get_providers()[0])

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[Any]:
        """Run the graph on ONNX feeds and return the requested outputs.

        Raises:
            ModelLimitExceeded: ``model_memory_limit`` or ``model_time_limit``.
            ExplanationFailed: ``model_error`` when onnxruntime fails otherwise.
        """
        try:
            with WATCHDOG.guard(self.timeout_s) as options:
                return list(self.session.run(outputs, feeds, run_options=options))
        except Exception as exc:  # onnxruntime raises its own untyped errors (MemoryError included)
            limited = limit_error(exc, timeout_s=self.timeout_s, memory_bytes=self.memory_bytes)
            if limited is not None:
                raise limited from exc
            raise ExplanationFailed(f"onnxruntime failed: {exc}", code="model_error") from exc

    def scores(self, X: Inputs) -> FloatArray:
        """Evaluate inputs (raw-feature rows, unit images or texts), in batches, to the explained output.

        Returns:
            ``(n, k)`` probabilities per class, or ``(n, 1)`` regression values.

        Raises:
            ExplanationFailed: The model fails, or outputs NaN or infinity.
        """
        parts = []
        name = self.signature.explained_output
        for start in range(0, max(len(X), 1), BATCH_ROWS):
            chunk = X[start : start + BATCH_ROWS]
            (value,) = self.run(encode_feeds(chunk, self.card, self.signature, self.encoder), [name])
            parts.append(read_scores(value, self.card))
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
            column = int(np.flatnonzero(~np.isfinite(out[bad]))[0])
            raise ExplanationFailed(
                f"the model produced a non-finite output for row {bad}, output {column}",
                code="non_finite_model_output",
            )
        return out


class SessionCache:
    """Per-process LRU of :class:`ModelSession`, keyed by model file and providers.

    Args:
        capacity: Sessions kept; the least recently used is dropped beyond it.
        threads: Intra-op threads per session.
        providers: Execution providers, in preference order.
        timeout_s: Limit of one model call (0: none), enforced by the watchdog.
        memory_bytes: The process's address-space cap, for error messages.
    """

    def __init__(
        self, capacity: int, threads: int, providers: list[str], *, timeout_s: float = 0.0, memory_bytes: int = 0
    ) -> None:
        self.capacity = capacity
        self.threads = threads
        self.providers = providers
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._sessions: OrderedDict[tuple[str, str], ModelSession] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, key: str, card: ModelCard, signature: Signature) -> ModelSession:
        """Return the warm session for ``path`` (identified by ``key``), creating it once.

        Raises:
            ExplanationFailed: ``model_error`` when onnxruntime cannot load it.
        """
        cache_key = (str(path), key)
        with self._lock:
            found = self._sessions.get(cache_key)
            if found is not None:
                self._sessions.move_to_end(cache_key)
                observe(SESSION_CACHE, ("hit",), 1)
                return found
        observe(SESSION_CACHE, ("miss",), 1)
        try:
            with timed(MODEL_LOAD):
                session = ort.InferenceSession(
                    str(path), sess_options=session_options(self.threads), providers=self.providers
                )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ExplanationFailed(f"onnxruntime cannot load the model: {exc}", code="model_error") from exc
        encoder = None
        if card.text is not None and card.text.tokenizer is not None:
            from engine.models.text import TokenIds

            encoder = TokenIds(path.parent / card.text.tokenizer, card.text.max_length)
        loaded = ModelSession(card, signature, session, self.timeout_s, self.memory_bytes, encoder)
        with self._lock:
            self._sessions[cache_key] = loaded
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
        return loaded

    def clear(self) -> None:
        """Drop every cached session."""
        with self._lock:
            self._sessions.clear()
