"""The one table of a LLaMA-family model's GGUF tensors: names and torch shapes (out, in), from the
hyper-parameters. Every module names a tensor through `tensor_name` (or `block_name` for per-layer data that is
not a weight); the converter writes these, `require_tensors` checks a file against them before any weight is
read, and the loaders (reference, packed, GPU side) take their shapes from here."""

from __future__ import annotations

from ..errors import HybridInferError

# The parts of each block `blk.{layer}.`: `tensor_name(part, layer)` is "blk.{layer}.{part}.weight".
ATTN_NORM, ATTN_Q, ATTN_K, ATTN_V, ATTN_OUTPUT = "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"
FFN_NORM, FFN_GATE, FFN_UP = "ffn_norm", "ffn_gate", "ffn_up"
FFN_DOWN = "ffn_down"  # (n_embd, n_ff): llama.cpp's layout
FFN_DOWN_T = "ffn_down_t"  # (n_ff, n_embd): PowerInfer's transposed layout, row i = neuron i's output vector
FC1, FC2 = "fc1", "fc2"  # a predictor file's layer (PowerInfer's shape): fc1 (rank, n_embd), fc2 (n_ff, rank)
ATTN_Q_NORM, ATTN_K_NORM = "attn_q_norm", "attn_k_norm"  # (head_dim,): RMSNorm of each Q / K head (qwen3, gemma3)
ATTN_POST_NORM, FFN_POST_NORM = "post_attention_norm", "post_ffw_norm"  # (n_embd,): of the block outputs (gemma3)
LAYER_PARTS = (ATTN_NORM, ATTN_Q, ATTN_K, ATTN_V, ATTN_OUTPUT, FFN_NORM, FFN_GATE, FFN_UP, FFN_DOWN, FFN_DOWN_T,
               FC1, FC2, ATTN_Q_NORM, ATTN_K_NORM, ATTN_POST_NORM, FFN_POST_NORM)
BIASED_PARTS = (ATTN_Q, ATTN_K, ATTN_V)  # the parts a layer may hold a bias of, `bias_name(part, layer)` (qwen2)
PROJECTIONS = (ATTN_Q, ATTN_K, ATTN_V, ATTN_OUTPUT, FFN_GATE, FFN_UP, FFN_DOWN)  # the matrices a token reads

# The parts outside the blocks: `tensor_name(part)` is "{part}.weight".
GLOBAL_PARTS = ("token_embd", "output_norm", "output", "rope_freqs")
TOKEN_EMBD, OUTPUT_NORM, OUTPUT, ROPE_FREQS = (f"{part}.weight" for part in GLOBAL_PARTS)  # rope_freqs: Llama 3's

# Per-layer data that is not a weight, named by `block_name(part, layer)` ("blk.{layer}.{part}", no suffix): an
# activation file's counts, a split file's masks, and the repack cache's packed matrices (runtime/repack_cache.py).
ACTIVATION_COUNT = "activation_count"  # (n_ff,) int32
GPU_IDX = "gpu_idx"  # (n_ff,) int32: 1 where the neuron is on the GPU
GPU_BUCKET = "gpu_bucket"  # int32: the GPU's neurons, sorted (PowerInfer's gpuidx files only)
ATTN_QKV = "attn_qkv"  # attn_q, attn_k and attn_v's rows in one matrix
ATTN_QKV_T, ATTN_OUTPUT_T, FFN_GATE_UP_T = "attn_qkv_t", "attn_output_t", "ffn_gate_up_t"  # TEAL's transposes


def tensor_name(part: str, layer: int | None = None) -> str:
    """A weight's name in a GGUF file: `tensor_name("attn_q", 3)` is "blk.3.attn_q.weight",
    `tensor_name("output_norm")` is "output_norm.weight"; a message's placeholder layer ("N") gives the pattern."""
    if part not in (GLOBAL_PARTS if layer is None else LAYER_PARTS):
        raise ValueError(f"no tensor {part!r} with layer {layer}: the table (model_file/tensor_shapes.py) has "
                         f"{', '.join(LAYER_PARTS)} per layer and {', '.join(GLOBAL_PARTS)} without one")
    return f"{part}.weight" if layer is None else f"{block_name(part, layer)}.weight"


def bias_name(part: str, layer: int) -> str:
    """A projection's bias in a GGUF file: `bias_name("attn_q", 3)` is "blk.3.attn_q.bias" (qwen2)."""
    if part not in BIASED_PARTS:
        raise ValueError(f"no bias of {part!r}: the table (model_file/tensor_shapes.py) has {', '.join(BIASED_PARTS)}")
    return f"{block_name(part, layer)}.bias"


def block_name(part: str, layer: int) -> str:
    """The name "blk.{layer}.{part}": a layer's weight without its ".weight" suffix, or the whole name of a layer's
    data (`ACTIVATION_COUNT`, `GPU_IDX`, the repack cache's `ATTN_QKV`, ...)."""
    return f"blk.{layer}.{part}"


