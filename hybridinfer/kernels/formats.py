"""The one numbering of the weight formats that kernels branch on, each format's `code` in the registry
(`model_file/weight_formats.py`): the numba kernels (`cpu_quant`, `cpu_accumulate_int8`, `cpu_layer`, `requantize`)
take it as their `code` / `kind` argument, the Triton kernels (`gpu/tile_decoders.py` and its callers) as their FMT
constexpr, and `PackedMatrix.code` gives it for a packed weight.

Float formats come first (code <= BF16), then the quantized ones. numba reads these module-level ints as
compile-time constants, so `kind == Q8_0` costs what a literal does.
"""

from __future__ import annotations

from ..model_file import weight_formats as registry

F32, F16, BF16 = registry.F32.code, registry.F16.code, registry.BF16.code
Q8_0, Q4_0, Q4_1 = registry.Q8_0.code, registry.Q4_0.code, registry.Q4_1.code
Q5_0, Q5_1 = registry.Q5_0.code, registry.Q5_1.code
Q4_K, Q5_K, Q6_K = registry.Q4_K.code, registry.Q5_K.code, registry.Q6_K.code
FORMAT_CODE = {f.type: f.code for f in registry.CPU_NATIVE_FORMATS}  # the formats the CPU kernels read
FORMAT_OF_CODE = {f.code: f for f in registry.FORMATS.values()}
