"""`convert_checkpoint`: a Hugging Face checkpoint directory -> one GGUF file, tensor by tensor.

Flow: check the output path, read config.json (architecture, activation, RoPE; every hyper-parameter validated)
and the tokenizer (tokenizer.model, else a byte-level BPE tokenizer.json), list the source tensors (no data; the
index and every file's tensor table validated; a tensor the architecture does not map is refused, never dropped),
write the GGUF header, metadata and tensor table, then stream each tensor: read it (a background thread
reads the next one meanwhile), apply the Q/K permutation (LLaMA, MiniCPM), encode it, append it. Output goes to a
temporary file beside the destination, renamed only when complete; the input is never written to.
"""

from __future__ import annotations

import os
import queue
import resource
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from ..atomic_file import atomic_output, check_destination
from ..model_file.config import ACTIVATION_KEY, THRESHOLD_KEY
from ..errors import HybridInferError
from ..model_file.tensor_shapes import OUTPUT, ROPE_FREQS
from .bpe_vocab import BpeVocab, read_bpe_vocab
from .hf_config import HFModelSpec, read_spec
from .hf_weights import SourceTensor, list_tensors
from .outtypes import OUTTYPES, ModelTraits, stored_type
from .quantize import encode, encoded_nbytes
from .rope_config import llama3_rope_freqs
from .sentencepiece_vocab import SentencePieceVocab, read_vocab
from .tensor_map import IGNORED, expected_shapes, gguf_name, prepare

SHOWN_UNMAPPED = 5  # the unmapped tensors an error names before "and N more"


@dataclass
class ConversionSummary:
    output: str
    architecture: str
    activation: str
    activation_threshold: float
    outtype: str
    tensors: int
    input_bytes: int
    output_bytes: int
    seconds: float
    input_mb_per_s: float
    peak_rss_mb: float

    def as_dict(self) -> dict:
        return asdict(self)


