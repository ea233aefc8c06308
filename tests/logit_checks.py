"""What the engine tests share: the comparisons of logits, and the CATS and TEAL tests' token ids, calibration
chunks and sparsity files (their tiny SiLU model and word texts are fixtures in conftest.py)."""

import numpy as np

IDS = [1, 100, 200, 17, 260, 5, 66, 9, 31, 140]
N_FF = 256
# the float32 KV cache, for comparisons with the float32 reference (or the GPU stand-in's float32 cache) at 1e-4 and
# below: the default f16 cache moves a tiny model's logits by ~5e-3 of their largest (tests/test_kv_cache.py)
F32_CACHE = dict(type_k="f32", type_v="f32")


def relative_error(a, b):
    """max |a - b| over max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def decode_logits(engine, ids):
    """The logits of each prefix of `ids`, decoded one token at a time."""
    engine.reset()
    return np.stack([engine.feed(ids[: i + 1])[0] for i in range(len(ids))])


def calibration_chunks(seed=0, n=6, length=40):
    rng = np.random.default_rng(seed)
    return [[1] + rng.integers(3, 270, length - 1).tolist() for _ in range(n)]


def write_sparsity_file(model, path, target, method):
    """`path`: the sparsity file of `method` at `target` for the GGUF `model`, calibrated on `calibration_chunks()`."""
    import hybridinfer
    from hybridinfer.sparsity.calibrate import calibrate_thresholds
    from hybridinfer.sparsity.thresholds import save_thresholds
    engine = hybridinfer.load(str(model), n_ctx=64)
    save_thresholds(calibrate_thresholds(engine, calibration_chunks(), target, method), path)
    return path


def assert_refused_by_another_model(sparsity_file, tmp_path):
    """A tiny model of the same shape but other weights refuses `sparsity_file` (its fingerprint) in one line."""
    import pytest

    import hybridinfer
    from tiny_models import random_weights, write_tiny_gguf
    other = write_tiny_gguf(tmp_path / "other.gguf", random_weights(seed=6, n_ff=N_FF))
    with pytest.raises(hybridinfer.HybridInferError, match="another model"):
        hybridinfer.load(str(other), sparsity_file=str(sparsity_file))


def sparsify_beside_the_model(silu_model, texts, tmp_path, method):
    """`sparsify --method METHOD --sparsity 0.4 --json` on a copy of `silu_model` in tmp_path, the file written
    beside it: (the copy's path, the command's JSON summary)."""
    import json

    from click.testing import CliRunner

    from hybridinfer.cli.main import cli
    calibration, held_out = texts
    model = tmp_path / "model.gguf"
    model.write_bytes(silu_model.read_bytes())
    result = CliRunner().invoke(cli, ["sparsify", "-m", str(model), "--method", method, "--corpus", str(calibration),
                                      "--tokens", "600", "--chunk", "64", "--held-out", str(held_out),
                                      "--held-out-tokens", "300", "--sparsity", "0.4", "--json"])
    assert result.exit_code == 0, result.output
    return model, json.loads(result.stdout)
