"""Hostile and broken model files: every case is one `error:` line and exit status 1, quickly, never a traceback,
a hang or a runaway allocation. The files are the tests' own tiny model and the default SmolLM2, edited one
metadata entry or tensor at a time (`tools/gguf_mutants.py`)."""

import math
import time

import pytest
from click.testing import CliRunner
from gguf import GGUFValueType as V

from hybridinfer.cli.main import cli
from hybridinfer.model_file.config import ModelConfig
from hybridinfer.default_model import default_model_path
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.runtime.kv_types import KV_TYPES
from hybridinfer.runtime.memory_estimate import estimate, require_fits
from hybridinfer.errors import HybridInferError
from tiny_models import random_weights, write_tiny_gguf
from tools.gguf_mutants import Layout, with_array_length, with_entry, with_key_bytes, with_tensor_values

SMOLLM2 = default_model_path()
needs_smollm2 = pytest.mark.skipif(not SMOLLM2.exists(), reason="the default model is fetched by `make test`")


@pytest.fixture(scope="module")
def tiny_layout(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("hostile") / "tiny.gguf", random_weights(seed=5),
                           context_length=64)
    return Layout.of(str(path))


@pytest.fixture(scope="module")
def smollm2_layout():
    if not SMOLLM2.exists():
        pytest.skip("the default model is fetched by `make test`")
    return Layout.of(str(SMOLLM2))


def refused(mutant, tmp_path, *extra, command="generate") -> str:
    """Run the CLI on the mutant; assert one `error:` line, exit 1, no traceback; return the line."""
    path = tmp_path / "mutant.gguf"
    mutant.write(str(path))
    args = [command, "-m", str(path), "-n", "2", "--temp", "0", *map(str, extra)]
    if command == "generate":
        args += ["-p", "hello"]
    result = CliRunner().invoke(cli, args, input="hello\n")
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_invalid_utf8_in_a_metadata_string(tiny_layout, tmp_path):
    line = refused(with_key_bytes(tiny_layout, "general.architecture", b"ll\xffma"), tmp_path)
    assert "general.architecture" in line and "UTF-8" in line


def test_block_count_as_an_array(tiny_layout, tmp_path):
    line = refused(with_entry(tiny_layout, "llama.block_count", V.ARRAY, [2, 2], V.UINT32), tmp_path)
    assert "llama.block_count" in line and "an array of 2 items" in line and "integer" in line


@pytest.mark.parametrize("key,value", [("llama.attention.layer_norm_rms_epsilon", math.nan),
                                       ("llama.rope.freq_base", math.inf),
                                       ("llama.attention.layer_norm_rms_epsilon", -1.0)])
def test_non_finite_or_negative_float_metadata(tiny_layout, tmp_path, key, value):
    assert key in refused(with_entry(tiny_layout, key, V.FLOAT32, value), tmp_path)


@pytest.mark.parametrize("key,value", [("llama.attention.head_count", 0), ("llama.attention.head_count", 3),
                                       ("llama.attention.head_count_kv", 3), ("llama.rope.dimension_count", -1),
                                       ("llama.rope.dimension_count", 2**40), ("llama.context_length", 2**40),
                                       ("llama.feed_forward_length", 0)])
def test_head_counts_and_widths_are_checked_against_the_architecture(tiny_layout, tmp_path, key, value):
    kind = V.INT64 if value < 0 or value >= 2**32 else V.UINT32
    assert key in refused(with_entry(tiny_layout, key, kind, value), tmp_path)


@needs_smollm2
def test_rope_wider_than_the_heads_is_refused_before_any_kernel_runs(smollm2_layout, tmp_path):
    # SmolLM2's heads are 64 wide: a rope.dimension_count of 128 once corrupted the heap (the kernels check no bounds)
    line = refused(with_entry(smollm2_layout, "llama.rope.dimension_count", V.UINT32, 128), tmp_path)
    assert "llama.rope.dimension_count" in line and "from 2 to 64" in line


def test_chat_template_as_an_array(tiny_layout, tmp_path):
    line = refused(with_entry(tiny_layout, "tokenizer.chat_template", V.ARRAY, ["{{ x }}"], V.STRING), tmp_path,
                   command="chat")
    assert "tokenizer.chat_template" in line and "a string" in line


@pytest.mark.parametrize("length", [2**31, 2**63])
def test_an_array_claiming_billions_of_items_is_refused_at_once(tiny_layout, tmp_path, length):
    mutant = with_array_length(tiny_layout, "tokenizer.ggml.token_type", length)
    line = refused(mutant, tmp_path)
    assert "tokenizer.ggml.token_type" in line and f"claims {length} items" in line
    start = time.monotonic()  # the header is refused before anything is read past it (no loop over 2^31 items)
    with pytest.raises(HybridInferError):
        GGUFFile(tmp_path / "mutant.gguf")
    assert time.monotonic() - start < 5


