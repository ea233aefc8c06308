"""Turn a GGUF tensor into float32 numbers.

The formats of `weight_formats.py` are decoded by their own decoders there, straight from their block layouts
(the reference twin is `gguf.quants.dequantize`, which the tests compare against). Any other type the `gguf`
package knows is dequantized through it, with a notice, since it is slower.
"""

from __future__ import annotations

import logging

import numpy as np
from gguf import quants as gguf_quants

from ..errors import HybridInferError
from .gguf_file import GGUFTensor
from .weight_formats import FORMATS, bf16_to_f32  # noqa: F401  (bf16_to_f32 re-exported for the converter)

log = logging.getLogger(__name__)


def dequantize(tensor: GGUFTensor) -> np.ndarray:
    """float32 array of `tensor.shape` (a fresh copy; the memory-mapped file is never written)."""
    fmt = FORMATS.get(tensor.type)
    if fmt is None:
        values = _dequantize_with_gguf(tensor)
    elif fmt.quantized:
        values = fmt.decode(np.asarray(tensor.raw).reshape(-1, fmt.block_bytes))
    else:
        values = fmt.decode(tensor.raw)
    return values.reshape(tensor.shape)


def dequantize_rows(tensor: GGUFTensor, stop: int, start: int = 0) -> np.ndarray:
    """float32 rows start..stop-1 of a 2-D tensor, decoding only those rows' bytes."""
    rows = np.asarray(tensor.raw)[start:stop]
    return dequantize(GGUFTensor(tensor.name, tensor.type, (rows.shape[0], tensor.shape[1]), rows))


def _dequantize_with_gguf(tensor: GGUFTensor) -> np.ndarray:
    try:
        values = gguf_quants.dequantize(np.asarray(tensor.raw), tensor.type)
    except NotImplementedError:
        raise HybridInferError(
            f"tensor {tensor.name} has type {tensor.type.name}, which neither hybridinfer nor the gguf package can "
            f"decode; re-quantize the model to one of {', '.join(f.name for f in FORMATS.values())}") from None
    log.warning("tensor %s: type %s is dequantized to F32 at load (slower; native types: %s)",
                tensor.name, tensor.type.name, ", ".join(f.name for f in FORMATS.values()))
    return np.asarray(values, dtype=np.float32)
