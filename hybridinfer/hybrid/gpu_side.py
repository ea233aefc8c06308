"""The GPU side of the hybrid runtime: its layers' weights in the file's own formats on a torch device (with their
KV caches), the output projection when placed there, the kernels (`ops`) and the one clock of a hybrid run. The
parts that compute with them are `gpu_parts.py` (attention, dense FFN, the boundary, output) and `split_ffn.py`.
On a machine without CUDA the device is the CPU and the kernels are the torch twins, so every path runs (and is
tested) anywhere.

A GPU layer holds its attention (norms, Q/K/V and output projections, KV cache, and what its architecture adds:
Q/K/V biases, Q/K head norms, post-block norms, its RoPE tables and sliding window; NEOX models' Q and K rows
reordered for adjacent-pair RoPE as the CPU side's are, `runtime/rope_rows.py`), its predictor, and either its
hot neurons (gate rows, up rows, rows of the transposed down projection; the cold ones stay in the CPU's packed
weights) or, with -ngl, its whole dense FFN.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

from ..model_file.config import ModelConfig
from ..model_file.dequantize import dequantize
from ..model_file.gguf_file import GGUFFile, GGUFTensor
from ..model_file.tensor_shapes import (ATTN_K, ATTN_K_NORM, ATTN_NORM, ATTN_OUTPUT, ATTN_POST_NORM, ATTN_Q,
                                        ATTN_Q_NORM, ATTN_V, FFN_DOWN, FFN_GATE, FFN_NORM, FFN_POST_NORM, FFN_UP,
                                        OUTPUT, OUTPUT_NORM, TOKEN_EMBD, bias_name, tensor_name)
from ..model_file.weight_formats import FLOAT_TYPES, GPU_NATIVE_TYPES
from ..gpu import kernels_for
from ..gpu.attention_reference import HeadOptions
from ..gpu.weights import DeviceMatrix, device_matrix
from ..kernels.packed import to_gguf_bytes
from ..reference.model import rope_tables
from ..runtime.rope_rows import head_rows, head_vector
from .placement.memory_model import kv_element_bytes_for
from .report import Clock, HybridStats


def upload(tensor: GGUFTensor, device: torch.device, rows: np.ndarray | None = None) -> DeviceMatrix:
    """A file weight on the device as its own bytes (a type the GPU kernels do not read: decoded to F32)."""
    if tensor.type in GPU_NATIVE_TYPES:
        return device_matrix(tensor.raw, tensor.type, tensor.shape, device, rows)
    return device_matrix(dequantize(tensor), T.F32, tensor.shape, device, rows)


def ordered(values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """values' rows (or entries) in `order`, or as they are where it is None."""
    return values if order is None else values[order]


def upload_stacked(tensors: list[GGUFTensor], device: torch.device,
                   orders: list[np.ndarray | None] | None = None) -> DeviceMatrix:
    """The rows of several weights with one column count as one matrix (Q, K and V), each tensor's rows in its
    `orders` entry's order where it is not None (NEOX models' Q and K: `runtime/rope_rows.py`)."""
    rows, cols = sum(t.shape[0] for t in tensors), tensors[0].shape[1]
    orders = orders or [None] * len(tensors)
    qtype = tensors[0].type
    if qtype in GPU_NATIVE_TYPES and all(t.type == qtype for t in tensors):
        raw = np.concatenate([ordered(np.ascontiguousarray(t.raw).view(np.uint8).reshape(t.shape[0], -1), order)
                              for t, order in zip(tensors, orders)])
        return device_matrix(raw, qtype, (rows, cols), device)
    return device_matrix(np.concatenate([ordered(dequantize(t), order) for t, order in zip(tensors, orders)]),
                         T.F32, (rows, cols), device)


def upload_predictor_weight(weight: torch.Tensor, device: torch.device) -> DeviceMatrix:
    """A float32 predictor matrix as Q8_0 (F32 where its width is not a multiple of 32), as the CPU side packs it."""
    values = np.ascontiguousarray(weight.cpu().numpy(), dtype=np.float32)
    if values.shape[1] % 32:
        return device_matrix(values, T.F32, values.shape, device)
    return device_matrix(quants.quantize(values, T.Q8_0), T.Q8_0, values.shape, device)