def convert_checkpoint(hf_dir: str | os.PathLike, output: str | os.PathLike, outtype: str = "f16",
                       force: bool = False, progress: Callable | None = None) -> ConversionSummary:
    """Convert; `progress(total_bytes)` may return a tqdm-like object whose `update(n)` is called per tensor."""
    start = time.perf_counter()
    hf_dir, output = Path(hf_dir), Path(output)
    _check_arguments(hf_dir, output, outtype, force)
    spec = read_spec(hf_dir)
    vocab = _read_vocabulary(hf_dir, spec)
    plan = _plan(hf_dir, spec)
    traits = ModelTraits(spec.gguf_arch, spec.n_layer, spec.n_head, spec.n_head_kv, spec.tie_word_embeddings)

    with atomic_output(output) as partial:
        writer = gguf.GGUFWriter(partial, spec.gguf_arch)
        _write_metadata(writer, spec, hf_dir, outtype)
        vocab.write(writer)
        types = {}
        for name, source in plan.items():
            types[name] = stored_type(name, source.shape, outtype, traits)
            nbytes = encoded_nbytes(source.shape, types[name])
            dtype = np.dtype({T.F32: np.float32, T.F16: np.float16}.get(types[name], np.uint8))
            writer.add_tensor_info(name, _byte_shape(source.shape, types[name]), dtype, nbytes, raw_dtype=types[name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = progress(sum(s.n_bytes for s in plan.values())) if progress else None
        for name, values in _prefetched(plan):
            writer.write_tensor_data(encode(prepare(name, values, spec), types[name]))
            if bar is not None:
                bar.update(plan[name].n_bytes)
        writer.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    input_bytes = sum(s.n_bytes for s in plan.values())
    return ConversionSummary(
        output=str(output), architecture=spec.gguf_arch, activation=spec.activation,
        activation_threshold=spec.activation_threshold, outtype=outtype, tensors=len(plan),
        input_bytes=input_bytes, output_bytes=output.stat().st_size, seconds=round(seconds, 3),
        input_mb_per_s=round(input_bytes / seconds / 1e6, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def _check_arguments(hf_dir: Path, output: Path, outtype: str, force: bool) -> None:
    """Everything about the paths and flags that can be refused before the checkpoint is read."""
    if not hf_dir.is_dir():
        raise HybridInferError(f"{hf_dir} is not a directory; give a Hugging Face checkpoint directory")
    if outtype not in OUTTYPES:
        raise HybridInferError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    check_destination(output)
    if output.exists() and not force:
        raise HybridInferError(f"{output} exists; pass --force to overwrite it")
    if output.exists() and output.resolve().parent == hf_dir.resolve() and output.suffix != ".gguf":
        raise HybridInferError(f"{output} is a file of the checkpoint being converted; write the GGUF file elsewhere")


def _read_vocabulary(hf_dir: Path, spec: HFModelSpec) -> SentencePieceVocab | BpeVocab:
    """SentencePiece when tokenizer.model is there (llama.cpp's converter tries it first), else tokenizer.json."""
    if (hf_dir / "tokenizer.model").exists() or not (hf_dir / "tokenizer.json").exists():
        return read_vocab(hf_dir, spec)
    return read_bpe_vocab(hf_dir, spec)


def _plan(hf_dir: Path, spec: HFModelSpec) -> dict[str, SourceTensor]:
    """GGUF name -> source tensor, in GGUF order, after checking names and shapes against the config."""
    sources = list_tensors(hf_dir)
    by_gguf: dict[str, SourceTensor] = {}
    unmapped = []
    for hf_name, source in sources.items():
        name = gguf_name(hf_name, spec.gguf_arch)
        if name is None:
            if not IGNORED.search(hf_name):
                unmapped.append(hf_name)
            continue
        by_gguf[name] = source
    if unmapped:
        more = f" and {len(unmapped) - SHOWN_UNMAPPED} more" if len(unmapped) > SHOWN_UNMAPPED else ""
        raise HybridInferError(f"{hf_dir}: tensors a {spec.hf_class} conversion does not map: "
                               f"{', '.join(unmapped[:SHOWN_UNMAPPED])}{more}; this checkpoint is not a supported "
                               "variant (no tensor is dropped)")
    if spec.rope_scaling.kind == "llama3":
        by_gguf[ROPE_FREQS] = _computed_rope_freqs(spec)
    if spec.tie_word_embeddings:
        by_gguf.pop(OUTPUT, None)
    plan = {}
    for name, shape in expected_shapes(spec).items():
        if name not in by_gguf:
            raise HybridInferError(f"{hf_dir}: the checkpoint lacks the tensor for {name}; the download is incomplete")
        if by_gguf[name].shape != shape:
            raise HybridInferError(
                f"{hf_dir}: tensor {by_gguf[name].name} has shape {by_gguf[name].shape}, config.json implies {shape}")
        plan[name] = by_gguf[name]
    unused = set(by_gguf) - set(plan)
    if unused:
        raise HybridInferError(f"{hf_dir}: tensor for {sorted(unused)[0]} does not fit the config (more layers?)")
    return plan


def _computed_rope_freqs(spec: HFModelSpec) -> SourceTensor:
    """Llama 3's rope_freqs.weight, computed from config.json as a source tensor of its own."""
    shape = (spec.head_dim // 2,)
    return SourceTensor(name="rope_freqs (computed from rope_scaling)", shape=shape, dtype="F32",
                        n_bytes=4 * shape[0],
                        load=lambda: llama3_rope_freqs(spec.rope_scaling, spec.rope_base, spec.head_dim))


def _write_metadata(writer: gguf.GGUFWriter, spec: HFModelSpec, hf_dir: Path, outtype: str) -> None:
    """The keys llama.cpp's converter writes for the architecture (LlamaModel adds the vocabulary size and RoPE
    width; every model the key and value widths when config.json states head_dim)."""
    writer.add_name(hf_dir.name)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    if spec.gguf_arch in ("llama", "minicpm"):
        writer.add_rope_dimension_count(spec.head_dim)
        writer.add_vocab_size(spec.n_vocab)
    if spec.head_dim_given:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_base)
    if spec.rope_scaling.kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(spec.rope_scaling.factor)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_file_type(OUTTYPES[outtype].file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if spec.gguf_arch == "minicpm":
        writer.add_embedding_scale(spec.embedding_scale)
        writer.add_residual_scale(spec.residual_scale)
        writer.add_logit_scale(spec.logit_scale)
    writer.add_string(ACTIVATION_KEY, spec.activation)
    writer.add_float32(THRESHOLD_KEY, spec.activation_threshold)


def _byte_shape(shape: tuple[int, ...], qtype: T) -> tuple[int, ...]:
    """The numpy shape of the encoded array, as GGUFWriter.add_tensor_info expects it."""
    if qtype in (T.F32, T.F16):
        return shape
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block_size * type_size)


def _prefetched(plan: dict[str, SourceTensor]):
    """Yield (name, float32 values) in order while a thread reads the next tensor (one ahead)."""
    ready: queue.Queue = queue.Queue(maxsize=1)

    def read_all():
        try:
            for name, source in plan.items():
                ready.put((name, source.load()))
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put((None, exc))
        ready.put(None)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    while (item := ready.get()) is not None:
        name, values = item
        if name is None:
            raise values
        yield name, values
