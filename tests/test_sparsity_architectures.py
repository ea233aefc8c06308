"""CATS, TEAL and WINA on the architectures beyond LLaMA's shape (qwen2's Q/K/V biases, qwen3's head norms,
gemma3's GELU-tanh gate, post-attention and post-FFN norms and scaled embeddings, Llama 3's rope_freqs; tiny files
of `tiny_architectures.py`): the packed backend's sparse decode (one token: the column-sparse and gathered
blocks) and prompt against the reference backend's, and what the decode zeroes against the thresholds."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.sparsity.calibrate import measure_sparsity
from hybridinfer.sparsity.thresholds import METHODS, load_thresholds
from logit_checks import F32_CACHE, IDS, decode_logits, relative_error, write_sparsity_file
from tiny_architectures import ARCHITECTURES, write_arch_gguf

LONG_IDS = IDS + [7, 8, 150, 33, 12, 90]  # 16 tokens: past gemma3's tiny window of 4
TARGET = 0.4


@pytest.fixture(scope="module")
def sparsity_files(tmp_path_factory):
    """{(arch, method): (model, sparsity file)} for every architecture and method, calibrated on the packed
    backend."""
    folder = tmp_path_factory.mktemp("sparse-archs")
    found = {}
    for arch in ARCHITECTURES:
        model = write_arch_gguf(folder / f"{arch}.gguf", arch, T.F32)
        for method in METHODS:
            found[arch, method] = model, write_sparsity_file(model, folder / f"{arch}.{method}.sparsity.gguf",
                                                             TARGET, method)
    return found


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", METHODS)
def test_sparse_decode_and_prompt_equal_the_reference_twin(sparsity_files, arch, method):
    model, sparsity = (str(p) for p in sparsity_files[arch, method])
    reference = hybridinfer.load(model, n_ctx=64, backend="reference", sparsity_file=sparsity)
    expected = decode_logits(reference, LONG_IDS)
    packed = hybridinfer.load(model, n_ctx=64, float_activations=True, sparsity_file=sparsity, **F32_CACHE)
    assert relative_error(decode_logits(packed, LONG_IDS), expected) < 1e-4
    n_ff = packed.config.n_ff
    assert packed.sparse_ffn.stats.sparsity(n_ff) == pytest.approx(reference.sparse_ffn.stats.sparsity(n_ff), abs=0.01)
    assert relative_error(packed.logits(LONG_IDS), expected) < 1e-4
    dense = hybridinfer.load(model, n_ctx=64, backend="reference").logits(LONG_IDS)
    assert relative_error(expected, dense) > 1e-3  # the thresholds really changed the result


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", ["teal", "wina"])
def test_the_decode_zeroes_each_sites_entries_below_its_threshold(sparsity_files, arch, method):
    """Per site, the share of entries the packed one-token decode zeroed equals the share of the sparsified
    model's values over the same tokens that its thresholds put below them (the reference backend's count)."""
    model, sparsity = (str(p) for p in sparsity_files[arch, method])
    packed = hybridinfer.load(model, n_ctx=64, float_activations=True, sparsity_file=sparsity, **F32_CACHE)
    decode_logits(packed, LONG_IDS)
    thresholds = load_thresholds(sparsity)
    measured = measure_sparsity(hybridinfer.load(model, n_ctx=64, backend="reference"), [LONG_IDS], thresholds)
    assert np.allclose(packed.sparse_ffn.stats.site_sparsity(), measured.mean(axis=0), atol=0.01)
    assert np.all(measured.mean(axis=0) > 0.1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cats_decode_drops_the_neurons_whose_activation_is_below_the_threshold(sparsity_files, arch):
    """The packed CATS decode's active neurons are those whose |act(gate)| (GELU-tanh for gemma3), observed in the
    model it sparsifies, passes their layer's threshold."""
    model, sparsity = (str(p) for p in sparsity_files[arch, "cats"])
    packed = hybridinfer.load(model, n_ctx=64, float_activations=True, sparsity_file=sparsity, **F32_CACHE)
    thresholds = load_thresholds(sparsity).thresholds[:, 0]
    passing = []
    packed.model.observers.append(
        lambda index, residual, activation: passing.append(int((activation.abs() >= thresholds[index]).sum())))
    decode_logits(packed, LONG_IDS)
    stats = packed.sparse_ffn.stats
    assert stats.all_active == sum(passing) and 0.2 < stats.sparsity(packed.config.n_ff) < 0.6
