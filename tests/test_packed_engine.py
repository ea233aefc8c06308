"""The packed backend (numba kernels over the file's formats) against the reference backend (torch float32):
dense, --exact and --predictors, every weight format, decode and prefill, KV-cache consistency."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

import hybridinfer
from hybridinfer.model_file.weight_formats import FORMATS
from hybridinfer.runtime.build import Choices, build_decoder
from hybridinfer.model_file.dequantize import dequantize
from hybridinfer.model_file.gguf_file import GGUFTensor
from hybridinfer.runtime.weights import as_q8_0, transpose
from hybridinfer.predictors.file import save_predictors
from hybridinfer.predictors.model import PredictorSet
from logit_checks import F32_CACHE, decode_logits, relative_error
from tiny_models import quantize, random_weights, write_tiny_gguf

IDS = [1, 100, 200, 17, 270, 5, 66, 9]
N_FF = 256


@pytest.fixture(scope="module")
def q4_1_silu_model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "silu.gguf", random_weights(seed=3), weight_type=T.Q4_1)


def test_dense_with_float_activations_equals_reference(relu_model_each_format):
    expected = hybridinfer.load(str(relu_model_each_format), backend="reference").logits(IDS)
    packed = hybridinfer.load(str(relu_model_each_format), float_activations=True, **F32_CACHE)
    assert relative_error(packed.logits(IDS), expected) < 1e-4
    assert relative_error(decode_logits(packed, IDS), expected) < 1e-4


def test_greedy_tokens_equal_the_float32_decode(relu_model_each_format):
    """The file's weights read as stored give the tokens of the same weights decoded to float32 (the reference)."""
    expected = hybridinfer.load(str(relu_model_each_format), backend="reference").generate(IDS, max_tokens=8,
                                                                                          temperature=0)
    packed = hybridinfer.load(str(relu_model_each_format), float_activations=True)
    assert packed.generate(IDS, max_tokens=8, temperature=0).tokens == expected.tokens


def test_dense_int8_activations_close_to_reference(relu_model_each_format, q4_1_silu_model):
    for path in (relu_model_each_format, q4_1_silu_model):
        expected = hybridinfer.load(str(path), backend="reference").logits(IDS)
        packed = hybridinfer.load(str(path))
        assert relative_error(packed.logits(IDS), expected) < 0.1
        assert relative_error(decode_logits(packed, IDS), packed.logits(IDS)) < 1e-4  # cache == batch


# The sparse FFN reads down_t, which a quantized file gets by re-quantizing the transposed down projection at
# load: one more rounding than the dense path (tiny random models amplify it; float formats transpose exactly).
REQUANTIZED = {T.Q8_0: 2e-2, T.Q4_0: 0.3, T.Q4_1: 0.3, T.Q5_0: 0.15, T.Q5_1: 0.15,
               T.Q4_K: 0.3, T.Q5_K: 0.15, T.Q6_K: 2e-2}  # K-quants: their transposes are Q4_1, Q5_1, Q8_0


def sparse_tolerance(path) -> float:
    return REQUANTIZED.get(hybridinfer.load(str(path)).model.weights.layers[0].source_down.type, 1e-4)


def test_exact_sparse_equals_dense(relu_model_each_format):
    dense = hybridinfer.load(str(relu_model_each_format), float_activations=True).logits(IDS)
    exact = hybridinfer.load(str(relu_model_each_format), exact=True, float_activations=True)
    decoded = decode_logits(exact, IDS)
    assert relative_error(decoded, dense) < sparse_tolerance(relu_model_each_format)
    assert relative_error(exact.logits(IDS), decoded) < 1e-5  # prefill and decode read the same rows
    stats = exact.sparse_ffn.stats
    assert 0 < stats.active < stats.rows  # really sparse: some neurons were skipped


