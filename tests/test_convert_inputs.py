"""`hybridinfer convert` (and `generate -m`) on bad input: every case is refused with exit status 1 and one
`error: ...` line on stderr (no traceback, no click usage block), leaves no output or `.partial` file, and
does not touch the input. The checkpoints are tiny synthesized ones (tools/synth_checkpoint.py)."""

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from tiny_models import directory_digest
from hybridinfer import atomic_file
from hybridinfer.cli.main import cli
from tools.synth_checkpoint import synthesize

DELETE = object()  # in config edits: remove the key


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-inputs")
    return {
        "safetensors": synthesize(root / "prosparse", "prosparse-llama-2-7b", size="tiny", seed=5, progress=False),
        "bin-shards": synthesize(root / "relullama", "relullama-7b", size="tiny", fmt="bin", seed=5, progress=False),
        "minicpm": synthesize(root / "minicpm", "minicpm-1b", size="tiny", seed=5, progress=False),
    }


@pytest.fixture
def checkpoint(sources, tmp_path):
    """A fresh copy of a source checkpoint, to be damaged by the test: checkpoint("safetensors")."""
    def copy(kind: str = "safetensors"):
        return shutil.copytree(sources[kind], tmp_path / f"in-{kind}")
    return copy


class Case:
    """One refused conversion: run it, then check the one error line and that nothing was left or changed."""

    def __init__(self, tmp_path):
        self.out = tmp_path / "out" / "model.gguf"
        self.out.parent.mkdir()

    def convert(self, hf_dir, *extra, output=None, in_process=True):
        output = self.out if output is None else output
        self.digest = directory_digest(hf_dir)
        args = ["convert", str(hf_dir), "-o", str(output), *extra]
        if in_process:
            result = CliRunner().invoke(cli, args)
            assert isinstance(result.exception, SystemExit), result.exception  # not an unexpected exception
            return result.exit_code, result.stderr, hf_dir
        done = subprocess.run([sys.executable, "-m", "hybridinfer", *args], capture_output=True, text=True)
        return done.returncode, done.stderr, hf_dir

    def refused(self, run, needle):
        status, stderr, hf_dir = run
        assert status == 1, stderr
        assert "Traceback" not in stderr and "Usage:" not in stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert needle in lines[0], lines[0]
        assert not self.out.exists()
        assert not [p for p in self.out.parent.iterdir() if p.name.endswith(".partial")]
        assert not list(hf_dir.glob("*.partial")) and not list(hf_dir.glob(".*.partial"))
        assert directory_digest(hf_dir) == self.digest, "the input was modified"
        return lines[0]


@pytest.fixture
def case(tmp_path):
    return Case(tmp_path)


def _edit_config(hf_dir, **changes):
    config = json.loads((hf_dir / "config.json").read_text())
    for key, value in changes.items():
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    (hf_dir / "config.json").write_text(json.dumps(config))  # NaN and Infinity written as json.dumps does
    return hf_dir


