"""The weight formats hybridinfer reads itself, each declared once, as gguf-py declares its quant types: its GGML
type, the code the kernels branch on, its block (size and bytes from gguf's GGML_QUANT_SIZES), the fields of a
block, its numpy decoder, and whether the CPU kernels (`kernels/`) and the GPU kernels (`gpu/`) read it as stored.
Every other module takes these facts from here; the tests loop over the tuples at the bottom.

A float format stores one value an element. A quantized block of `block_size` elements is a header of f16 fields
(`fields`: the scale d, then the minimum m where there is one) followed by its quants, `bits` per element:

    Q8_0  d | 32 int8 q                   value = d * q
    Q4_0  d | 16 bytes of nibbles         value = d * (q - 8)
    Q4_1  d | m | 16 bytes of nibbles     value = d * q + m
    Q5_0  d | qh | 16 bytes of nibbles    value = d * (q - 16)
    Q5_1  d | m | qh | 16 bytes           value = d * q + m

Nibble byte j of a block holds element j in its low nibble and element j + 16 in its high nibble. The Q5 formats
add each element's fifth (top) bit: qh, a little-endian uint32 whose bit j belongs to element j. Any other type
the gguf package knows is decoded through it (`dequantize.py`), to F32.

The K-quants group 8 sub-blocks of 32 (Q6_K: 16 of 16) in a super-block of 256 elements, with 6-bit (Q6_K:
int8) sub-block scales under one f16 super-block scale; their decoder is gguf-py's:

    Q4_K  d | dmin | 12 bytes of 6-bit (sc, m) pairs | 128 bytes of nibbles    value = d sc_j q - dmin m_j
    Q5_K  as Q4_K, with qh[32] (each element's fifth bit) before the nibbles       q: 5 bits
    Q6_K  ql[128] | qh[64] | int8 scales[16] | d                                   value = d sc_i (q - 32), q: 6 bits

The CPU kernels read them a 32-element sub-block at a time, as blocks of the Q4 layout with the exact scale
d sc_j (`kernels/packed.py`); their transposes (`transposed`) are re-quantized to a 32-block format.

Adding a format: declare it below with its decoder (native decoding then follows), then set `cpu_native` once the
numba kernels read it (`kernels/`: its packed layout and kernels) and `gpu_native` once the Triton kernels do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants


@dataclass(frozen=True)
class WeightFormat:
    type: T  # the GGML type
    code: int  # the kernels' number for it (`kernels/formats.py`): float formats first, then the quantized ones
    decode: Callable[[np.ndarray], np.ndarray]  # float32 values of stored values, or of (n, block_bytes) uint8 blocks
    cpu_native: bool  # the CPU kernels read it as stored (packed at load, `kernels/packed.py`)
    gpu_native: bool  # the GPU kernels read it as stored (`gpu/weights.py`)
    fields: tuple[str, ...] = ()  # quantized: its f16 header fields, ("scale",) or ("scale", "minimum")
    high_bits: bool = False  # quantized: a word of each element's top quant bit follows the f16 fields (Q5_x)
    value_type: str = ""  # float formats: the element's type as torch names it (numpy lacks bfloat16)
    cpu_bits_type: str = ""  # float formats: the numpy type the CPU kernels read the stored values as
    k_bits: int = 0  # K-quants: bits of an element's quant (super-blocks of 256 elements); 0 for other formats
    transposed: T | None = None  # the format its transposed copy is re-quantized to (None: itself)

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def block_size(self) -> int:
        """Elements per block (1 for a float format)."""
        return GGML_QUANT_SIZES[self.type][0]

    @property
    def block_bytes(self) -> int:
        """Bytes per block in the file (a float format: bytes per element)."""
        return GGML_QUANT_SIZES[self.type][1]

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    @property
    def k_quant(self) -> bool:
        return self.k_bits > 0

    @property
    def transpose_type(self) -> T:
        """The format the CPU keeps this format's transpose in (`kernels/requantize.py`)."""
        return self.transposed or self.type

    @property
    def header_bytes(self) -> int:
        """Bytes of a block before its (low) quant bits: the f16 fields and the high bits' word."""
        return 2 * len(self.fields) + (self.block_size // 8 if self.high_bits else 0)

    @property
    def has_minimum(self) -> bool:
        return "minimum" in self.fields

    def field_at(self, field: str) -> int:
        """Byte offset of an f16 header field in a block."""
        return 2 * self.fields.index(field)

    @property
    def quant_bytes(self) -> int:
        """Bytes of a block's quants (their low bits where there are high bits)."""
        return self.block_bytes - self.header_bytes

    @property
    def bits(self) -> int:
        """Bits of one element's quant (8: an int8, 4: a nibble)."""
        if self.k_quant:
            return self.k_bits
        return 8 * self.quant_bytes // self.block_size + self.high_bits


def bf16_to_f32(words: np.ndarray) -> np.ndarray:
    return (words.astype(np.uint32) << 16).view(np.float32)


def _f16_field(blocks: np.ndarray, at: int) -> np.ndarray:
    """float32 (n, 1): the f16 at byte `at` of every block."""
    return blocks[:, at:at + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) float32 values: low nibbles are elements 0..15, high nibbles elements 16..31."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    return _f16_field(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)


def _q4_0(blocks: np.ndarray) -> np.ndarray:
    return _f16_field(blocks, 0) * (_nibbles(blocks[:, 2:]) - 8.0)


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    return _f16_field(blocks, 0) * _nibbles(blocks[:, 4:]) + _f16_field(blocks, 2)


def _five_bits(blocks: np.ndarray, at: int) -> np.ndarray:
    """(n, 32) float32 quants 0..31 of Q5 blocks whose qh word is at byte `at` (the nibbles follow it)."""
    high = np.unpackbits(blocks[:, at:at + 4], axis=1, bitorder="little")  # bit j of the word: element j
    return _nibbles(blocks[:, at + 4:]) + np.float32(16) * high.astype(np.float32)


def _q5_0(blocks: np.ndarray) -> np.ndarray:
    return _f16_field(blocks, 0) * (_five_bits(blocks, 2) - np.float32(16))


def _q5_1(blocks: np.ndarray) -> np.ndarray:
    return _f16_field(blocks, 0) * _five_bits(blocks, 4) + _f16_field(blocks, 2)


def _gguf_decoder(qtype: T) -> Callable[[np.ndarray], np.ndarray]:
    """gguf-py's decoder of (n, block_bytes) uint8 blocks of `qtype`, as (n, block_size) float32."""
    return lambda blocks: np.asarray(gguf_quants.dequantize(blocks, qtype), dtype=np.float32)


F32 = WeightFormat(T.F32, 0, lambda raw: np.array(raw, dtype=np.float32), cpu_native=True, gpu_native=True,
                   value_type="float32", cpu_bits_type="float32")
F16 = WeightFormat(T.F16, 1, lambda raw: np.asarray(raw).view(np.float16).astype(np.float32), cpu_native=True,
                   gpu_native=True, value_type="float16", cpu_bits_type="int16")
BF16 = WeightFormat(T.BF16, 2, lambda raw: bf16_to_f32(np.asarray(raw).view(np.uint16)), cpu_native=True,
                    gpu_native=True, value_type="bfloat16", cpu_bits_type="uint16")
Q8_0 = WeightFormat(T.Q8_0, 3, _q8_0, cpu_native=True, gpu_native=True, fields=("scale",))
Q4_0 = WeightFormat(T.Q4_0, 4, _q4_0, cpu_native=True, gpu_native=True, fields=("scale",))
Q4_1 = WeightFormat(T.Q4_1, 5, _q4_1, cpu_native=True, gpu_native=True, fields=("scale", "minimum"))
Q5_0 = WeightFormat(T.Q5_0, 6, _q5_0, cpu_native=True, gpu_native=True, fields=("scale",), high_bits=True)
Q5_1 = WeightFormat(T.Q5_1, 7, _q5_1, cpu_native=True, gpu_native=True, fields=("scale", "minimum"),
                    high_bits=True)

Q4_K = WeightFormat(T.Q4_K, 8, _gguf_decoder(T.Q4_K), cpu_native=True, gpu_native=True, k_bits=4,
                    transposed=T.Q4_1)
Q5_K = WeightFormat(T.Q5_K, 9, _gguf_decoder(T.Q5_K), cpu_native=True, gpu_native=True, k_bits=5,
                    transposed=T.Q5_1)
Q6_K = WeightFormat(T.Q6_K, 10, _gguf_decoder(T.Q6_K), cpu_native=True, gpu_native=True, k_bits=6,
                    transposed=T.Q8_0)

FORMATS: dict[T, WeightFormat] = {f.type: f for f in (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
                                                      Q4_K, Q5_K, Q6_K)}  # decoded natively
CPU_NATIVE_FORMATS = tuple(f for f in FORMATS.values() if f.cpu_native)
GPU_NATIVE_FORMATS = tuple(f for f in FORMATS.values() if f.gpu_native)
CPU_NATIVE_TYPES = tuple(f.type for f in CPU_NATIVE_FORMATS)
GPU_NATIVE_TYPES = tuple(f.type for f in GPU_NATIVE_FORMATS)
FLOAT_TYPES = tuple(f.type for f in FORMATS.values() if not f.quantized)  # read in place (no repacking)