def random_predictors(engine, rank=32, seed=0, threshold=3.0) -> PredictorSet:
    """A random predictor per layer; logits spread ~30, so threshold 3 marks about half the neurons, 20 a
    quarter or less (fc1 scaled to the 64-wide model's spread: the K-quants' model is 256 wide)."""
    g = torch.Generator().manual_seed(seed)
    c = engine.config
    fc1 = [torch.randn(rank, c.n_embd, generator=g) * (64 / c.n_embd) ** 0.5 for _ in range(c.n_layer)]
    fc2 = [torch.randn(c.n_ff, rank, generator=g) for _ in range(c.n_layer)]
    return PredictorSet(fc1, fc2, [threshold] * c.n_layer)


# threshold 20: few candidates, whose gate rows are gathered; 3: many, taken from the dense gate kernel
@pytest.mark.parametrize("threshold", [20.0, 3.0])
def test_predicted_sparse_equals_reference_predicted(relu_model_each_format, tmp_path, threshold):
    reference = hybridinfer.load(str(relu_model_each_format), backend="reference")
    path = tmp_path / "p.pred.gguf"
    save_predictors(str(path), random_predictors(reference, threshold=threshold), reference.fingerprint)
    reference = hybridinfer.load(str(relu_model_each_format), backend="reference", predictors=str(path))
    expected = decode_logits(reference, IDS)
    packed = hybridinfer.load(str(relu_model_each_format), float_activations=True, **F32_CACHE)
    predictors = reference.sparse_ffn.predictors
    choices = Choices(predictors=predictors, float_activations=True, predictor_type=T.F32,  # float32 predictors
                      cache_types=packed.cache_types)
    packed.model = build_decoder(packed.file, packed.config, packed.n_ctx, choices)
    decoded = decode_logits(packed, IDS)
    assert relative_error(decoded, expected) < sparse_tolerance(relu_model_each_format)
    assert relative_error(packed.logits(IDS), decoded) < 1e-5
    dense = hybridinfer.load(str(relu_model_each_format), backend="reference").logits(IDS)
    assert relative_error(expected, dense) > 1e-3  # the predictor really changed the result
    stats = packed.sparse_ffn.stats
    assert 0 < stats.active <= stats.rows <= stats.tokens * N_FF
    if threshold > 10:
        assert stats.rows < stats.tokens * N_FF * 0.4  # gathered: fewer gate rows read than the dense kernel's


def test_predictors_load_through_the_engine_as_q8_0(relu_model_each_format, tmp_path):
    reference = hybridinfer.load(str(relu_model_each_format), backend="reference")
    path = tmp_path / "p.pred.gguf"
    save_predictors(str(path), random_predictors(reference, seed=1), reference.fingerprint)
    engine = hybridinfer.load(str(relu_model_each_format), predictors=str(path))
    ffn = engine.sparse_ffn
    assert [m.qtype for m in ffn.fc1] == [T.Q8_0] * engine.config.n_layer
    out = engine.generate(IDS, max_tokens=4, temperature=0)
    assert len(out.tokens) == 4 and ffn.stats.tokens > 0


def test_transposed_down_projection_matches(relu_model_each_format):
    engine = hybridinfer.load(str(relu_model_each_format))
    layer = engine.model.weights.layers[0]
    down = layer.ffn_down().dequantize_rows(np.arange(layer.ffn_down().rows))
    down_t = transpose(layer.source_down)
    transposed_type = FORMATS[layer.source_down.type].transpose_type  # a K-quant's: its 32-block neighbour
    assert down_t.qtype == transposed_type and (down_t.rows, down_t.cols) == (N_FF, down.shape[0])
    step = {T.Q4_0: 0.2, T.Q4_1: 0.2, T.Q5_0: 0.1, T.Q5_1: 0.1, T.Q8_0: 0.02}.get(transposed_type, 0.0)  # a rounding
    assert np.abs(down_t.dequantize_rows(np.arange(N_FF)) - down.T).max() <= step * np.abs(down).max() + 1e-7


