"""What this machine's CPU can compute natively, read from the sources the runtimes themselves trust: the kernel's
CPU flags (`/proc/cpuinfo`) and OpenVINO's own device property `OPTIMIZATION_CAPABILITIES` (which lists `BF16` exactly
when its CPU plugin has bfloat16 kernels for this CPU: AVX512-BF16, AMX or AVX2-VNNI-2).

[`detect_cpu_capabilities`] probes the machine; everything else here is a pure function of a [`CpuCapabilities`]
value, so that the rules are tested on recorded capability sets of the CPU kinds the project meets (Intel Xeon with
AMX, AMD Zen 4 with AVX512-BF16 and VNNI, AMD Zen 3 with AVX2 only).
"""

import functools
import platform
from dataclasses import dataclass, field
from pathlib import Path

# /proc/cpuinfo flag names (Linux) of the features that decide which precisions are fast.
AMX_FLAGS = ("amx_bf16", "amx_int8", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bfloat16 dot products: what oneDNN (torch, OpenVINO) needs for bf16 kernels
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products (u8 x s8 -> s32 in one instruction)


@dataclass(frozen=True)
class CpuCapabilities:
    """A CPU's features as the runtimes see them.

    Attributes:
        name: the CPU's model name (`/proc/cpuinfo`, else `platform.processor()`).
        flags: the kernel's CPU flags (`/proc/cpuinfo`'s `flags`); empty where there is no such file.
        openvino: OpenVINO's `OPTIMIZATION_CAPABILITIES` of its CPU device (e.g. `("FP32", "INT8", "BIN",
            "EXPORT_IMPORT")`), or None when OpenVINO is not installed.
    """

    name: str
    flags: frozenset[str] = field(default_factory=frozenset)
    openvino: tuple[str, ...] | None = None

    @property
    def amx(self) -> bool:
        """Intel's matrix units (AMX tiles with bf16 and int8)."""
        return any(flag in self.flags for flag in AMX_FLAGS)

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8): int8 runs at twice or more the
        throughput of the AVX2 int8 path, which multiplies in 16 bits and adds in two steps."""
        return any(flag in self.flags for flag in VNNI_FLAGS)

    @property
    def openvino_bf16(self) -> bool:
        """OpenVINO has bfloat16 kernels for this CPU: its own judgment, `BF16` in its capabilities (False when
        OpenVINO is not installed)."""
        return "BF16" in (self.openvino or ())

    @property
    def onednn_bf16(self) -> bool:
        """oneDNN (torch's CPU convs) has native bfloat16 kernels: AVX512-BF16 or AMX-BF16. Without them torch's
        bf16 autocast still computes in bfloat16, emulated and slower than float32."""
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def bf16(self) -> bool:
        """Native bfloat16 arithmetic for some runtime (OpenVINO's capabilities or the CPU flags)."""
        return self.openvino_bf16 or self.onednn_bf16

    @property
    def kind(self) -> str:
        """The class of CPU that decides the fast precisions: "AMX", "AVX512-BF16", "AVX512", "AVX2" or "other"."""
        if self.amx:
            return "AMX"
        if self.bf16:
            return "AVX512-BF16" if self.avx512 else "BF16"
        if self.avx512:
            return "AVX512"
        return "AVX2" if "avx2" in self.flags else "other"

    def describe(self) -> str:
        """One line, e.g. 'AMD EPYC (AVX2; no AVX-512, no bf16, no VNNI, no AMX)'."""
        features = [("AVX-512", self.avx512), ("bf16", self.bf16), ("VNNI", self.vnni), ("AMX", self.amx)]
        has = [name for name, present in features if present]
        lacks = [f"no {name}" for name, present in features if not present]
        base = "AVX2" if "avx2" in self.flags and not self.avx512 else None
        parts = ([base] if base else []) + has
        listed = ", ".join(parts) if parts else "no SIMD flags read"
        return f"{self.name} ({listed}{'; ' + ', '.join(lacks) if lacks else ''})"

    def key(self) -> str:
        """A stable identifier of the CPU's relevant features, for caching measurements made on it."""
        relevant = sorted(flag for flag in self.flags if flag.startswith(("avx", "amx", "fma", "f16c", "sse4")))
        return f"{self.name}|{' '.join(relevant)}|{','.join(self.openvino or ())}"


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a `/proc/cpuinfo` text; ("", {}) for an empty one."""
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name, flags


def openvino_cpu_capabilities() -> tuple[str, ...] | None:
    """OpenVINO's `OPTIMIZATION_CAPABILITIES` of the CPU device, or None when OpenVINO is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return tuple(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


@functools.lru_cache(maxsize=1)
def detect_cpu_capabilities() -> CpuCapabilities:
    """This machine's [`CpuCapabilities`] (read once per process)."""
    cpuinfo = Path("/proc/cpuinfo")
    name, flags = parse_cpuinfo(cpuinfo.read_text()) if cpuinfo.is_file() else ("", frozenset())
    return CpuCapabilities(name or platform.processor() or platform.machine(), flags, openvino_cpu_capabilities())


__all__ = [
    "AMX_FLAGS",
    "BF16_FLAGS",
    "VNNI_FLAGS",
    "CpuCapabilities",
    "detect_cpu_capabilities",
    "openvino_cpu_capabilities",
    "parse_cpuinfo",
]