def split_name(name: str) -> tuple[str, int | None]:
    """(part, layer) of a tensor name, the inverse of `tensor_name` and `block_name`: "blk.3.attn_q.weight" gives
    ("attn_q", 3), "output.weight" ("output", None)."""
    fields = name.split(".")
    if fields[0] == "blk" and len(fields) > 2 and fields[1].isdigit():
        return fields[2], int(fields[1])
    return fields[0], None


def layer_shapes(n_embd: int, n_head: int, n_head_kv: int, head_dim: int, n_ff: int) -> dict[str, tuple[int, ...]]:
    """Each block's weights by part (`tensor_name(part, i)`), ffn_down in llama.cpp's layout."""
    q_rows, kv_rows = n_head * head_dim, n_head_kv * head_dim
    return {
        ATTN_NORM: (n_embd,),
        ATTN_Q: (q_rows, n_embd),  # rows permuted for adjacent-pair RoPE (GGUF convention)
        ATTN_K: (kv_rows, n_embd),  # the same permutation
        ATTN_V: (kv_rows, n_embd),
        ATTN_OUTPUT: (n_embd, q_rows),
        FFN_NORM: (n_embd,),
        FFN_GATE: (n_ff, n_embd),  # row i: neuron i's gate weights
        FFN_UP: (n_ff, n_embd),
        FFN_DOWN: (n_embd, n_ff),
    }


def architecture_shapes(config, layer: int) -> dict[str, tuple[int, ...]]:
    """The tensors of layer `layer` beyond LLaMA's, by full name, that `config` (a `config.ModelConfig`) needs:
    Q/K/V biases, per-head Q and K norms, the norms after attention and after the FFN."""
    c, shapes = config, {}
    q_rows, kv_rows = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    if c.attention_bias:
        shapes.update({bias_name(ATTN_Q, layer): (q_rows,), bias_name(ATTN_K, layer): (kv_rows,),
                       bias_name(ATTN_V, layer): (kv_rows,)})
    if c.qk_norm:
        shapes.update({tensor_name(ATTN_Q_NORM, layer): (c.head_dim,), tensor_name(ATTN_K_NORM, layer): (c.head_dim,)})
    if c.post_norms:
        shapes.update({tensor_name(ATTN_POST_NORM, layer): (c.n_embd,),
                       tensor_name(FFN_POST_NORM, layer): (c.n_embd,)})
    return shapes


def global_shapes(n_vocab: int, n_embd: int, tied_embeddings: bool) -> dict[str, tuple[int, ...]]:
    shapes = {TOKEN_EMBD: (n_vocab, n_embd), OUTPUT_NORM: (n_embd,)}
    if not tied_embeddings:
        shapes[OUTPUT] = (n_vocab, n_embd)
    return shapes


def tensor_shapes(n_vocab: int, n_embd: int, n_layer: int, n_head: int, n_head_kv: int, n_ff: int,
                  tied_embeddings: bool, head_dim: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model by name (ffn_down in llama.cpp's layout)."""
    block = layer_shapes(n_embd, n_head, n_head_kv, head_dim or n_embd // n_head, n_ff)
    shapes = global_shapes(n_vocab, n_embd, tied_embeddings)
    for i in range(n_layer):
        shapes.update({tensor_name(part, i): shape for part, shape in block.items()})
    return shapes


def expected_shape(config, name: str) -> tuple[int, ...]:
    """The shape tensor `name` must have in a model of `config` (a `config.ModelConfig`); ffn_down_t included."""
    c = config
    part, layer = split_name(name)
    if layer is None:
        if name == ROPE_FREQS:
            return (c.rope_dim // 2,)
        return global_shapes(c.n_vocab, c.n_embd, False)[name]
    if name.endswith(".bias") or part in (ATTN_Q_NORM, ATTN_K_NORM, ATTN_POST_NORM, FFN_POST_NORM):
        return architecture_shapes(config, layer)[name]
    if part == FFN_DOWN_T:
        return (c.n_ff, c.n_embd)
    return layer_shapes(c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff)[part]


def down_name(file, layer: int) -> str:
    """The layer's down projection in this file: PowerInfer's transposed one when present."""
    transposed = tensor_name(FFN_DOWN_T, layer)
    return transposed if transposed in file.tensors else tensor_name(FFN_DOWN, layer)


def require_tensors(file, config) -> None:
    """One line naming the first tensor the model needs that the file lacks or holds in another shape."""
    c = config
    names = list(tensor_shapes(c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.n_ff, c.tied_embeddings,
                               c.head_dim))
    names += [name for i in range(c.n_layer) for name in architecture_shapes(config, i)]
    for name in names:
        part, layer = split_name(name)
        if part == FFN_DOWN:
            name = down_name(file, layer)
        shape = expected_shape(config, name)
        found = file.tensor(name)  # a missing tensor is a one-line error there
        if found.shape != shape:
            raise HybridInferError(f"{file.path}: tensor {name} has shape {found.shape}, expected {shape} from the "
                                   "metadata; the file is corrupt or its metadata is wrong")