@dataclass
class GPULayer:
    attn_norm: torch.Tensor  # (n_embd,) float32
    qkv: DeviceMatrix  # (q_rows + 2 kv_rows, n_embd)
    wo: DeviceMatrix  # (n_embd, q_rows)
    ffn_norm: torch.Tensor
    k_cache: torch.Tensor  # (n_ctx, n_head_kv, head_dim), float16 on CUDA, float32 on the CPU device
    v_cache: torch.Tensor
    rope_cos: torch.Tensor  # (n_ctx, rope_dim // 2): this layer's RoPE (gemma3's sliding-window layers: their base)
    rope_sin: torch.Tensor
    heads: HeadOptions  # biases, head norms, query scale and window of the attention step (`gpu/attention_*.py`)
    post_attention_norm: torch.Tensor | None = None  # (n_embd,): gemma3's norm of the attention's output
    post_ffw_norm: torch.Tensor | None = None  # (n_embd,): ... and of the FFN's
    fc1: DeviceMatrix | None = None  # predictor (rank, n_embd)
    fc2: DeviceMatrix | None = None  # (n_ff, rank)
    predictor_threshold: float = 0.0
    hot: np.ndarray | None = None  # sorted hot neuron indices of a split FFN
    hot_index: torch.Tensor | None = None  # the same on the device
    gate: DeviceMatrix | None = None  # (n_hot, n_embd) hot gate rows, or (n_ff, n_embd) for a dense layer
    up: DeviceMatrix | None = None
    down_t: DeviceMatrix | None = None  # (n_hot, n_embd): hot neurons' output vectors
    down: DeviceMatrix | None = None  # (n_embd, n_ff): a dense layer's down projection

    @property
    def dense(self) -> bool:
        return self.down is not None

    @property
    def nbytes(self) -> int:
        parts = [self.qkv, self.wo, self.fc1, self.fc2, self.gate, self.up, self.down_t, self.down]
        h = self.heads
        tensors = [self.attn_norm, self.ffn_norm, self.k_cache, self.v_cache, h.bias, h.q_norm, h.k_norm,
                   self.post_attention_norm, self.post_ffw_norm]  # the RoPE tables: the side's, shared
        held = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return sum(p.nbytes for p in parts if p is not None) + held