def test_context_beyond_memory_is_refused_with_the_numbers_and_a_smaller_c(tiny_layout, tmp_path):
    line = refused(with_entry(tiny_layout, "llama.context_length", V.UINT32, 2**31 - 1), tmp_path, "-c", 0)
    assert "KV cache" in line and "available" in line and "use -c" in line


@needs_smollm2
def test_a_huge_c_on_smollm2_is_refused_before_allocating(tmp_path):
    result = CliRunner().invoke(cli, ["generate", "-m", str(SMOLLM2), "-p", "hi", "-n", "1", "-c", "100000000"])
    assert result.exit_code == 1 and result.stderr.startswith("error: this run needs about")
    assert result.stderr.count("\n") == 1


@needs_smollm2
def test_memory_estimate_of_c_1000000_on_smollm2():
    file = GGUFFile(SMOLLM2)
    config = ModelConfig.from_gguf(file)
    f32 = (KV_TYPES["f32"],) * 2
    # 30 layers x 3 KV heads x 64 x (K and V) x 4 bytes = 46,080 bytes per position; f16 (the default) half that
    assert estimate(file, config, 1_000_000, 512, False, cache_types=f32).kv_cache == 1_000_000 * 46_080
    need = estimate(file, config, 1_000_000, 512, float32_weights=False)
    assert need.kv_cache == 1_000_000 * 23_040
    with pytest.raises(HybridInferError, match=r"use -c \d+ or less") as info:
        require_fits(need, config, 1_000_000, available=12 * 2**30)
    suggested = int(str(info.value).split("use -c ")[1].split()[0])
    assert 256 <= suggested < 1_000_000
    require_fits(estimate(file, config, suggested, 512, False), config, suggested, available=12 * 2**30)


def test_nan_weights_name_the_layer(tiny_layout, tmp_path):
    line = refused(with_tensor_values(tiny_layout, "blk.1.ffn_norm.weight", b"\x00\x00\xc0\x7f", at=8), tmp_path)
    assert "layer 1 (blk.1.*)" in line and "NaN" in line


def test_inf_in_the_embeddings_is_named(tiny_layout, tmp_path):
    n_vocab = len(GGUFFile(tiny_layout.path).metadata["tokenizer.ggml.tokens"])
    mutant = with_tensor_values(tiny_layout, "token_embd.weight", b"")
    start = mutant.data_patches[0][0]
    mutant.data_patches = [(start + row * 64 * 4, b"\x00\x00\x80\x7f") for row in range(n_vocab)]  # +inf in every row
    assert "token_embd" in refused(mutant, tmp_path)


def test_tensors_of_the_wrong_shape_are_named_before_any_weight_is_read(tiny_layout, tmp_path):
    from tools.gguf_mutants import Mutant, _base, _rename, assemble
    metadata, tensors = _base(tiny_layout)
    names = [e.name for e in tiny_layout.tensors]
    i, j = names.index("blk.1.attn_q.weight"), names.index("blk.1.ffn_gate.weight")
    tensors[i], tensors[j] = _rename(tiny_layout.tensors[i], names[j]), _rename(tiny_layout.tensors[j], names[i])
    mutant = Mutant("edit", assemble(tiny_layout, metadata, tensors), tiny_layout)
    for backend in ("packed", "reference"):
        line = refused(mutant, tmp_path, "--backend", backend)
        assert "blk.1.attn_q.weight has shape (96, 64), expected (64, 64)" in line


@pytest.mark.parametrize("command, value", [("generate", "1e-300"), ("generate", "1e39"), ("chat", "1e-300")])
def test_a_repeat_penalty_float32_cannot_hold_is_one_line(tiny_layout, command, value):
    """1e-300 is a positive float64 but 0 in float32, where the sampler divides logits by it."""
    args = [command, "-m", tiny_layout.path, "-n", "2", "--repeat-penalty", value]
    result = CliRunner().invoke(cli, args + (["-p", "hello"] if command == "generate" else []), input="hello\n")
    assert result.exit_code == 1, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid --repeat-penalty "), result.stderr
    assert "between 0.01 and 100" in lines[0] and "Traceback" not in result.output


def test_a_temperature_float32_cannot_hold_samples_uniformly(tiny_layout):
    result = CliRunner().invoke(cli, ["generate", "-m", tiny_layout.path, "-n", "2", "-p", "hi", "--temp", "1e39"])
    assert result.exit_code == 0, (result.output, result.exception)
