"""The one numbering of the weight formats that kernels branch on: the numba kernels (`cpu_quant`,
`cpu_accumulate_int8`, `cpu_layer`, `requantize`) take it as their `code` / `kind` argument, the Triton kernels
(`gpu/triton_kernels.py`) as their FMT constexpr, and `PackedMatrix.code` gives it for a packed weight.

Float formats come first (code <= BF16), then the quantized ones. numba reads these module-level ints as
compile-time constants, so `kind == Q8_0` costs what a literal does.
"""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

F32, F16, BF16, Q8_0, Q4_0, Q4_1 = 0, 1, 2, 3, 4, 5
FORMAT_CODE = {T.F32: F32, T.F16: F16, T.BF16: BF16, T.Q8_0: Q8_0, T.Q4_0: Q4_0, T.Q4_1: Q4_1}
