"""Bounds on untrusted model calls: a per-process address-space cap and a per-call time limit.

A model whose shapes come from its input (``ConstantOfShape`` of an input value) can ask onnxruntime for any
amount of memory or time on one request. Three things keep that to the request:

* :func:`cap_address_space` sets ``RLIMIT_AS`` once per process (API workers and RQ workers at start), so an
  allocation past it fails inside onnxruntime (``bad_alloc``) instead of growing the process;
* sessions run with onnxruntime's CPU memory arena off (``engine/runtime/sessions.py``), so memory a call
  took goes back to the system when the call ends;
* :class:`Watchdog` sets ``RunOptions.terminate`` on a call that runs past its limit; onnxruntime stops at its
  next kernel boundary.

Example::

    cap_address_space(8 * 1024**3)
    with WATCHDOG.guard(30.0) as options:
        session.run(None, feeds, run_options=options)
"""

from __future__ import annotations

import heapq
import itertools
import logging
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import onnxruntime as ort

from engine.errors import ModelLimitExceeded

log = logging.getLogger(__name__)

MEMORY_LIMIT = "model_memory_limit"
"""Code of a model call that needed more memory than the process may have."""

TIME_LIMIT = "model_time_limit"
"""Code of a model call that ran past its time limit."""

_MEMORY_SIGNS = ("bad_alloc", "bad allocation", "failed to allocate", "out of memory", "std::length_error")
_TERMINATED_SIGNS = ("terminate flag",)


def cap_address_space(limit_bytes: int) -> None:
    """Cap this process's address space at ``limit_bytes`` (0 leaves it as it is).

    Lowers the soft and hard limits only (a process may not raise its hard limit back).
    """
    if limit_bytes <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    new_hard = limit_bytes if hard == resource.RLIM_INFINITY else min(hard, limit_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (min(limit_bytes, new_hard), new_hard))
    log.info("address space capped at %d MiB", limit_bytes // (1024 * 1024))


def limit_error(exc: BaseException, *, timeout_s: float, memory_bytes: int) -> ModelLimitExceeded | None:
    """Return the limit a failed onnxruntime call ran into, or ``None`` when it failed for another reason."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(sign in text for sign in _MEMORY_SIGNS):
        cap = f"{memory_bytes // (1024 * 1024)} MiB" if memory_bytes > 0 else "the available"
        return ModelLimitExceeded(
            f"the model needed more memory than this process may use ({cap}; ONNXPLAIN_PROCESS_MEMORY_BYTES)",
            code=MEMORY_LIMIT,
        )
    if any(sign in text for sign in _TERMINATED_SIGNS):
        return ModelLimitExceeded(
            f"the model call ran past its {timeout_s:g} s limit (ONNXPLAIN_MODEL_CALL_TIMEOUT_S)", code=TIME_LIMIT
        )
    return None


class Watchdog:
    """One daemon thread that terminates onnxruntime calls past their deadline.

    A thread per call would cost a thread start on every prediction; here a call only pushes its deadline
    on a heap, and the thread sleeps until the earliest one.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, ort.RunOptions] = {}
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, timeout_s: float) -> Iterator[ort.RunOptions]:
        """Yield run options that are terminated ``timeout_s`` seconds from now (0: never)."""
        options = ort.RunOptions()
        if timeout_s <= 0:
            yield options
            return
        ident = next(self._ids)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._start()
            self._live[ident] = options
            # Wake the thread only when this deadline comes first: it already sleeps until an earlier one and
            # takes this one in turn. Waking it on every call handed the GIL to it and back on every prediction
            # (measured on 2 loaded cores: ~3 ms a call; ended calls' deadlines stay queued until they come up,
            # so with one timeout for all a later call's deadline is never first unless the queue is empty).
            first = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, ident))
            if first:
                self._cond.notify()
        try:
            yield options
        finally:
            with self._cond:
                self._live.pop(ident, None)

    def _start(self) -> None:
        # Started lazily, so a process that forks after import (gunicorn) starts it in the child.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, daemon=True, name="onnxplain-watchdog")
            self._thread.start()

    def _loop(self) -> None:
        with self._cond:
            while True:
                # Deadlines of calls that already ended are dropped as they come up.
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, ident = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                self._live[ident].terminate = True


WATCHDOG = Watchdog()
"""The process's watchdog."""