class GPUSide:
    """The layers (and the output projection) `placement` puts on `device`, with what their parts share."""

    def __init__(self, model: GGUFFile, config: ModelConfig, placement, device: torch.device, n_ctx: int,
                 kernels: str | None = None, predictors=None, down_t: list | None = None, cpu_layers_stats=None):
        """`down_t`: the CPU's transposed down projections (n_ff, n_embd) per layer, whose hot rows a split FFN's
        GPU half reads; `cpu_layers_stats`: the CPU layers' sparse FFN statistics (the report's CPU share)."""
        c = self.config = config
        self.device = device
        self.ops = kernels_for(device, kernels)
        self.kernels_name = "torch" if self.ops.__name__.endswith(".reference") else "triton"
        self.attention_ops, self.norms, self.predictor_ops = step_kernels_for(self.kernels_name)
        self.attention_scratch = None  # the attention kernels' buffers, shared by this side's layers
        if self.kernels_name == "triton":
            self.attention_scratch = self.attention_ops.Scratch(c.n_head, c.n_head_kv, c.head_dim, device)
        self.ffn_input: tuple[int, torch.Tensor] | None = None  # (layer, RMSNorm(x)): its attention part's hand-over
        # as the memory model counts it ($HYBRIDINFER_GPU_KV, else float16 on CUDA and float32 on the CPU device)
        self.kv_dtype = torch.float16 if kv_element_bytes_for(str(device)) == 2 else torch.float32
        self.cpu_layers_stats = cpu_layers_stats
        self.stats = HybridStats()
        self.clock = Clock(device, self.stats)
        self.threshold = float(c.activation_threshold)
        self.rope: dict[tuple[float, float], tuple[torch.Tensor, torch.Tensor]] = {}  # (base, scale) -> cos, sin
        self.position = torch.zeros(1, dtype=torch.int32, device=device)  # the decoded position, on the device
        self.position_value = -1  # ... and what it holds once the work queued so far has run
        self.fired = torch.zeros((), dtype=torch.int64, device=device)  # hot neurons fired, summed on the device
        self.layers: dict[int, GPULayer] = {}
        for index in placement.gpu_layers:
            self.layers[index] = self._layer(model, index, placement, n_ctx, predictors, down_t)
        self.last_layer = max(self.layers, default=-1)  # its attention advances the device position (one token)
        self.output = self.output_norm = None
        if placement.output_on_gpu:
            self.output_norm = _vector(model, OUTPUT_NORM, device)
            name = TOKEN_EMBD if c.tied_embeddings else OUTPUT
            self.output = self._upload(model, name)
        # one token's residual stream across the boundary and its logits, through fixed buffers (pinned on CUDA)
        pinned = device.type == "cuda"
        self.stream_host = torch.empty((1, c.n_embd), dtype=torch.float32, pin_memory=pinned)
        self.stream_device = torch.empty((1, c.n_embd), dtype=torch.float32, device=device)
        self.logits_host = torch.empty((1, c.n_vocab), dtype=torch.float32, pin_memory=pinned) \
            if self.output is not None else None

    def _upload(self, model: GGUFFile, name: str, rows: np.ndarray | None = None) -> DeviceMatrix:
        """`upload`, then the copied pages of the memory-mapped file released (floats may be read in place)."""
        tensor = model.tensor(name)
        matrix = upload(tensor, self.device, rows)
        if tensor.type not in FLOAT_TYPES:
            model.release(name)
        return matrix

    def _rope(self, i: int, n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's RoPE tables on the device, one copy per (base, scale) the layers use."""
        settings = self.config.rope_settings(i)
        if settings not in self.rope:
            self.rope[settings] = tuple(table.to(self.device) for table in rope_tables(self.config, n_ctx, i))
        return self.rope[settings]

    def _heads(self, model: GGUFFile, i: int, orders: list[np.ndarray | None]) -> HeadOptions:
        """Layer i's biases, head norms, query scale and window, Q and K in the kernels' row order (`orders`)."""
        c, device = self.config, self.device
        bias = q_norm = k_norm = None
        if c.attention_bias:
            parts = [_values(model, bias_name(part, i)) for part in (ATTN_Q, ATTN_K, ATTN_V)]
            bias = _on(np.concatenate([ordered(b, o) for b, o in zip(parts, orders)]), device)
        if c.qk_norm:
            q_norm, k_norm = (_on(head_vector(c, _values(model, tensor_name(part, i))), device)
                              for part in (ATTN_Q_NORM, ATTN_K_NORM))
        return HeadOptions(bias, q_norm, k_norm, c.rms_eps, c.query_scale, c.window(i))

    def _layer(self, model: GGUFFile, i: int, placement, n_ctx: int, predictors, down_t) -> GPULayer:
        c, device = self.config, self.device
        kv_shape = (n_ctx, c.n_head_kv, c.head_dim)
        qkv_names = [tensor_name(part, i) for part in (ATTN_Q, ATTN_K, ATTN_V)]
        orders = [head_rows(c, c.n_head), head_rows(c, c.n_head_kv), None]  # Q, K, V rows (NEOX: `rope_rows.py`)
        cos, sin = self._rope(i, n_ctx)
        layer = GPULayer(
            attn_norm=_vector(model, tensor_name(ATTN_NORM, i), device),
            qkv=upload_stacked([model.tensor(n) for n in qkv_names], device, orders),
            wo=self._upload(model, tensor_name(ATTN_OUTPUT, i)),
            ffn_norm=_vector(model, tensor_name(FFN_NORM, i), device),
            k_cache=torch.zeros(kv_shape, dtype=self.kv_dtype, device=device),
            v_cache=torch.zeros(kv_shape, dtype=self.kv_dtype, device=device),
            rope_cos=cos, rope_sin=sin, heads=self._heads(model, i, orders))
        if c.post_norms:
            layer.post_attention_norm = _vector(model, tensor_name(ATTN_POST_NORM, i), device)
            layer.post_ffw_norm = _vector(model, tensor_name(FFN_POST_NORM, i), device)
        for name in qkv_names:
            model.release(name)
        if i in placement.dense_layers:
            layer.gate = self._upload(model, tensor_name(FFN_GATE, i))
            layer.up = self._upload(model, tensor_name(FFN_UP, i))
            layer.down = self._upload(model, tensor_name(FFN_DOWN, i))
            return layer
        if predictors is not None:
            layer.fc1 = upload_predictor_weight(predictors.fc1[i], device)
            layer.fc2 = upload_predictor_weight(predictors.fc2[i], device)
            layer.predictor_threshold = float(predictors.thresholds[i])
        hot = placement.hot[i]
        layer.hot, layer.hot_index = hot, torch.from_numpy(hot).to(device)
        layer.gate = self._upload(model, tensor_name(FFN_GATE, i), hot)
        layer.up = self._upload(model, tensor_name(FFN_UP, i), hot)
        packed = down_t[i]  # the CPU side's transposed down projection: its hot rows, back in GGUF's layout
        if packed.qtype in GPU_NATIVE_TYPES:
            layer.down_t = device_matrix(to_gguf_bytes(packed, hot), packed.qtype, (len(hot), c.n_embd), device)
        else:  # a format the GPU kernels do not read: its values, as F32
            layer.down_t = device_matrix(packed.dequantize_rows(hot), T.F32, (len(hot), c.n_embd), device)
        return layer

    @property
    def n_hot(self) -> int:
        return sum(len(layer.hot) for layer in self.layers.values() if layer.hot is not None)

    @property
    def nbytes(self) -> int:
        output = self.output.nbytes + self.output_norm.numel() * 4 if self.output is not None else 0
        return sum(layer.nbytes for layer in self.layers.values()) + output

    def at_position(self, start_pos: int) -> torch.Tensor:
        """The device's copy of the position: written only where it does not hold start_pos already (the token's
        last GPU layer advances it on the device, `advanced`: a run of decoded tokens writes it once)."""
        if start_pos != self.position_value:
            self.position.fill_(start_pos)
            self.position_value = start_pos
        return self.position

    def advanced(self, start_pos: int) -> None:
        """The last GPU layer's attention has been queued with the position's advance to start_pos + 1."""
        self.position_value = start_pos + 1

    def token_done(self) -> None:
        """Close one decoded token's statistics (the logits' copy to the CPU has synchronised the device)."""
        self.stats.tokens += 1
        self.stats.gpu_fired += int(self.fired)
        self.fired.zero_()
        self.clock.flush()

    def wait(self) -> None:
        """Wait for the device work queued so far (on the CPU device it is done)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    # ---- the residual stream across the boundary --------------------------------------------------------

    def upload_stream(self, x: np.ndarray) -> torch.Tensor:
        started = self.clock.start()
        on_device = torch.from_numpy(x).to(self.device, non_blocking=True)
        on_device = on_device.clone() if self.device.type == "cpu" else on_device  # x is a reused buffer
        self.clock.stop("transfer", started)
        return on_device

    def download_stream(self, x: torch.Tensor, out: np.ndarray) -> None:
        started = self.clock.start()
        out[:] = x.cpu().numpy()
        self.clock.stop("transfer", started)

    def logits(self, x: torch.Tensor) -> np.ndarray:
        """(T, n_vocab) float32 on the CPU from the final residual stream on the device (divided by the logit scale,
        softcapped where the model says so)."""
        started = self.clock.start()
        logits = self.logits_on_device(x)
        self.clock.stop("gpu", started)
        started = self.clock.start()
        out = logits.cpu().numpy()
        self.clock.stop("transfer", started)
        return out

    def logits_on_device(self, x: torch.Tensor) -> torch.Tensor:
        """`logits`, left on the device."""
        c = self.config
        logits = self.ops.norm_matvec(self.output, x, self.output_norm, c.rms_eps)  # one kernel for one token
        if c.logit_scale != 1.0:
            logits = logits / c.logit_scale
        if c.logit_softcap > 0:  # cap * tanh(logits / cap)
            logits = torch.tanh(logits / c.logit_softcap) * c.logit_softcap
        return logits


def step_kernels_for(kernels_name: str) -> tuple[ModuleType, ModuleType, ModuleType]:
    """The decode step's own kernels for a kernel set (attention, RMSNorm with the residual add, the predictor's
    threshold): Triton kernels or their torch twins."""
    if kernels_name == "triton":
        from ..gpu import attention_kernels, norm_kernels, predictor_kernels

        return attention_kernels, norm_kernels, predictor_kernels
    from ..gpu import attention_reference, norm_reference, predictor_reference

    return attention_reference, norm_reference, predictor_reference


def _values(model: GGUFFile, name: str) -> np.ndarray:
    return np.ascontiguousarray(dequantize(model.tensor(name)), dtype=np.float32)


def _on(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).to(device)


def _vector(model: GGUFFile, name: str, device: torch.device) -> torch.Tensor:
    return _on(_values(model, name), device)
