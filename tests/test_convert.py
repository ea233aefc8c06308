"""`hybridinfer convert` on synthesized checkpoints of every published variant, against Hugging Face's
LlamaForCausalLM run on the original directory (tests/hf_reference.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

import hybridinfer
from tiny_models import directory_digest
from hybridinfer.convert import convert_checkpoint, k_quants
from hybridinfer.convert.tensor_map import permute_for_rope
from hybridinfer.errors import HybridInferError
from hybridinfer.model_file.gguf_file import GGUFFile
from hf_reference import hf_reference_logits
from llamacpp_quantize import llama_quantize
from logit_checks import F32_CACHE
from tools.synth_checkpoint import synthesize

IDS = [1, 15, 27, 300, 42, 7, 99, 250, 3, 18]
VARIANTS = [("prosparse-llama-2-7b", None), ("relullama-7b", "bin"), ("relullama-7b", "safetensors"),
            ("llama-silu", None), ("minicpm-1b", None)]
# max relative error of logits per output type, measured on tiny random checkpoints (which amplify weight
# noise far more than trained models); exactness of the encoding itself is tested separately below
BOUNDS = {"f32": 1e-4, "f16": 5e-3, "bf16": 3e-2, "q8_0": 6e-2, "q4_0": 0.6, "q4_k_m": 0.5, "q5_k_m": 0.3, "q6_k": 0.15}
K_MIXES = ("q4_k_m", "q5_k_m", "q6_k")
# K-quant checkpoints (rows of whole 256-blocks): untied with ffn_down rows of 320 (partial blocks: llama.cpp's
# fallbacks), 3 layers (use_more_bits: layer 2); tied with 9 layers (use_more_bits: 0, 3, 6, 7, 8)
K_SHAPES = {"untied": {"hidden_size": 256, "intermediate_size": 320, "num_attention_heads": 4,
                       "num_key_value_heads": 4, "num_hidden_layers": 3},
            "tied": {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "num_hidden_layers": 9, "tie_word_embeddings": True}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    made = {}
    for variant, fmt in VARIANTS:
        made[(variant, fmt)] = synthesize(root / f"{variant}-{fmt}", variant, size="tiny", fmt=fmt, seed=3,
                                          progress=False)
    return made


def relative_error(ours: np.ndarray, expected: torch.Tensor) -> float:
    expected = expected.numpy()
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("variant,fmt", VARIANTS)
def test_f32_logits_match_hugging_face(checkpoints, tmp_path, variant, fmt):
    hf_dir = checkpoints[(variant, fmt)]
    summary = convert_checkpoint(hf_dir, tmp_path / "m.gguf", outtype="f32")
    engine = hybridinfer.load(summary.output, **F32_CACHE)
    expected = hf_reference_logits(hf_dir, IDS)
    assert relative_error(engine.logits(IDS), expected) < BOUNDS["f32"]
    config = json.loads((hf_dir / "config.json").read_text())
    assert engine.config.architecture == ("minicpm" if variant == "minicpm-1b" else "llama")
    assert engine.config.n_vocab == config["vocab_size"]
    if config["hidden_act"] == "fatrelu":
        assert engine.config.activation == "fatrelu"
        assert engine.config.activation_threshold == pytest.approx(config["hidden_act_param"])


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0", "q4_0"])
def test_quantized_outputs_stay_within_documented_bounds(checkpoints, tmp_path, outtype):
    hf_dir = checkpoints[("prosparse-llama-2-7b", None)]
    summary = convert_checkpoint(hf_dir, tmp_path / "m.gguf", outtype=outtype)
    expected = hf_reference_logits(hf_dir, IDS)
    assert relative_error(hybridinfer.load(summary.output).logits(IDS), expected) < BOUNDS[outtype]


def test_quantized_bytes_are_the_gguf_package_encoding(checkpoints, tmp_path):
    hf_dir = checkpoints[("llama-silu", None)]
    f32 = GGUFFile(convert_checkpoint(hf_dir, tmp_path / "a.gguf", outtype="f32").output)
    for outtype, qtype in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0)):
        quantized = GGUFFile(convert_checkpoint(hf_dir, tmp_path / f"{outtype}.gguf", outtype=outtype).output)
        for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight"):
            expected = quants.quantize(np.asarray(f32.tensor(name).raw), qtype)
            assert quantized.tensor(name).type == qtype
            np.testing.assert_array_equal(np.asarray(quantized.tensor(name).raw), expected)


def test_silu_output_follows_llama_cpp_conventions(checkpoints, tmp_path):
    """transformers' GGUF loader reads llama.cpp's conventions (names, keys, Q/K permutation): it must
    rebuild the original checkpoint's logits from the converted file."""
    transformers = pytest.importorskip("transformers")
    hf_dir = checkpoints[("llama-silu", None)]
    path = tmp_path / "silu.gguf"
    convert_checkpoint(hf_dir, path, outtype="f32")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0]
    assert relative_error(logits.numpy(), hf_reference_logits(hf_dir, IDS)) < 1e-4
    meta = GGUFFile(path).metadata
    for key in ("llama.context_length", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
                "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "general.file_type"):
        assert key in meta, key
    assert meta["tokenizer.ggml.model"] == "llama"


def test_rope_permutation_pairs_rows_as_llama_cpp():
    rows = np.arange(2 * 8, dtype=np.float32)[:, None]  # 2 heads of head_dim 8
    permuted = permute_for_rope(rows, 2)[:, 0]
    assert permuted.tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_tokenizer_and_chat_template_are_carried_over(checkpoints, tmp_path):
    hf_dir = checkpoints[("minicpm-1b", None)]
    engine = hybridinfer.load(convert_checkpoint(hf_dir, tmp_path / "m.gguf", outtype="f32").output)
    import sentencepiece
    processor = sentencepiece.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    text = "Return the sum of 12 and 345.\n  Indented line"
    assert engine.tokenize(text) == [1] + processor.encode(text)
    assert engine.chat_template and "<AI>" in engine.chat_template


def test_input_is_never_modified_and_output_is_not_overwritten(checkpoints, tmp_path):
    hf_dir = checkpoints[("prosparse-llama-2-7b", None)]
    before = directory_digest(hf_dir)
    out = tmp_path / "m.gguf"
    convert_checkpoint(hf_dir, out, outtype="q4_0")
    assert directory_digest(hf_dir) == before
    with pytest.raises(HybridInferError, match="--force"):
        convert_checkpoint(hf_dir, out, outtype="f32")
    convert_checkpoint(hf_dir, out, outtype="f32", force=True)
    assert GGUFFile(out).tensor("blk.0.ffn_up.weight").type == T.F32


def _edit_config(hf_dir, tmp_path, **changes):
    import shutil
    copy = tmp_path / "edited"
    shutil.copytree(hf_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("changes,needle", [
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "unsupported checkpoint"),
    ({"model_type": "sparse_llama"}, "model_type 'sparse_llama'"),
    ({"hidden_act": "shiftrelu"}, "unsupported hidden_act 'shiftrelu'"),
    ({"num_hidden_layers": 1}, "does not fit the config"),
    ({"num_hidden_layers": 3}, "lacks the tensor"),
    ({"hidden_size": None}, "lacks the key 'hidden_size'"),
])
def test_bad_checkpoints_are_refused_with_one_line(checkpoints, tmp_path, changes, needle):
    edited = _edit_config(checkpoints[("prosparse-llama-2-7b", None)], tmp_path, **changes)
    with pytest.raises(HybridInferError) as info:
        convert_checkpoint(edited, tmp_path / "out.gguf")
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out.gguf").exists()
    assert not list(tmp_path.glob(".out.gguf.*"))


def test_cli_json_summary_and_missing_directory(checkpoints, tmp_path):
    hf_dir = checkpoints[("relullama-7b", "bin")]
    cli = [sys.executable, "-m", "hybridinfer", "convert"]
    done = subprocess.run(cli + [str(hf_dir), "-o", str(tmp_path / "m.gguf"), "--outtype", "q8_0", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["tensors"] == 2 * 9 + 3 and summary["peak_rss_mb"] > 0 and summary["seconds"] > 0
    done = subprocess.run(cli + [str(tmp_path / "nope"), "-o", str(tmp_path / "x.gguf")], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "not a directory" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_killed_conversion_leaves_no_file_at_the_destination(tmp_path_factory, tmp_path, sig):
    hf_dir = tmp_path_factory.getbasetemp() / "slow-checkpoint"
    if not hf_dir.exists():  # ~200 MB of fp32 weights: long enough to interrupt mid-way
        synthesize(hf_dir, "prosparse-llama-2-7b", size="tiny", seed=1, progress=False,
                   overrides={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4,
                              "num_attention_heads": 8, "num_key_value_heads": 8})
    out = tmp_path / "out.gguf"
    # SIGINT as a terminal gives it, even where the tests run in a background job (which starts with it ignored)
    process = subprocess.Popen([sys.executable, "-m", "hybridinfer", "convert", str(hf_dir), "-o", str(out),
                                "--outtype", "q8_0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.gguf.*")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGSTOP)  # frozen mid-write: the signal below cannot come after the rename
    assert process.poll() is None and not out.exists(), "conversion finished before it could be interrupted"
    os.kill(process.pid, sig)
    os.kill(process.pid, signal.SIGCONT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert not out.exists()
    if sig != signal.SIGKILL:  # SIGINT and SIGTERM unwind: the partial file is removed too
        assert process.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
        assert "Traceback" not in stderr
        assert not list(tmp_path.glob(".out.gguf.*"))


def test_output_file_gets_ordinary_permissions(checkpoints, tmp_path):
    out = tmp_path / "m.gguf"
    convert_checkpoint(checkpoints[("llama-silu", None)], out, outtype="f16")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.fixture(scope="module")
def k_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-k")
    return {kind: synthesize(root / kind, "llama-silu", size="tiny", seed=5, progress=False, overrides=shape)
            for kind, shape in K_SHAPES.items()}


# llama.cpp's choice for the untied checkpoint, written out by hand: (matrices, output, attn_v on layer 2,
# ffn_down on layers 0-1, ffn_down on layer 2)
K_MIX_TYPES = {"q4_k_m": (T.Q4_K, T.Q6_K, T.Q6_K, T.Q5_0, T.Q8_0),
               "q5_k_m": (T.Q5_K, T.Q6_K, T.Q6_K, T.Q5_1, T.Q8_0),
               "q6_k": (T.Q6_K, T.Q6_K, T.Q6_K, T.Q8_0, T.Q8_0)}
K_FILE_TYPES = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # llama.cpp's LLAMA_FTYPE_MOSTLY_*


def _encoded(values: np.ndarray, qtype: T) -> np.ndarray:
    if qtype in k_quants.QUANTIZERS:
        return k_quants.quantize(values, qtype)
    return quants.quantize(values, qtype)


@pytest.mark.parametrize("outtype", K_MIXES)
def test_k_quant_mixes_follow_llama_cpp_table(k_checkpoints, tmp_path, outtype):
    hf_dir = k_checkpoints["untied"]
    f32 = GGUFFile(convert_checkpoint(hf_dir, tmp_path / "f32.gguf", outtype="f32").output)
    summary = convert_checkpoint(hf_dir, tmp_path / "k.gguf", outtype=outtype)
    converted = GGUFFile(summary.output)
    base, output, attn_v_more, down, down_more = K_MIX_TYPES[outtype]
    counts = {}
    for name, tensor in converted.tensors.items():
        if len(tensor.shape) == 1:
            expected = T.F32
        elif name == "output.weight":
            expected = output
        elif name == "blk.2.attn_v.weight":
            expected = attn_v_more
        elif name.endswith("ffn_down.weight"):
            expected = down_more if name.startswith("blk.2.") else down
        else:
            expected = base
        assert tensor.type == expected, name
        counts[expected.name] = counts.get(expected.name, 0) + 1
        if expected != T.F32:
            values = np.asarray(f32.tensor(name).raw)
            np.testing.assert_array_equal(np.asarray(tensor.raw).reshape(values.shape[0], -1),
                                          _encoded(values, expected), err_msg=name)
    assert converted.metadata["general.file_type"] == K_FILE_TYPES[outtype]
    from click.testing import CliRunner
    from hybridinfer.cli.main import cli
    info = CliRunner().invoke(cli, ["info", summary.output, "--json"])
    assert info.exit_code == 0, info.output
    assert {name: row["tensors"] for name, row in json.loads(info.stdout)["weight_types"].items()} == counts
    engine = hybridinfer.load(summary.output)  # K types decoded to float32 at load today
    expected_logits = hf_reference_logits(hf_dir, IDS)
    assert relative_error(engine.logits(IDS), expected_logits) < BOUNDS[outtype]


@pytest.mark.parametrize("kind", K_SHAPES)
@pytest.mark.parametrize("outtype", K_MIXES)
def test_k_quant_mixes_equal_llama_quantize(k_checkpoints, tmp_path, outtype, kind):
    """Our conversion against llama.cpp's llama_model_quantize of our F32 conversion: every tensor's type and bytes."""
    hf_dir = k_checkpoints[kind]
    f32 = convert_checkpoint(hf_dir, tmp_path / "f32.gguf", outtype="f32").output
    llama_quantize(f32, tmp_path / "theirs.gguf", outtype)
    theirs = GGUFFile(tmp_path / "theirs.gguf")
    ours = GGUFFile(convert_checkpoint(hf_dir, tmp_path / "ours.gguf", outtype=outtype).output)
    assert set(ours.tensors) == set(theirs.tensors)
    for name, tensor in ours.tensors.items():
        assert tensor.type == theirs.tensor(name).type, name
        assert np.array_equal(np.asarray(tensor.raw), np.asarray(theirs.tensor(name).raw)), name


def test_k_quant_table_edges_as_llama_cpp():
    from hybridinfer.convert.outtypes import ModelTraits, stored_type, use_more_bits
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    llama_70b = ModelTraits("llama", 80, 64, 8, tied_embeddings=False)
    llama_65b = ModelTraits("llama", 80, 64, 64, tied_embeddings=False)
    assert stored_type("blk.11.attn_v.weight", (1024, 8192), "q4_k_m", llama_70b) == T.Q5_K  # LLM_TYPE_70B bump
    assert stored_type("blk.11.attn_v.weight", (8192, 8192), "q4_k_m", llama_65b) == T.Q4_K
    assert stored_type("blk.3.attn_v.weight", (1024, 8192), "q4_k_m", llama_70b) == T.Q6_K
    assert stored_type("blk.11.attn_v.weight", (1024, 8192), "q5_k_m", llama_70b) == T.Q5_K
    tied = ModelTraits("llama", 30, 9, 3, tied_embeddings=True)  # SmolLM2-135M: rows of 576 (2.25 blocks of 256)
    assert stored_type("token_embd.weight", (49152, 576), "q4_k_m", tied) == T.Q8_0  # output rule, not FALLBACK
    assert stored_type("blk.0.ffn_up.weight", (1536, 576), "q4_k_m", tied) == T.Q5_0
    assert stored_type("blk.0.ffn_down.weight", (576, 1536), "q4_k_m", tied) == T.Q6_K
    assert stored_type("blk.4.ffn_down.weight", (576, 1536), "q4_k_m", tied) == T.Q4_K
    assert stored_type("blk.0.attn_v.weight", (192, 576), "q6_k", tied) == T.Q8_0
    assert stored_type("blk.0.ffn_up.weight", (1536, 100), "q5_k_m", tied) == T.F16  # not even 32-blocks
    assert stored_type("output_norm.weight", (576,), "q6_k", tied) == T.F32
    assert stored_type("blk.0.ffn_up.weight", (1536, 576), "q4_0", tied) == T.Q4_0  # the older rule is kept
    assert stored_type("blk.0.ffn_up.weight", (1536, 100), "q4_0", tied) == T.F16
    assert stored_type("token_embd.weight", (49152, 576), "q4_0", tied) == T.Q8_0
