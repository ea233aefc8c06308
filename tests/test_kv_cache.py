"""The CPU KV cache's storage types (`runtime/kv_types.py`, `kernels/kv_rows.py`): rows written as the reference
twin encodes them, attention over each type against float32 attention, pages resident only as positions are used,
the memory estimate's bytes, and -ctk/-ctv through the API and the command line."""

import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from numba import njit

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.errors import ArgumentTypeError, HybridInferError
from hybridinfer.kernels import cpu_layer, cpu_ops, reference, threads
from hybridinfer.kernels.kv_rows import store_row
from hybridinfer.kernels.simd_half import half_bits
from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.runtime.kv_types import KV_TYPES
from hybridinfer.runtime.memory_estimate import estimate
from hybridinfer.runtime.run_state import KVCaches, RunState
from kv_states import NO_EXTRAS, kv_state
from logit_checks import relative_error
from tiny_models import random_weights, write_tiny_gguf

IDS = [1, 100, 200, 17, 260, 5, 66, 9, 31, 140]
# attention's error over float32 attention, relative to its largest output: half precision's 2^-11 per value;
# Q8_0's 1/254 of each block's largest value per value
TOLERANCE = {"f32": 1e-5, "f16": 5e-3, "q8_0": 5e-2}


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))  # the same every run


@pytest.fixture(scope="module")
def head_dim_32_model(tmp_path_factory):
    """A tiny model whose heads have 32 values (Q8_0's block), F32 weights."""
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "hd32.gguf", random_weights(seed=11, n_embd=128))


@njit
def store_rows(values, rows, scales):
    """kv_rows.store_row over (n, head_dim) values."""
    for i in range(values.shape[0]):
        store_row(values[i], rows[i], scales[i])


@njit
def half_bits_of(values, out):
    for i in range(values.shape[0]):
        out[i] = half_bits(values[i])


def test_half_bits_round_as_numpy(rng):
    """float32 -> float16 bits in integer arithmetic: numpy's rounding for random bit patterns (every exponent:
    subnormal halves, overflow to infinity) and the edges."""
    values = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = [0, -0.0, 65504, 65519.99, 65520, -65520, 2**-24, 2**-25, 2**-25 * 1.0001, 2**-14, np.inf, -np.inf, 2049]
    values = np.concatenate([values[~np.isnan(values)], np.array(edges, np.float32)])
    out = np.empty(values.shape, np.int16)
    half_bits_of(values, out)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, values.astype(np.float16).view(np.int16))


@pytest.mark.parametrize("name", list(KV_TYPES))
def test_rows_are_stored_as_the_reference_encodes_them(rng, name):
    values = rng.standard_normal((50, 64), dtype=np.float32) * rng.uniform(0.01, 30, (50, 1)).astype(np.float32)
    values[3, 32:] = 0  # a block of zeros: Q8_0's scale 0
    values[4, :4] = [0.5, -1.5, 2.5, 127 / 254]  # halves: roundf takes them away from zero
    rows, scales = KV_TYPES[name].new(values.shape)
    store_rows(values, rows, scales)
    expected_rows, expected_scales = reference.kv_encode(values, name)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scales, expected_scales)


