"""A model's weights in the CPU kernels' layout (`kernels/packed.py`), read straight from the GGUF file.

Float weights (F32/F16/BF16) stay zero-copy views of the memory-mapped file; Q8_0/Q4_x/Q5_x rows are
repacked once at load (the same bytes, rearranged). Other GGUF types are decoded to F32 at load, with a
notice. The sparse FFN also needs each layer's down projection transposed (`down_t`, row i = neuron i's
output vector): taken from a PowerInfer file's ffn_down_t, or made at load by transposing (and, for quantized
formats, re-quantizing with the `gguf` package's encoder) the first time a sparse mode asks for it. TEAL
(`runtime/teal.py`) needs every projection transposed the same way: Q/K/V as one matrix, the output projection,
and gate with up as one matrix (`PackedLayer.teal_transposes`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from ..model_file.config import ModelConfig
from ..model_file.dequantize import dequantize
from ..model_file.gguf_file import GGUFFile, GGUFTensor
from ..model_file.tensor_shapes import (ATTN_K, ATTN_K_NORM, ATTN_NORM, ATTN_OUTPUT, ATTN_OUTPUT_T, ATTN_POST_NORM,
                                        ATTN_Q, ATTN_Q_NORM, ATTN_QKV, ATTN_QKV_T, ATTN_V, FFN_DOWN, FFN_DOWN_T,
                                        FFN_GATE, FFN_GATE_UP_T, FFN_NORM, FFN_POST_NORM, FFN_UP, OUTPUT,
                                        OUTPUT_NORM, TOKEN_EMBD, bias_name, block_name, down_name, require_tensors,
                                        split_name, tensor_name)
from ..kernels.block_args import NONE
from ..kernels import compile_time, threads
from ..model_file.weight_formats import CPU_NATIVE_FORMATS, CPU_NATIVE_TYPES, FLOAT_TYPES, FORMATS, Q8_0
from ..kernels.formats import FORMAT_CODE
from ..kernels.packed import FLOAT_DTYPES, PackedMatrix, pack, to_gguf_bytes
from ..kernels.requantize import requantized, transpose_quantized
from .repack_cache import RepackCache
from .rope_rows import head_rows, head_vector


@dataclass
class PackedLayer:
    attn_norm: np.ndarray  # (n_embd,) float32
    # (q_rows + 2 kv_rows, n_embd): the rows of attn_q (n_head * head_dim), attn_k and attn_v (n_head_kv * head_dim
    # each) in one matrix, read in one pass; Q and K rows permuted for adjacent-pair RoPE (GGUF convention)
    attn_qkv: PackedMatrix | None
    attn_output: PackedMatrix | None  # (n_embd, n_head * head_dim)
    ffn_norm: np.ndarray  # (n_embd,) float32
    ffn_gate: PackedMatrix | None  # (n_ff, n_embd): row i is neuron i's gate weights
    ffn_up: PackedMatrix | None  # (n_ff, n_embd)
    source_down: GGUFTensor  # the file's down projection: ffn_down (n_embd, n_ff) or ffn_down_t (n_ff, n_embd)
    # what some architectures add (`tensor_shapes.architecture_shapes`), float32; NONE (empty) where absent
    qkv_bias: np.ndarray = field(default_factory=lambda: NONE)  # (q_rows + 2 kv_rows,), in attn_qkv's row order
    q_norm: np.ndarray = field(default_factory=lambda: NONE)  # (head_dim,), in the permuted order of Q's heads
    k_norm: np.ndarray = field(default_factory=lambda: NONE)  # (head_dim,)
    post_attention_norm: np.ndarray = field(default_factory=lambda: NONE)  # (n_embd,)
    post_ffw_norm: np.ndarray = field(default_factory=lambda: NONE)  # (n_embd,)
    _down: PackedMatrix | None = field(default=None, repr=False)
    _down_t: PackedMatrix | None = field(default=None, repr=False)
    _qkv_t: PackedMatrix | None = field(default=None, repr=False)
    _output_t: PackedMatrix | None = field(default=None, repr=False)
    _gate_up_t: PackedMatrix | None = field(default=None, repr=False)

    def __post_init__(self):
        # format codes that the numba blocks are made for (`kernels/cpu_layer.py`); ffn_codes[2] is the dense down
        # projection's (a transpose keeps the format, but a K-quant's becomes its transpose_type: the sparse blocks
        # take the code of ffn_down_t() itself). A part the GPU side holds is None.
        if self.attn_qkv is not None:
            self.attention_codes = (self.attn_qkv.code, self.attn_output.code)
        if self.ffn_gate is not None:
            down_type = self.source_down.type
            if down_type in FORMATS and self.transposed_in_file:
                down_type = FORMATS[down_type].transpose_type
            down_code = FORMAT_CODE.get(down_type, FORMAT_CODE[T.F32])  # unreadable types: decoded to F32
            self.ffn_codes = (self.ffn_gate.code, self.ffn_up.code, down_code)

    @property
    def transposed_in_file(self) -> bool:
        return split_name(self.source_down.name)[0] == FFN_DOWN_T

    def ffn_down(self) -> PackedMatrix:
        """(n_embd, n_ff): the dense down projection."""
        if self._down is None:
            self._down = pack_any(self.source_down) if not self.transposed_in_file else transpose(self.source_down)
        return self._down

    def ffn_down_t(self) -> PackedMatrix:
        """(n_ff, n_embd): row i is neuron i's output vector (the sparse FFN's S3 reads these rows)."""
        if self._down_t is None:
            self._down_t = transposed_copy(self.source_down) if self.transposed_in_file else transpose(self.source_down)
        return self._down_t

    def teal_transposes(self) -> tuple[PackedMatrix, PackedMatrix, PackedMatrix, PackedMatrix]:
        """The transposed projections TEAL reads one token's inputs from (made the first time, then kept):
        Q/K/V (n_embd, q_rows + 2 kv_rows), output (n_head * head_dim, n_embd), gate/up (n_embd, 2 n_ff: gate's
        columns, then up's) and down (n_ff, n_embd)."""
        if self._qkv_t is None:
            self._qkv_t = transposed_rows(self.attn_qkv)
            self._output_t = transposed_rows(self.attn_output)
            self._gate_up_t = transposed_rows(self.ffn_gate, self.ffn_up)
        return self._qkv_t, self._output_t, self._gate_up_t, self.ffn_down_t()


@dataclass
class PackedWeights:
    token_embd: PackedMatrix  # (n_vocab, n_embd)
    layers: list[PackedLayer]
    output_norm: np.ndarray  # (n_embd,) float32
    output: PackedMatrix | None  # (n_vocab, n_embd); token_embd itself when embeddings are tied
    repack_seconds: float  # time spent rearranging/decoding weights at load (compilation excluded)
    from_cache: bool = False  # every packed matrix was mapped from the repack cache

    @property
    def nbytes(self) -> int:
        """GGUF bytes of the matrices one dense decoding step reads (embedding lookup excluded)."""
        total = self.output.nbytes if self.output is not None else 0
        for layer in self.layers:
            parts = (layer.attn_qkv, layer.attn_output, layer.ffn_gate, layer.ffn_up)
            total += sum(m.nbytes for m in parts if m is not None)
            total += layer.source_down.n_bytes if layer.ffn_gate is not None else 0
        return total


def load_packed_weights(model: GGUFFile, config: ModelConfig, sparse: bool = False, placement=None,
                        teal: bool = False) -> PackedWeights:
    """Pack every matrix of `model` the CPU computes with; with `sparse`, also make each layer's transposed down
    projection now (so its cost is part of the load, not of the first token); with `teal`, every projection's
    transpose (`PackedLayer.teal_transposes`) besides the row-major matrices (prompts read those). `placement` (a
    `hybrid/placement/placement.Placement`) names what the GPU side holds instead: the attention of its layers, the
    FFN of its dense layers, the output projection. Each matrix's pages of the memory-mapped file are released once it is
    packed. What is packed goes into the repack cache (`repack_cache.py`) matrix by matrix and is read from its mapped
    pages from then on (a first start holds one packed matrix in anonymous memory at a time); the next start maps
    the whole entry."""
    threads.start()  # here, in a child forked after its parent ran GNU OpenMP, a one-line error instead of SIGTERM
    gpu_layers = set(placement.gpu_layers) if placement is not None else set()
    dense_layers = set(placement.dense_layers) if placement is not None else set()
    output_on_gpu = placement is not None and placement.output_on_gpu
    start, compiled = time.perf_counter(), compile_time.seconds()
    c = config
    require_tensors(model, config)  # every shape below is the table's (tensor_shapes.py)
    if teal and placement is not None:
        raise ValueError("TEAL runs on the CPU alone")
    mode = "teal" if teal else \
        f"{'sparse' if sparse else 'dense'} gpu:{sorted(gpu_layers)} dense:{sorted(dense_layers)} {output_on_gpu}"
    cache = RepackCache(model.path, model.header_bytes(), mode)
    stored = cache.load()
    tensor = model.tensor
    made: list[str] = []  # the names packed now (zero-copy views of the file aside)
    with cache.writer(packed_bytes_estimate(model)) as writer:
        def kept(name: str, packed: PackedMatrix, *sources: str) -> PackedMatrix:
            """`packed`, made now, written to the cache entry and read from its mapped pages from here on."""
            if _views_file(packed, model):
                return packed
            for source in sources:
                model.release(source)
            made.append(name)
            return writer.add(name, packed)

        def matrix(name: str) -> PackedMatrix:
            return stored.get(name) or kept(name, pack_any(tensor(name)), name)

        orders = [head_rows(c, c.n_head), head_rows(c, c.n_head_kv), None]  # Q, K, V rows (NEOX: `rope_rows.py`)

        def qkv(i: int) -> PackedMatrix:
            names, key = [tensor_name(part, i) for part in (ATTN_Q, ATTN_K, ATTN_V)], block_name(ATTN_QKV, i)
            return stored.get(key) or kept(key, stacked([tensor(n) for n in names], orders), *names)

        def vector(name: str) -> np.ndarray:
            return np.ascontiguousarray(dequantize(tensor(name)), dtype=np.float32)

        def extras(i: int) -> dict[str, np.ndarray]:
            found = {}
            if c.attention_bias:
                biases = [vector(bias_name(part, i)) for part in (ATTN_Q, ATTN_K, ATTN_V)]
                found["qkv_bias"] = np.concatenate([b if o is None else b[o] for b, o in zip(biases, orders)])
            if c.qk_norm:
                found["q_norm"] = head_vector(c, vector(tensor_name(ATTN_Q_NORM, i)))
                found["k_norm"] = head_vector(c, vector(tensor_name(ATTN_K_NORM, i)))
            if c.post_norms:
                found["post_attention_norm"] = vector(tensor_name(ATTN_POST_NORM, i))
                found["post_ffw_norm"] = vector(tensor_name(FFN_POST_NORM, i))
            return found

        layers = []
        for i in range(c.n_layer):
            down = tensor(down_name(model, i))  # PowerInfer's ffn_down_t, else ffn_down
            attention_here, ffn_here = i not in gpu_layers, i not in dense_layers
            layer = PackedLayer(
                attn_norm=vector(tensor_name(ATTN_NORM, i)),
                attn_qkv=qkv(i) if attention_here else None,
                attn_output=matrix(tensor_name(ATTN_OUTPUT, i)) if attention_here else None,
                ffn_norm=vector(tensor_name(FFN_NORM, i)),
                ffn_gate=matrix(tensor_name(FFN_GATE, i)) if ffn_here else None,
                ffn_up=matrix(tensor_name(FFN_UP, i)) if ffn_here else None,
                source_down=down, _down=stored.get(block_name(FFN_DOWN, i)),
                _down_t=stored.get(block_name(FFN_DOWN_T, i)), **extras(i))
            if ffn_here:
                name = block_name(FFN_DOWN_T if sparse else FFN_DOWN, i)
                if name not in stored:
                    kept(name, layer.ffn_down_t() if sparse else layer.ffn_down(), down.name)
            if teal:
                layer._qkv_t = stored.get(block_name(ATTN_QKV_T, i))
                layer._output_t = stored.get(block_name(ATTN_OUTPUT_T, i))
                layer._gate_up_t = stored.get(block_name(FFN_GATE_UP_T, i))
                if layer._qkv_t is None or layer._down_t is None:
                    for part, made_now in zip(TEAL_TRANSPOSES, layer.teal_transposes()):
                        made.append(block_name(part, i))
                        writer.add(block_name(part, i), made_now)
            _use_layer(layer, i, writer.mapped)  # the copies made for this layer go now
            layers.append(layer)
        token_embd = matrix(TOKEN_EMBD)
        output = token_embd if c.tied_embeddings else None if output_on_gpu else matrix(OUTPUT)
        weights = PackedWeights(token_embd, layers, vector(OUTPUT_NORM), output, 0.0)
        if made and stored:  # an entry is whole: what the old one held goes into the new one too
            for name, packed in stored.items():
                if name not in writer.mapped:
                    writer.add(name, packed)
    weights.repack_seconds = time.perf_counter() - start - (compile_time.seconds() - compiled)  # compilation apart
    weights.from_cache = not made
    return weights


def packed_bytes_estimate(model: GGUFFile) -> int:
    """About what a load packs from `model` (its file's bytes, K-quants' headers and stacked Q8_0 Q/K/V included)."""
    return int(1.3 * os.path.getsize(model.path))


def _views_file(packed: PackedMatrix, model: GGUFFile) -> bool:
    """Whether `packed` reads the file's own pages in place (float weights): nothing to cache or release."""
    low, high = model.address_range
    return low <= packed.data.ctypes.data < high


def _use_layer(layer: PackedLayer, i: int, mapped: dict[str, PackedMatrix]) -> None:
    """Point layer i at the cache entry's mapped matrices, dropping the copies made at load."""
    layer.attn_qkv = mapped.get(block_name(ATTN_QKV, i), layer.attn_qkv)
    layer.attn_output = mapped.get(tensor_name(ATTN_OUTPUT, i), layer.attn_output)
    layer.ffn_gate = mapped.get(tensor_name(FFN_GATE, i), layer.ffn_gate)
    layer.ffn_up = mapped.get(tensor_name(FFN_UP, i), layer.ffn_up)
    layer._down = mapped.get(block_name(FFN_DOWN, i), layer._down)
    layer._down_t = mapped.get(block_name(FFN_DOWN_T, i), layer._down_t)
    layer._qkv_t = mapped.get(block_name(ATTN_QKV_T, i), layer._qkv_t)
    layer._output_t = mapped.get(block_name(ATTN_OUTPUT_T, i), layer._output_t)
    layer._gate_up_t = mapped.get(block_name(FFN_GATE_UP_T, i), layer._gate_up_t)


TEAL_TRANSPOSES = (ATTN_QKV_T, ATTN_OUTPUT_T, FFN_GATE_UP_T, FFN_DOWN_T)  # repack cache parts, per layer


def transposed_rows(*matrices: PackedMatrix) -> PackedMatrix:
    """The transpose of the rows of `matrices` stacked (same column count), as `transpose` makes it: in their
    format when they share one, else F32."""
    cols, qtype = matrices[0].cols, matrices[0].qtype
    rows = sum(m.rows for m in matrices)

    def decoded() -> np.ndarray:
        return np.concatenate([m.dequantize_rows(np.arange(m.rows)) for m in matrices])

    if any(m.qtype != qtype for m in matrices):  # no one format: the decoded values, as F32
        return _transposed(decoded(), T.F32, (rows, cols), decoded)
    return _transposed(np.concatenate([to_gguf_bytes(m, np.arange(m.rows)) for m in matrices]), qtype, (rows, cols),
                       decoded)


QUANTIZED_NAMES = "/".join(f.type.name for f in CPU_NATIVE_FORMATS if f.quantized)


def pack_any(tensor: GGUFTensor) -> PackedMatrix:
    """`pack`, or for a type the kernels do not read, the weight decoded to F32 (with a notice on stderr)."""
    if tensor.type in CPU_NATIVE_TYPES:
        return pack(tensor)
    print(f"note: {tensor.name} is {tensor.type.name}, which the CPU kernels do not read; decoded to F32 at load "
          f"(4 bytes per weight: re-quantize to {QUANTIZED_NAMES} for speed)", file=sys.stderr)
    values = dequantize(tensor)
    return pack((values, T.F32, values.shape))


def stacked(tensors: list[GGUFTensor], orders: list[np.ndarray | None] | None = None) -> PackedMatrix:
    """The rows of several weights with the same column count as one packed matrix: their bytes concatenated
    when they share a format the kernels read; quantized weights of different formats (a K-quant mix's attn_v
    with more bits than attn_q/attn_k) as Q8_0 (`as_q8_0`); else decoded to F32. Both with a notice. orders[k],
    when given and not None, is the order tensor k's rows are taken in (whole rows move: exact in any format)."""
    cols = tensors[0].shape[1]
    rows = sum(t.shape[0] for t in tensors)
    qtype = tensors[0].type
    orders = orders or [None] * len(tensors)

    def ordered(values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
        return values if order is None else values[order]

    names = ', '.join(f'{t.name} ({t.type.name})' for t in tensors)
    if qtype in CPU_NATIVE_TYPES and all(t.type == qtype for t in tensors):
        raw = np.concatenate([ordered(stored_rows(t), order) for t, order in zip(tensors, orders)])
        return pack((raw, qtype, (rows, cols)))
    if cols % 32 == 0 and all(t.type not in FLOAT_TYPES for t in tensors):
        print(f"note: {names} are read as one matrix; stored as Q8_0 at load", file=sys.stderr)
        raw = np.concatenate([ordered(as_q8_0(t), order) for t, order in zip(tensors, orders)])
        return pack((raw, T.Q8_0, (rows, cols)))
    print(f"note: {names} are read as one matrix and do not share a format the CPU kernels read; decoded to F32 at "
          "load", file=sys.stderr)
    values = np.concatenate([ordered(dequantize(t), order) for t, order in zip(tensors, orders)])
    return pack((values, T.F32, values.shape))


def stored_rows(tensor: GGUFTensor) -> np.ndarray:
    """(rows, bytes) uint8: a 2-D weight's rows as the file stores them."""
    return np.ascontiguousarray(tensor.raw).view(np.uint8).reshape(tensor.shape[0], -1)


def as_q8_0(tensor: GGUFTensor) -> np.ndarray:
    """(rows, bytes) Q8_0 blocks of a quantized weight's values: Q8_0's as stored; a format whose blocks are 32
    elements under one f16 scale (Q4_0, Q5_0) exactly, that scale with its centred quants as int8; any other
    (minimums, K-quants) by gguf's Q8_0 encoder (one more rounding, within Q8_0's)."""
    raw = stored_rows(tensor)
    if tensor.type == T.Q8_0:
        return raw
    values = dequantize(tensor)
    fmt = FORMATS.get(tensor.type)
    if fmt is None or fmt.block_size != Q8_0.block_size or fmt.fields != ("scale",):
        return gguf_quants.quantize(values, T.Q8_0)
    scales = raw.reshape(-1, fmt.block_bytes)[:, :2]  # f16 d of each block
    d = scales.copy().view(np.float16).astype(np.float32)
    by_block = values.reshape(-1, Q8_0.block_size)
    quants = np.divide(by_block, d, out=np.zeros_like(by_block), where=d != 0)  # d * (q - centre) / d: exact integers
    blocks = np.concatenate([scales, np.rint(quants).astype(np.int8).view(np.uint8)], axis=1)
    return blocks.reshape(tensor.shape[0], -1)


def transposed_copy(tensor: GGUFTensor) -> PackedMatrix:
    """A weight the file stores transposed, packed as S3 reads it: `pack_any`, or a K-quant re-quantized to its
    transpose_type (S3 reads 32-block formats)."""
    fmt = FORMATS.get(tensor.type)
    if fmt is None or not fmt.k_quant or tensor.type not in CPU_NATIVE_TYPES:
        return pack_any(tensor)
    return pack((requantized(tensor.raw, tensor.type, tensor.shape), fmt.transpose_type, tensor.shape))


def transpose(tensor: GGUFTensor) -> PackedMatrix:
    """The transpose of a 2-D weight, in its own format (a K-quant: its registry transpose_type): float bits are moved
    exactly; quantized weights are decoded, transposed and encoded again (one more rounding, within the format's
    tolerance): by `kernels/requantize.py`, byte for byte what `gguf.quants` gives, in numba; types the kernels do
    not read, and quantized weights whose transposed rows are not whole blocks, become F32."""
    return _transposed(tensor.raw, tensor.type, tensor.shape, lambda: dequantize(tensor))


def _transposed(raw, qtype: T, shape: tuple[int, int], values) -> PackedMatrix:
    """`transpose` of a (rows, cols) weight stored as `raw` in `qtype` (GGUF's layout); values() decodes it to
    float32 for the F32 fallback."""
    rows, cols = shape
    if qtype in FLOAT_DTYPES:
        stored = np.ascontiguousarray(raw).view(FLOAT_DTYPES[qtype]).reshape(rows, cols)
        return pack((np.ascontiguousarray(stored.T), qtype, (cols, rows)))
    if qtype in CPU_NATIVE_TYPES and rows % 32 == 0:  # quantized: numba, byte for byte what gguf.quants would give
        return pack((transpose_quantized(raw, qtype, (rows, cols)), FORMATS[qtype].transpose_type, (cols, rows)))
    return pack((np.ascontiguousarray(values().T), T.F32, (cols, rows)))  # decoded to F32, as pack_any does