# 1. config.json that is not an object -------------------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("[1, 2]", "holds an array, not a JSON object"),
    ('"LlamaForCausalLM"', "holds a string, not a JSON object"),
    ("4096", "holds a number, not a JSON object"),
    ("null", "holds null, not a JSON object"),
    ("{", "is not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_config_that_is_not_an_object(checkpoint, case, text, needle):
    hf_dir = checkpoint()
    path = hf_dir / "config.json"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    assert "config.json" in case.refused(case.convert(hf_dir), needle)


# 2. hyper-parameters -------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,needle", [
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    ({"hidden_size": "64"}, 'hidden_size must be a positive integer, got "64"'),
    ({"hidden_size": None}, "hidden_size must be a positive integer, got null"),
    ({"hidden_size": 64.0}, "hidden_size must be a positive integer, got 64.0"),
    ({"num_hidden_layers": -2}, "num_hidden_layers must be a positive integer, got -2"),
    ({"num_hidden_layers": True}, "num_hidden_layers must be a positive integer, got true"),
    ({"intermediate_size": float("nan")}, "intermediate_size must be a positive integer, got NaN"),
    ({"vocab_size": [600]}, "vocab_size must be a positive integer, got [600]"),
    ({"max_position_embeddings": 2**40}, "max_position_embeddings must be at most 2147483647"),
    ({"num_key_value_heads": 0}, "num_key_value_heads must be a positive integer, got 0"),
    ({"rope_theta": 0}, "rope_theta must be a finite number > 0"),
    ({"rope_theta": float("inf")}, "rope_theta must be a finite number > 0 (a float32), got Infinity"),
    ({"rope_theta": "10000.0"}, 'rope_theta must be a finite number > 0 (a float32), got "10000.0"'),
    ({"rope_theta": None}, "rope_theta must be a finite number > 0 (a float32), got null"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number > 0 (a float32), got NaN"),
    ({"rms_norm_eps": -1e-5}, "rms_norm_eps must be a finite number > 0"),
    ({"rms_norm_eps": 1e39}, "rms_norm_eps must be a finite number > 0 (a float32), got 1e+39"),
    ({"hidden_act_param": -0.5}, "hidden_act_param must be a finite number >= 0"),
    ({"hidden_act_param": "0.01"}, "hidden_act_param must be a finite number >= 0"),
    ({"tie_word_embeddings": "false"}, 'tie_word_embeddings must be true or false, got "false"'),
    ({"tie_word_embeddings": 0}, "tie_word_embeddings must be true or false, got 0"),
    ({"bos_token_id": "1"}, 'bos_token_id must be a token id'),
    ({"eos_token_id": []}, "eos_token_id must be a token id"),
    ({"eos_token_id": [2, "x"]}, "eos_token_id must be a token id"),
    ({"architectures": "SparseLlamaForCausalLM"}, "architectures must be a list of strings"),
    ({"model_type": 7}, "model_type must be a string, got 7"),
    ({"hidden_act": ["relu"]}, "hidden_act must be a string"),
    ({"hidden_size": 66}, "hidden_size 66 is not a multiple of num_attention_heads 4"),
    ({"hidden_size": 60}, "hidden_size / num_attention_heads = 15 is odd"),
    ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ({"vocab_size": DELETE}, "lacks the key 'vocab_size'"),
])
def test_bad_hyper_parameters_name_the_key(checkpoint, case, changes, needle):
    line = case.refused(case.convert(_edit_config(checkpoint(), **changes)), needle)
    assert "config.json" in line


@pytest.mark.parametrize("changes,needle", [
    ({"scale_emb": "12"}, 'scale_emb must be a finite number > 0 (a float32), got "12"'),
    ({"scale_depth": float("-inf")}, "scale_depth must be a finite number > 0 (a float32), got -Infinity"),
    ({"dim_model_base": 0}, "dim_model_base must be a positive integer, got 0"),
])
def test_bad_minicpm_scales_name_the_key(checkpoint, case, changes, needle):
    case.refused(case.convert(_edit_config(checkpoint("minicpm"), **changes)), needle)