@pytest.mark.parametrize("type_k,type_v", [("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "f16"), ("f32", "q8_0")])
def test_attention_over_each_cache_type_matches_float32_attention(rng, type_k, type_v):
    """The kernel reads the stored rows in place: the reference over the decoded cache (exactly), and float32
    attention over the original keys and values within the types' precision."""
    n_seq, n_head, n_kv, head_dim, n_ctx = 3, 6, 2, 64, 40
    q = rng.standard_normal((4, n_head, head_dim), dtype=np.float32)
    keys = rng.standard_normal((n_seq, n_kv, n_ctx, head_dim), dtype=np.float32) * 2
    values = rng.standard_normal((n_seq, n_kv, n_ctx, head_dim), dtype=np.float32)
    positions, sequences = np.array([5, 39, 17, 0]), np.array([1, 0, 2, 1])
    kv = kv_state(keys, values, positions, sequences, n_head, type_k, type_v)
    out = np.empty_like(q)
    cpu_ops.attention(q, kv, out)
    decoded = reference.attention(q, reference.kv_decode(kv.k_cache, kv.k_scales),
                                  reference.kv_decode(kv.v_cache, kv.v_scales), positions, sequences)
    np.testing.assert_allclose(out, decoded, rtol=1e-4, atol=1e-5)
    exact = reference.attention(q, keys, values, positions, sequences)
    error = relative_error(out, exact)
    assert error < max(TOLERANCE[type_k], TOLERANCE[type_v])
    assert error > 0  # the type really rounded


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


@pytest.mark.parametrize("name", list(KV_TYPES))
def test_cache_pages_become_resident_only_as_positions_are_used(name):
    """SmolLM2's shape at -c 4096 (48 to 180 MiB of cache): nothing resident when made, a 4 KiB page per layer and
    KV head (of values and of scales) once 8 positions are written (as 2 MiB huge pages, all of it); filling it
    costs it all."""
    c = ModelConfig("llama", 256, 576, 30, 9, 3, 96, 64, 64, 10000.0, 1e-5, 4096, "silu", 0.0, False)
    types = (KV_TYPES[name],) * 2
    rope = [(np.ones((8, 32), np.float32), np.zeros((8, 32), np.float32))] * c.n_layer
    tokens = 8
    qkv = np.random.default_rng(0).standard_normal((tokens, (9 + 2 * 3) * 64), dtype=np.float32)

    def write(caches):
        s = RunState(c, tokens, 1, caches)
        s.positions[:], s.sequences[:] = np.arange(tokens), 0
        for layer in range(c.n_layer):
            cpu_layer.attend(qkv, s.q, s.k, s.v, s.kv[layer], NO_EXTRAS, s.attended.x)

    threads.start()  # as a model load does, before the serial block `attend` runs its parallel kernel
    write(KVCaches(c, 1, 8, rope, types))  # compiled before anything is measured
    before = _resident_bytes()
    caches = KVCaches(c, 1, 4096, rope, types)
    made = _resident_bytes()
    write(caches)
    written = _resident_bytes()
    total = caches.k.nbytes + caches.v.nbytes + caches.k_scales.nbytes + caches.v_scales.nbytes
    assert total >= 45 * 2**20
    assert made - before < 2**20
    assert written - made < 4 * 2**20  # 180 (values) + 180 (Q8_0's scales) pages of 4 KiB, and the run state's
    caches.k.fill(0)  # the measure sees a touched cache
    assert _resident_bytes() - written > 0.9 * caches.k.nbytes


def test_memory_estimate_counts_each_types_bytes(head_dim_32_model):
    file = GGUFFile(head_dim_32_model)
    config = ModelConfig.from_gguf(file)
    values = config.n_layer * config.n_head_kv * config.head_dim * 1000  # per cache (K or V) of 1000 positions

    def kv_cache(type_k, type_v):
        return estimate(file, config, 1000, 64, False, cache_types=(KV_TYPES[type_k], KV_TYPES[type_v])).kv_cache

    assert kv_cache("f32", "f32") == 2 * 4 * values
    assert kv_cache("f16", "f16") == 2 * 2 * values
    assert kv_cache("q8_0", "q8_0") == 2 * values * 34 // 32
    assert kv_cache("f32", "q8_0") == 4 * values + values * 34 // 32
    assert estimate(file, config, 1000, 64, False).kv_cache == kv_cache("f16", "f16")  # the default


def test_the_default_cache_is_float16_and_f32_stays_float32(head_dim_32_model):
    engine = hybridinfer.load(str(head_dim_32_model), n_ctx=32)
    assert [t.name for t in engine.cache_types] == ["f16", "f16"]
    assert engine.model.caches.k.dtype == np.int16 and engine.model.caches.v.dtype == np.int16
    engine = hybridinfer.load(str(head_dim_32_model), n_ctx=32, type_k="f32", type_v="q8_0")
    assert engine.model.caches.k.dtype == np.float32 and engine.model.caches.v.dtype == np.int8
    assert engine.model.caches.v_scales.shape[-1] == engine.config.head_dim // 32
    engine.hold_sequences(2)  # the types stay when the caches are made again
    assert engine.model.caches.v.dtype == np.int8 and engine.model.caches.k.shape[1] == 2


@pytest.mark.parametrize("type_k,type_v", [("f16", "f16"), ("q8_0", "q8_0")])
def test_logits_over_each_cache_type_stay_close_to_the_float32_reference(head_dim_32_model, type_k, type_v):
    """Prefill and token-by-token decoding (each position's attention then reads the stored rows of the ones
    before) against the reference backend's float32 cache, float32 activations."""
    expected = hybridinfer.load(str(head_dim_32_model), backend="reference").logits(IDS)
    engine = hybridinfer.load(str(head_dim_32_model), float_activations=True, type_k=type_k, type_v=type_v)
    f32 = hybridinfer.load(str(head_dim_32_model), float_activations=True, type_k="f32", type_v="f32")
    assert relative_error(f32.logits(IDS), expected) < 1e-4
    engine.reset()
    decoded = np.stack([engine.feed(IDS[:i + 1])[0] for i in range(len(IDS))])
    assert relative_error(decoded, expected) < {"f16": 5e-3, "q8_0": 5e-2}[type_k]
    assert relative_error(decoded, expected) > 0


def greedy_tokens(path, type_name, prompt, n, float_activations=False):
    engine = hybridinfer.load(str(path), n_ctx=256, type_k=type_name, type_v=type_name,
                              float_activations=float_activations)
    return engine.generate(prompt, max_tokens=n, temperature=0).tokens


def test_greedy_generation_on_float16_matches_float32(head_dim_32_model):
    assert greedy_tokens(head_dim_32_model, "f16", IDS[:3], 24) == greedy_tokens(head_dim_32_model, "f32", IDS[:3], 24)


def test_smollm2_on_float16_generates_as_on_float32(smollm_path):
    """With float32 activations, the same 48 greedy tokens. With llama.cpp's int8 activation blocks (the default),
    whose own rounding moves SmolLM2's logits by ~4% of their largest from the float32 reference, and which a
    near tie then turns into another token sooner or later: f16's logits are no further from the reference."""
    prompt = "The three primary colors are"
    assert greedy_tokens(smollm_path, "f16", prompt, 48, True) == greedy_tokens(smollm_path, "f32", prompt, 48, True)
    reference_engine = hybridinfer.load(str(smollm_path), n_ctx=64, backend="reference")
    ids = reference_engine.tokenize(prompt + " red, green and blue; printers use cyan, magenta and yellow.")
    expected = reference_engine.logits(ids)
    error = {name: relative_error(hybridinfer.load(str(smollm_path), n_ctx=64, type_k=name, type_v=name).logits(ids),
                                  expected) for name in ("f32", "f16")}
    assert error["f16"] < 1.25 * error["f32"], error


def test_bad_cache_types_are_refused_by_the_api(head_dim_32_model, relu_model):
    with pytest.raises(HybridInferError, match="unknown KV cache type 'q4_0' for -ctk/--cache-type-k"):
        hybridinfer.load(str(head_dim_32_model), type_k="q4_0")
    with pytest.raises(ArgumentTypeError, match="type_v must be a string"):
        hybridinfer.load(str(head_dim_32_model), type_v=8)
    with pytest.raises(HybridInferError, match="blocks of 32 values, but this model's heads have 16"):
        hybridinfer.load(str(relu_model), type_v="q8_0")
    with pytest.raises(HybridInferError, match="reference backend"):
        hybridinfer.load(str(head_dim_32_model), backend="reference", type_k="f16")


@pytest.mark.parametrize("flags,message", [
    (["-ctk", "q4_0"], "error: unknown KV cache type 'q4_0' for -ctk/--cache-type-k; choose one of f32, f16, q8_0"),
    (["--cache-type-v", "F16"], "error: unknown KV cache type 'F16' for -ctv/--cache-type-v"),
])
def test_bad_cache_type_flags_are_one_line_errors(head_dim_32_model, flags, message):
    result = CliRunner().invoke(cli, ["generate", "-m", str(head_dim_32_model), "-p", "hi", "-n", "1", *flags])
    assert result.exit_code == 1 and result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_cache_type_flags_run(head_dim_32_model):
    for flags in (["-ctk", "q8_0", "-ctv", "q8_0"], ["--cache-type-k", "f32", "--cache-type-v", "f16"]):
        result = CliRunner().invoke(cli, ["generate", "-m", str(head_dim_32_model), "-p", "hi", "-n", "3",
                                          "--temp", "0", "-c", "32", *flags])
        assert result.exit_code == 0, result.output
