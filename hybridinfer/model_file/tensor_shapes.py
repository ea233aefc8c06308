"""The one table of a LLaMA-family model's GGUF tensors: names and torch shapes (out, in), from the
hyper-parameters. The converter writes these, `require_tensors` checks a file against them before any weight is
read, and the loaders (reference, packed, GPU side) take their shapes from here."""

from __future__ import annotations

from ..errors import HybridInferError

DOWN = "ffn_down.weight"  # (n_embd, n_ff): llama.cpp's layout
DOWN_T = "ffn_down_t.weight"  # (n_ff, n_embd): PowerInfer's transposed layout, row i = neuron i's output vector


def layer_shapes(n_embd: int, n_head: int, n_head_kv: int, head_dim: int, n_ff: int) -> dict[str, tuple[int, ...]]:
    """Each block's tensors by name within the block (`blk.{i}.` + name)."""
    q_rows, kv_rows = n_head * head_dim, n_head_kv * head_dim
    return {
        "attn_norm.weight": (n_embd,),
        "attn_q.weight": (q_rows, n_embd),  # rows permuted for adjacent-pair RoPE (GGUF convention)
        "attn_k.weight": (kv_rows, n_embd),  # the same permutation
        "attn_v.weight": (kv_rows, n_embd),
        "attn_output.weight": (n_embd, q_rows),
        "ffn_norm.weight": (n_embd,),
        "ffn_gate.weight": (n_ff, n_embd),  # row i: neuron i's gate weights
        "ffn_up.weight": (n_ff, n_embd),
        DOWN: (n_embd, n_ff),
    }


def global_shapes(n_vocab: int, n_embd: int, tied_embeddings: bool) -> dict[str, tuple[int, ...]]:
    shapes = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    if not tied_embeddings:
        shapes["output.weight"] = (n_vocab, n_embd)
    return shapes


def tensor_shapes(n_vocab: int, n_embd: int, n_layer: int, n_head: int, n_head_kv: int, n_ff: int,
                  tied_embeddings: bool, head_dim: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model (ffn_down in llama.cpp's layout)."""
    block = layer_shapes(n_embd, n_head, n_head_kv, head_dim or n_embd // n_head, n_ff)
    shapes = global_shapes(n_vocab, n_embd, tied_embeddings)
    for i in range(n_layer):
        shapes.update({f"blk.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def expected_shape(config, name: str) -> tuple[int, ...]:
    """The shape tensor `name` must have in a model of `config` (a `config.ModelConfig`); ffn_down_t included."""
    c = config
    if not name.startswith("blk."):
        return global_shapes(c.n_vocab, c.n_embd, False)[name]
    suffix = name.split(".", 2)[2]
    if suffix == DOWN_T:
        return (c.n_ff, c.n_embd)
    return layer_shapes(c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff)[suffix]


def down_name(file, layer: int) -> str:
    """The layer's down projection in this file: PowerInfer's transposed one when present."""
    transposed = f"blk.{layer}.{DOWN_T}"
    return transposed if transposed in file.tensors else f"blk.{layer}.{DOWN}"


def require_tensors(file, config) -> None:
    """One line naming the first tensor the model needs that the file lacks or holds in another shape."""
    c = config
    for name in tensor_shapes(c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.n_ff, c.tied_embeddings,
                              c.head_dim):
        if name.endswith(DOWN):
            name = down_name(file, int(name.split(".")[1]))
        shape = expected_shape(config, name)
        found = file.tensor(name)  # a missing tensor is a one-line error there
        if found.shape != shape:
            raise HybridInferError(f"{file.path}: tensor {name} has shape {found.shape}, expected {shape} from the "
                                   "metadata; the file is corrupt or its metadata is wrong")
