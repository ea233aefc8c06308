"""The CPU the kernels are compiled for, and the instruction set they use on it.

numba compiles for the host unless told otherwise by its own settings, NUMBA_CPU_NAME and NUMBA_CPU_FEATURES;
hybridinfer follows them, and its instruction-set switch HYBRIDINFER_CPU sets both for a named level:

  HYBRIDINFER_CPU  numba target                    what the `simd_*` intrinsics emit
  host (default)   this machine                    the best of the rows below that it has
  avx512-vnni      icelake-server                  512-bit vectors, vpdpbusd (AVX-512 VNNI), vpermps
  avx512           skylake-avx512                  512-bit vectors, vpmaddubsw + vpmaddwd, vpermps
  avx-vnni         alderlake                       256-bit vectors, vpdpbusd (AVX-VNNI)
  avx2             haswell                         256-bit vectors, vpmaddubsw + vpmaddwd
  generic          generic                         plain LLVM IR, any target (ARM, old x86)

With NUMBA_CPU_NAME alone, the named CPU's own features are meant (numba would add the host's), so NUMBA_CPU_FEATURES
is set empty and LLVM takes the CPU's defaults; the kernels then pick instructions from `NAMED_CPU_LEVELS` (an
unlisted name gets the generic code, correct everywhere). Everything here happens before the first kernel is
compiled (`kernels/__init__.py` imports it first), and the kernel cache directory is named after `TARGET.name`,
so builds for different targets never share compiled code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import llvmlite.binding as llvm_binding
from numba.core import config

from ..errors import HybridInferError

SWITCH = "HYBRIDINFER_CPU"
LEVELS = {  # the switch's values: numba's CPU name for each
    "avx512-vnni": "icelake-server", "avx512": "skylake-avx512", "avx-vnni": "alderlake", "avx2": "haswell",
    "generic": "generic",
}
_LEVEL_FEATURES = {  # the features the `simd_*` modules look at, per level
    "avx512-vnni": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni"},
    "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw"},
    "avx-vnni": {"avx2", "fma", "f16c", "avxvnni"},
    "avx2": {"avx2", "fma", "f16c"},
    "generic": set(),
}
NAMED_CPU_LEVELS = {  # LLVM CPU names -> level, for NUMBA_CPU_NAME given without NUMBA_CPU_FEATURES
    **{name: "avx2" for name in ("haswell", "broadwell", "skylake", "x86-64-v3", "znver1", "znver2", "znver3",
                                 "kabylake", "coffeelake", "cometlake")},
    **{name: "avx-vnni" for name in ("alderlake", "raptorlake", "meteorlake", "arrowlake", "lunarlake",
                                     "gracemont", "sierraforest", "grandridge")},
    **{name: "avx512" for name in ("skylake-avx512", "x86-64-v4", "cannonlake")},
    **{name: "avx512-vnni" for name in ("cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake",
                                        "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "znver4",
                                        "znver5")},
}


@dataclass(frozen=True)
class Target:
    name: str  # what the kernel cache directory and `hybridinfer info` call it: host-<cpu>, or the level
    cpu: str  # LLVM's CPU name
    features: frozenset[str]  # the instruction-set features the kernels may use

    def has(self, *features: str) -> bool:
        return all(f in self.features for f in features)

    @property
    def instructions(self) -> str:
        """The int8 dot product and vector width the quantized kernels use on it, in words."""
        if self.has("avx512f", "avx512bw", "avx512vnni"):
            return "AVX-512 VNNI (512-bit vpdpbusd)"
        if self.has("avx512f", "avx512bw"):
            return "AVX-512 (512-bit vpmaddubsw)"
        if self.has("avx2", "avxvnni"):
            return "AVX-VNNI (256-bit vpdpbusd)"
        if self.has("avx2"):
            return "AVX2 (256-bit vpmaddubsw)"
        return "generic LLVM vectors (no x86 intrinsics)"


def _parse_features(text: str) -> frozenset[str]:
    """'+avx2,-avx512f,+fma' -> {'avx2', 'fma'}."""
    return frozenset(f[1:] for f in text.split(",") if f.startswith("+"))


def _select() -> Target:
    level = os.environ.get(SWITCH, "").strip().lower()
    if level not in ("", "host") and level in LEVELS:
        os.environ["NUMBA_CPU_NAME"] = config.CPU_NAME = LEVELS[level]
        os.environ["NUMBA_CPU_FEATURES"] = config.CPU_FEATURES = ""  # the named CPU's own features
        return Target(level, LEVELS[level], frozenset(_LEVEL_FEATURES[level]))
    if config.CPU_NAME is not None and not config.CPU_FEATURES:  # a CPU named alone: its own features
        os.environ["NUMBA_CPU_FEATURES"] = config.CPU_FEATURES = ""  # (numba would add the host's)
        level = NAMED_CPU_LEVELS.get(config.CPU_NAME, "generic")
        return Target(config.CPU_NAME, config.CPU_NAME, frozenset(_LEVEL_FEATURES[level]))
    if config.CPU_FEATURES is not None:  # numba's own settings, features spelled out
        cpu = config.CPU_NAME or llvm_binding.get_host_cpu_name()
        return Target(f"{cpu}-{_digest(config.CPU_FEATURES)}", cpu, _parse_features(config.CPU_FEATURES))
    host = llvm_binding.get_host_cpu_features()
    return Target(f"host-{llvm_binding.get_host_cpu_name()}", llvm_binding.get_host_cpu_name(),
                  frozenset(name for name, on in host.items() if on))


def _digest(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def require_valid_switch() -> None:
    """Raise the one-line error for a switch value that names no instruction set (checked at the first kernel, not
    at import, so that the CLI reports it as it reports every user error)."""
    level = os.environ.get(SWITCH, "").strip().lower()
    if level not in ("", "host") and level not in LEVELS:
        raise HybridInferError(f"{SWITCH}={level!r} is not an instruction set: use one of host, {', '.join(LEVELS)}")


TARGET = _select()
