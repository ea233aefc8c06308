"""What each `--outtype` writes, tensor by tensor: the one table of the converter's type choices.

The K-quant mixes (q4_k_m, q5_k_m, q6_k) make llama.cpp's choice (`llama_tensor_get_type` in src/llama-quant.cpp,
no importance matrix, no overrides) for the tensors a LLaMA-family model has:
- norms (1-D) stay F32;
- the output projection, or the token embedding when it serves as one (tied), is Q6_K, or Q8_0 when its rows
  are not whole 256-blocks;
- attn_v and ffn_down take `more_bits` on llama.cpp's `use_more_bits` layers (the first and last eighth, and
  every third layer between);
- attn_v of a 70B-class model (`SEVENTY_B`) takes Q5_K where it would be Q4_K;
- every other matrix, the untied token embedding included, takes the mix's base type;
- a matrix whose rows are not whole blocks of its type falls back (`FALLBACK`: Q4_K->Q5_0, Q5_K->Q5_1,
  Q6_K->Q8_0), and to F16 if the rows are not whole 32-blocks either.
The older outtypes keep the converter's own rule: q4_0 keeps the output projection at Q8_0, and a matrix whose
rows are not whole blocks is written F16.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as T

from ..model_file.tensor_shapes import ATTN_V, FFN_DOWN, OUTPUT, TOKEN_EMBD, split_name


@dataclass(frozen=True)
class Outtype:
    base: T  # the type of every matrix no other field names
    file_type: LlamaFileType  # general.file_type
    output: T | None = None  # the output projection (or the tied token embedding); None: base
    more_bits: T | None = None  # attn_v and ffn_down on the use_more_bits layers; None: no change
    llama_mix: bool = False  # llama.cpp's rules (output Q8_0 and FALLBACK for partial blocks) instead of F16


OUTTYPES = {
    "f32": Outtype(T.F32, LlamaFileType.ALL_F32),
    "f16": Outtype(T.F16, LlamaFileType.MOSTLY_F16),
    "bf16": Outtype(T.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": Outtype(T.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_0": Outtype(T.Q4_0, LlamaFileType.MOSTLY_Q4_0, output=T.Q8_0),
    "q4_k_m": Outtype(T.Q4_K, LlamaFileType.MOSTLY_Q4_K_M, output=T.Q6_K, more_bits=T.Q6_K, llama_mix=True),
    "q5_k_m": Outtype(T.Q5_K, LlamaFileType.MOSTLY_Q5_K_M, output=T.Q6_K, more_bits=T.Q6_K, llama_mix=True),
    "q6_k": Outtype(T.Q6_K, LlamaFileType.MOSTLY_Q6_K, output=T.Q6_K, llama_mix=True),
}
MORE_BITS_PARTS = (ATTN_V, FFN_DOWN)
FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}  # llama.cpp's tensor_type_fallback
PARTIAL_OUTPUT = T.Q8_0  # a mix's output projection when its rows are not whole blocks of the base type
SEVENTY_B_ATTN_V = {T.Q4_K: T.Q5_K}  # llama.cpp's LLM_TYPE_70B bump of attn_v
# llama.cpp's LLM_TYPE_70B: (architecture, layers) -> whether it also needs grouped-query attention
SEVENTY_B = {("llama", 80): True, ("qwen2", 80): False}


@dataclass(frozen=True)
class ModelTraits:
    """What the choice needs beyond a tensor's name and shape."""
    architecture: str  # GGUF's general.architecture
    n_layer: int
    n_head: int
    n_head_kv: int
    tied_embeddings: bool

    @property
    def seventy_b(self) -> bool:
        needs_gqa = SEVENTY_B.get((self.architecture, self.n_layer))
        return needs_gqa is not None and (not needs_gqa or self.n_head != self.n_head_kv)


def use_more_bits(layer: int, n_layer: int) -> bool:
    """llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third one between."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def stored_type(name: str, shape: tuple[int, ...], outtype: str, model: ModelTraits) -> T:
    """The type tensor `name` of torch shape `shape` (out, in) is written with for `--outtype outtype`."""
    choice = OUTTYPES[outtype]
    if len(shape) == 1 or choice.base == T.F32:
        return T.F32
    qtype = choice.base
    part, layer = split_name(name)
    is_output = name == OUTPUT or (model.tied_embeddings and name == TOKEN_EMBD)
    if is_output and choice.output is not None:
        partial = choice.llama_mix and shape[-1] % _block_size(qtype)
        qtype = PARTIAL_OUTPUT if partial else choice.output
    elif part in MORE_BITS_PARTS and layer is not None:
        if choice.more_bits is not None and use_more_bits(layer, model.n_layer):
            qtype = choice.more_bits
        if part == ATTN_V and choice.llama_mix and model.seventy_b:
            qtype = SEVENTY_B_ATTN_V.get(qtype, qtype)
    if shape[-1] % _block_size(qtype) == 0:
        return qtype
    if choice.llama_mix and qtype in FALLBACK and shape[-1] % _block_size(FALLBACK[qtype]) == 0:
        return FALLBACK[qtype]
    return T.F16


def _block_size(qtype: T) -> int:
    return GGML_QUANT_SIZES[qtype][0]
