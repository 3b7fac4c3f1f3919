"""Execution providers: turn ``ONNXPLAIN_PROVIDERS`` into an onnxruntime list.

``auto`` prefers TensorRT, then CUDA, then the CPU, keeping a GPU provider
only when it really runs here. onnxruntime-gpu lists ``CUDAExecutionProvider``
as available whether or not a GPU (or its CUDA libraries) is present and
silently falls back to the CPU at session creation, so availability alone
proves nothing: each GPU provider is probed once per process by creating a
tiny session with it and checking that the session kept it.

Short names stand for the usual lists: ``cpu`` (the CPU alone), ``cuda`` (CUDA, then the CPU) and
``tensorrt`` (TensorRT, CUDA, then the CPU). A GPU provider asked for by name that does not run here is
skipped with one log line saying the sessions fall back to the CPU.

Example::

    resolve_providers("auto")  # ['CPUExecutionProvider'] on a machine without a GPU
    resolve_providers("cuda")  # ['CUDAExecutionProvider', 'CPUExecutionProvider'] where CUDA runs
    resolve_providers("CUDAExecutionProvider,CPUExecutionProvider")
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence

import onnxruntime as ort
from onnx import TensorProto, helper

from engine.errors import InvalidRequest

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)
SETTING = "ONNXPLAIN_PROVIDERS"
ALIASES = {
    "cpu": (CPU,),
    "cuda": ("CUDAExecutionProvider", CPU),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU),
}
"""Short names of ``ONNXPLAIN_PROVIDERS`` (case-insensitive), each a provider list in preference order."""


def resolve_providers(spec: str, available: Sequence[str] | None = None) -> list[str]:
    """Resolve a provider setting to the providers to pass to onnxruntime.

    Args:
        spec: ``"auto"``, a short name of :data:`ALIASES` (``cpu``, ``cuda``,
            ``tensorrt``) or a comma-separated list of onnxruntime provider
            names, in preference order.
        available: The providers onnxruntime offers; defaults to
            ``onnxruntime.get_available_providers()`` (tests pass their own).

    Returns:
        Usable providers in preference order, always ending with the CPU.

    Raises:
        InvalidRequest: ``invalid_setting`` when the list is empty or names a
            provider onnxruntime does not know.
    """
    offered = list(ort.get_available_providers() if available is None else available)
    text = spec.strip()
    if text.lower() == "auto":
        chosen = [name for name in AUTO_ORDER if name in offered and _usable(name)]
        if chosen == [CPU]:
            log.info("no usable GPU execution provider (onnxruntime offers %s); using the CPU", offered)
        return chosen if CPU in chosen else [*chosen, CPU]

    wanted = list(ALIASES.get(text.lower(), [name.strip() for name in text.split(",") if name.strip()]))
    if not wanted:
        raise InvalidRequest(f"{SETTING} is empty; use 'auto' or provider names", code="invalid_setting", field=SETTING)
    known = set(ort.get_all_providers())
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise InvalidRequest(
            f"{SETTING} names unknown execution providers {unknown}; known: {sorted(known)}",
            code="invalid_setting",
            field=SETTING,
        )
    chosen = []
    skipped = []
    for name in dict.fromkeys(wanted):  # dedupe, keep order
        if name == CPU:
            continue
        if name in offered and _usable(name):
            chosen.append(name)
        else:
            skipped.append(name)
    if skipped:
        # One line per resolution (once per process: the session cache resolves once), naming what runs instead.
        log.warning(
            "%s=%s: %s not usable here (onnxruntime offers %s); running on %s",
            SETTING,
            spec,
            ", ".join(skipped),
            offered,
            ", ".join([*chosen, CPU]) if chosen else "the CPU",
        )
    return [*chosen, CPU]


@functools.cache
def _usable(name: str) -> bool:
    """Return whether a session created with provider ``name`` keeps it.

    Cached: the answer cannot change within a process, and a GPU probe costs
    a CUDA context (hundreds of milliseconds).
    """
    if name == CPU:
        return True
    options = ort.SessionOptions()
    # A failed GPU probe is expected on CPU-only hosts; keep its errors quiet.
    options.log_severity_level = 4
    try:
        with warnings.catch_warnings():
            # onnxruntime warns when asked for a provider its build lacks; that is the answer.
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(_tiny_model(), options, providers=[name, CPU])
    except Exception as exc:  # onnxruntime raises its own unexported classes
        log.debug("probe of %s failed: %s", name, exc)
        return False
    return name in session.get_providers()


def _tiny_model() -> bytes:
    """Return a one-node ONNX model (``y = x + x``) to probe providers with."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())