def test_sparse_modes_refuse_silu_models_on_both_backends(q4_1_silu_model):
    for backend in ("packed", "reference"):
        with pytest.raises(hybridinfer.HybridInferError, match="SiLU"):
            hybridinfer.load(str(q4_1_silu_model), exact=True, backend=backend)


def test_unknown_backend_and_hybrid_on_reference_are_refused(relu_model_each_format):
    with pytest.raises(hybridinfer.HybridInferError, match="unknown backend"):
        hybridinfer.load(str(relu_model_each_format), backend="gpu")
    with pytest.raises(hybridinfer.HybridInferError, match="packed backend"):
        hybridinfer.load(str(relu_model_each_format), backend="reference", vram_budget="1GiB")


def test_a_k_quant_down_projection_stored_transposed(tmp_path):
    """A PowerInfer-style file holds ffn_down_t: a K-quant's is re-quantized (not transposed) for S3, and the dense
    down projection is its transpose, both in the K-quant's transpose_type."""
    weights = random_weights(seed=41, n_embd=256, n_ff=N_FF, gate_bias=-8.0)
    path = write_tiny_gguf(tmp_path / "k.gguf", weights, weight_type=T.Q4_K, activation="fatrelu", threshold=0.05,
                           powerinfer=True)
    expected = hybridinfer.load(str(path), backend="reference").logits(IDS)
    dense = hybridinfer.load(str(path), float_activations=True)
    assert relative_error(dense.logits(IDS), expected) < REQUANTIZED[T.Q4_K]
    exact = hybridinfer.load(str(path), exact=True, float_activations=True)
    assert relative_error(decode_logits(exact, IDS), expected) < REQUANTIZED[T.Q4_K]
    layer = exact.model.weights.layers[0]
    assert layer.ffn_down_t().qtype == layer.ffn_down().qtype == T.Q4_1


def test_q_k_v_of_different_formats_are_read_as_one_q8_0_matrix(tmp_path):
    """A K-quant mix gives attn_v more bits than attn_q / attn_k: the three are read as one Q8_0 matrix (attn_v's
    bytes as stored, the others re-encoded), not decoded to float32, and the logits stay the reference's."""
    path = write_tiny_gguf(tmp_path / "mix.gguf", random_weights(seed=43), weight_type=T.Q4_0,
                           types={"attn_v.weight": T.Q8_0})
    expected = hybridinfer.load(str(path), backend="reference").logits(IDS)
    packed = hybridinfer.load(str(path), float_activations=True, **F32_CACHE)
    assert packed.model.weights.layers[0].attn_qkv.qtype == T.Q8_0
    assert relative_error(packed.logits(IDS), expected) < 1e-4  # Q4_0 blocks are Q8_0 blocks exactly


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q5_0, T.Q4_1, T.Q4_K], ids=lambda t: t.name)
def test_weights_as_q8_0_blocks(qtype):
    """Q4_0 / Q5_0 blocks become Q8_0 blocks exactly (their scale, their centred quants); formats with minimums or
    super-blocks are re-encoded within Q8_0's rounding."""
    values = np.random.default_rng(44).standard_normal((8, 512)).astype(np.float32)
    tensor = GGUFTensor("w", qtype, values.shape, quantize(values, qtype))
    stored = dequantize(tensor)
    as_q8 = quants.dequantize(as_q8_0(tensor), T.Q8_0).reshape(values.shape)
    if qtype in (T.Q4_0, T.Q5_0):
        assert np.array_equal(as_q8, stored)
    else:
        amax = np.abs(stored).reshape(-1, 32).max(axis=1, keepdims=True)  # half a step, and Q8_0's f16 scale
        assert np.all(np.abs(as_q8 - stored).reshape(-1, 32) <= amax * (1 / 254 + 1 / 2048))
        assert not np.array_equal(as_q8, stored)