def test_null_num_key_value_heads_means_no_grouping(checkpoint, tmp_path):
    """As in transformers: an absent or null num_key_value_heads is num_attention_heads."""
    hf_dir = _edit_config(checkpoint(), num_key_value_heads=None)
    result = CliRunner().invoke(cli, ["convert", str(hf_dir), "-o", str(tmp_path / "m.gguf"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tensors"] == 2 * 9 + 3


@pytest.mark.parametrize("changes,needle", [
    ({"chat_template": 5}, "chat_template must be a string, got 5"),
    ({"added_tokens_decoder": {"x": {"content": "<a>"}}}, "the added tokens in tokenizer_config.json"),
    ({"added_tokens_decoder": {"700": "<a>"}}, "the added tokens in tokenizer_config.json"),
    ({"added_tokens_decoder": {"-1": {"content": "<a>"}}}, "has a negative id or non-string content"),
    ({"added_tokens_decoder": {"700": {"content": 7}}}, "has a negative id or non-string content"),
])
def test_bad_tokenizer_config(checkpoint, case, changes, needle):
    hf_dir = checkpoint()
    path = hf_dir / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    case.refused(case.convert(hf_dir), needle)


# 3. the shard index --------------------------------------------------------------------------------------

def _index_edit(hf_dir, index_name, edit, suffix=""):
    path = hf_dir / index_name
    index = json.loads(path.read_text())
    edited = edit(index, suffix)
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))


def _first_tensor_to(shard):
    """An index edit: the first tensor's shard becomes `shard` ("{suffix}" replaced by the index's suffix)."""
    def edit(index, suffix):
        name = next(iter(index["weight_map"]))
        index["weight_map"][name] = shard.replace("{suffix}", suffix) if isinstance(shard, str) else shard
        return index
    return edit


@pytest.mark.parametrize("kind,index_name,suffix", [
    ("safetensors", "model.safetensors.index.json", ".safetensors"),
    ("bin-shards", "pytorch_model.bin.index.json", ".bin"),
])
@pytest.mark.parametrize("edit,needle", [
    (lambda index, _: "{not json", "is not valid JSON"),
    (lambda index, _: [index], "holds an array, not a JSON object"),
    (lambda index, _: {"metadata": {}}, "has no weight_map, not an object of tensor name -> shard file"),
    (lambda index, _: {**index, "weight_map": list(index["weight_map"])}, "has weight_map [\""),
    (lambda index, _: {**index, "weight_map": {}}, "has weight_map {}"),
    (_first_tensor_to(5), "must name a {suffix} file in the checkpoint directory, got 5"),
    (_first_tensor_to(None), "must name a {suffix} file in the checkpoint directory, got null"),
    (_first_tensor_to("../elsewhere{suffix}"), 'got "../elsewhere{suffix}"'),
    (_first_tensor_to("/tmp/abs{suffix}"), 'got "/tmp/abs{suffix}"'),
    (_first_tensor_to("model.gguf"), 'must name a {suffix} file'),
    (_first_tensor_to("shard-00009-of-00009{suffix}"), "names shard-00009-of-00009{suffix}, which is missing"),
], ids=["not-json", "array", "no-weight-map", "weight-map-list", "weight-map-empty", "shard-number", "shard-null",
        "shard-outside", "shard-absolute", "shard-wrong-type", "shard-missing"])
def test_bad_index_is_refused_before_any_output(checkpoint, case, kind, index_name, suffix, edit, needle):
    hf_dir = checkpoint(kind)
    _index_edit(hf_dir, index_name, edit, suffix)
    assert index_name in case.refused(case.convert(hf_dir), needle.replace("{suffix}", suffix))


def test_index_naming_a_directory_as_shard(checkpoint, case):
    hf_dir = checkpoint()
    (hf_dir / "dir.safetensors").mkdir()
    _index_edit(hf_dir, "model.safetensors.index.json", _first_tensor_to("dir.safetensors"))
    case.refused(case.convert(hf_dir), "names dir.safetensors, which is missing")


# 4. weight files: unsafe pickles, corrupt or truncated files ---------------------------------------------

class NotATensor:  # a class the safe unpickler refuses
    pass


def _unsafe_state(hf_dir):
    state = torch.load(hf_dir / "pytorch_model.bin", weights_only=True)
    return {**state, "training_state": NotATensor()}


@pytest.mark.parametrize("write", [
    lambda state, path: torch.save(state, path),
    lambda state, path: torch.save(state, path, _use_new_zipfile_serialization=False),
    lambda state, path: path.write_bytes(pickle.dumps(state, protocol=4)),
], ids=["torch-zip", "torch-legacy", "plain-pickle"])
def test_pickle_that_cannot_be_loaded_safely(checkpoint, case, write):
    hf_dir = checkpoint("minicpm")
    write(_unsafe_state(hf_dir), hf_dir / "pytorch_model.bin")
    line = case.refused(case.convert(hf_dir, in_process=False), "is a pickle that cannot be loaded safely")
    assert "safetensors" in line and "pytorch_model.bin" in line


@pytest.mark.parametrize("damage,needle", [
    (lambda data: b"", "not a readable PyTorch checkpoint"),
    (lambda data: b"hello world\n" * 20, "not a readable PyTorch checkpoint"),
    (lambda data: data[:len(data) // 2], "not a readable PyTorch checkpoint"),
    (lambda data: b"PK\x03\x04" + data[4:len(data) // 3], "not a readable PyTorch checkpoint"),
], ids=["empty", "text", "truncated", "zip-header-only"])
def test_corrupt_torch_bin(checkpoint, case, damage, needle):
    hf_dir = checkpoint("minicpm")
    path = hf_dir / "pytorch_model.bin"
    path.write_bytes(damage(path.read_bytes()))
    case.refused(case.convert(hf_dir, in_process=False), needle)


def test_torch_bin_that_is_not_a_state_dict(checkpoint, case):
    hf_dir = checkpoint("minicpm")
    torch.save([torch.zeros(2)], hf_dir / "pytorch_model.bin")
    case.refused(case.convert(hf_dir), "holds a list, not a dict of tensors")


def _shard_with_tensors(hf_dir):
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    return hf_dir / sorted(set(index["weight_map"].values()))[-1]


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8:8 + length]))
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def _first_entry(change):
    def edit(header):
        name = next(key for key in header if key != "__metadata__")
        header[name] = change(header[name])
        return header
    return edit


@pytest.mark.parametrize("edit,needle", [
    (lambda header: b"{not json", "is not a safetensors file (bad header)"),
    (lambda header: list(header), "is not a safetensors file (bad header)"),
    (lambda header: b"\xff" * 16, "is not a safetensors file (bad header)"),
    (_first_entry(lambda info: "F32"), "is corrupt: tensor"),
    (_first_entry(lambda info: {**info, "dtype": ["F32"]}), 'has dtype ["F32"]'),
    (_first_entry(lambda info: {**info, "dtype": "I8"}), "has dtype I8; only F32, F16, BF16, F64"),
    (_first_entry(lambda info: {**info, "shape": "64"}), 'has shape "64"'),
    (_first_entry(lambda info: {**info, "shape": [-1, 64]}), "has shape [-1, 64]"),
    (_first_entry(lambda info: {k: v for k, v in info.items() if k != "data_offsets"}), "has data_offsets null"),
    (_first_entry(lambda info: {**info, "data_offsets": [8, 4]}), "has data_offsets [8, 4]"),
    (_first_entry(lambda info: {**info, "shape": [info["shape"][0] + 1, *info["shape"][1:]]}), "bytes for shape"),
    (_first_entry(lambda info: {**info, "data_offsets": [0, 2**62]}), "bytes for shape"),
], ids=["not-json", "array", "binary", "entry-string", "dtype-list", "dtype-int8", "shape-string",
        "shape-negative", "no-offsets", "offsets-reversed", "size-mismatch", "offsets-huge"])
def test_corrupt_safetensors_header(checkpoint, case, edit, needle):
    hf_dir = checkpoint()
    _rewrite_header(_shard_with_tensors(hf_dir), edit)
    case.refused(case.convert(hf_dir), needle)


@pytest.mark.parametrize("damage,needle", [
    (lambda data: b"", "is truncated (no safetensors header)"),
    (lambda data: data[:6], "is truncated (no safetensors header)"),
    (lambda data: data[:40], "is truncated or not a safetensors file"),
    (lambda data: data[:len(data) - 16], "is truncated: tensor"),
    (lambda data: b"\x7f" * 8 + data[8:], "is truncated or not a safetensors file"),
], ids=["empty", "six-bytes", "inside-header", "inside-data", "huge-header-length"])
def test_truncated_safetensors(checkpoint, case, damage, needle):
    hf_dir = checkpoint()
    path = _shard_with_tensors(hf_dir)
    path.write_bytes(damage(path.read_bytes()))
    case.refused(case.convert(hf_dir), needle)


# 5. the output path, refused before any work ------------------------------------------------------------

def _broken(hf_dir):
    """A checkpoint whose config.json would be refused: an output error must be reported first."""
    (hf_dir / "config.json").write_text("[]")
    return hf_dir


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_output_that_is_a_directory(checkpoint, case, force):
    hf_dir = _broken(checkpoint())
    line = case.refused(case.convert(hf_dir, *(["--force"] if force else []), output=case.out.parent),
                        "is a directory; give the path of the file to write")
    assert list(case.out.parent.iterdir()) == []
    assert str(case.out.parent) in line


def test_library_refuses_a_directory_output_before_reading_the_checkpoint(checkpoint, tmp_path):
    from hybridinfer.convert import convert_checkpoint
    from hybridinfer.errors import HybridInferError
    with pytest.raises(HybridInferError, match="is a directory"):
        convert_checkpoint(_broken(checkpoint()), tmp_path, force=True)


def test_output_whose_parent_is_missing(checkpoint, case):
    line = case.refused(case.convert(_broken(checkpoint()), output=case.out.parent / "no" / "m.gguf"),
                        "does not exist")
    assert "output directory" in line


def test_output_whose_parent_is_a_file(checkpoint, case):
    plain = case.out.parent / "plain.txt"
    plain.write_text("x")
    case.refused(case.convert(_broken(checkpoint()), output=plain / "m.gguf"), "is not a directory")


def test_output_whose_parent_is_not_writable(checkpoint, case, monkeypatch):
    parent = str(case.out.parent)
    real_access = os.access

    def access(path, mode, **kwargs):  # as a non-root user sees a directory without write permission
        return False if str(path) == parent else real_access(path, mode, **kwargs)
    monkeypatch.setattr(os, "access", access)
    case.refused(case.convert(_broken(checkpoint())), "is not writable")


def test_temporary_file_that_cannot_be_created(checkpoint, case, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(atomic_file, "create_empty", refuse)
    case.refused(case.convert(checkpoint()), "cannot create a file in")


def test_output_that_is_a_file_of_the_checkpoint(checkpoint, case):
    hf_dir = checkpoint()
    case.refused(case.convert(hf_dir, "--force", output=hf_dir / "config.json"), "is a file of the checkpoint")


# 7. generate -m DIRECTORY ------------------------------------------------------------------------------

def test_generate_with_a_directory_as_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hybridinfer", "generate", "-m", str(tmp_path), "-p", "hi"],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Usage:" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is a directory" in lines[0], done.stderr
