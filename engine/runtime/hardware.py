"""The host's CPU as onnxruntime's int8 kernels see it, and the int8 scheme that is right on it.

onnxruntime runs int8 ``MatMul``/``Gemm``/``Conv`` with u8 activations and s8
weights on x86. Without VNNI (AVX2 only, e.g. AMD EPYC before Zen 4) it uses
``VPMADDUBSW``, whose int16 pair sums saturate: measured here on a 10-feature
dense regressor, full-range s8 weights erred by 6.7 % of the output range,
7-bit weights (``reduce_range``) by 0.55 %. With VNNI (or on ARM) the full
range is exact and a bit more precise. So a variant's scheme, and whether its
measured fidelity and speed hold, depend on the CPU: both are recorded in the
variant's report, and a report made on another kind of CPU is not trusted by
``fastest`` (see :func:`same_kind`).

Example::

    profile = host_cpu()
    profile.reduce_range   # True on x86 without VNNI
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Flags that change how int8 kernels compute or how fast they are; the rest of /proc/cpuinfo is noise here.
INT8_FLAGS = frozenset(
    {
        "avx2",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
        "asimd",
        "asimddp",
        "i8mm",
        "sve",
    }
)
_VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686"})


@dataclass(frozen=True)
class CpuProfile:
    """What a variant's numbers depend on: the architecture, its int8 features, the runtime.

    Attributes:
        machine: ``platform.machine()`` lower-cased (``x86_64``, ``aarch64``, …).
        features: The :data:`INT8_FLAGS` this CPU has, sorted.
        onnxruntime: The onnxruntime version whose kernels ran.
    """

    machine: str
    features: tuple[str, ...]
    onnxruntime: str

    @property
    def is_x86(self) -> bool:
        """Whether the CPU is an x86 one."""
        return self.machine in _X86

    @property
    def vnni(self) -> bool:
        """Whether int8 dot products run without saturation (VNNI or AMX on x86)."""
        return bool(_VNNI.intersection(self.features))

    @property
    def reduce_range(self) -> bool:
        """Whether int8 weights must use 7 bits: x86 without VNNI saturates at 8."""
        return self.is_x86 and not self.vnni

    @property
    def int8_scheme(self) -> str:
        """The scheme name recorded in reports: ``s8s8`` or ``s8s8_reduce_range``."""
        return "s8s8_reduce_range" if self.reduce_range else "s8s8"

    @property
    def kind(self) -> str:
        """The class of CPUs whose int8 results agree: architecture and saturation behaviour."""
        return f"x86-{'vnni' if self.vnni else 'novnni'}" if self.is_x86 else self.machine

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in a variant's report."""
        return {
            "machine": self.machine,
            "cpu_features": list(self.features),
            "kind": self.kind,
            "int8_scheme": self.int8_scheme,
            "onnxruntime": self.onnxruntime,
        }


def profile_from(machine: str, flags: set[str] | frozenset[str], onnxruntime: str) -> CpuProfile:
    """Build a profile from raw facts (tests use this to describe other CPUs).

    Args:
        machine: The architecture name.
        flags: CPU flags; only :data:`INT8_FLAGS` are kept.
        onnxruntime: The onnxruntime version.
    """
    return CpuProfile(machine.lower(), tuple(sorted(INT8_FLAGS.intersection(flags))), onnxruntime)


@functools.cache
def host_cpu() -> CpuProfile:
    """Return this host's profile (read once per process)."""
    try:
        ort_version = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        ort_version = importlib.metadata.version("onnxruntime-gpu")
    return profile_from(platform.machine() or "unknown", _cpu_flags(), ort_version)


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """Read the CPU flags (x86 ``flags``, ARM ``Features``); empty where the file does not exist."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def same_kind(measured_on: Mapping[str, Any] | None, host: CpuProfile) -> bool:
    """Whether a report measured on ``measured_on`` holds on ``host``.

    A report without the record (made before CPUs were recorded) or from another
    CPU kind or onnxruntime version does not: its gate and speed-up may not hold here.
    """
    if not measured_on:
        return False
    return measured_on.get("kind") == host.kind and measured_on.get("onnxruntime") == host.onnxruntime
