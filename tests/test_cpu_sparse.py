"""The numba sparse FFN kernels against their numpy reference twins, on fresh random inputs."""

import numpy as np
import pytest

from hybridinfer.kernels import cpu_sparse, reference


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


def random_ffn(rng, n_ff=384, d=96):
    gate = rng.standard_normal((n_ff, d), dtype=np.float32)
    up = rng.standard_normal((n_ff, d), dtype=np.float32)
    down_t = rng.standard_normal((n_ff, d), dtype=np.float32)
    x = rng.standard_normal(d, dtype=np.float32)
    return gate, up, down_t, x


def test_gather_matvec(rng):
    gate, _, _, x = random_ffn(rng)
    rows = np.sort(rng.choice(gate.shape[0], 57, replace=False)).astype(np.int64)
    out = np.empty(rows.shape[0], dtype=np.float32)
    cpu_sparse.gather_matvec(gate, x, rows, out)
    np.testing.assert_allclose(out, reference.gather_matvec(gate, x, rows), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d", [96, 100, 7])
def test_s3_down(rng, d):
    _, _, down_t, _ = random_ffn(rng, d=d)
    rows = rng.choice(down_t.shape[0], 40, replace=False).astype(np.int64)
    hidden = rng.standard_normal(40, dtype=np.float32)
    hidden[::5] = 0.0
    out = np.full(d, np.nan, dtype=np.float32)
    cpu_sparse.s3_down(down_t, rows, hidden, out)
    np.testing.assert_allclose(out, reference.sparse_down(down_t, rows, hidden), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threshold", [0.0, 0.7])
@pytest.mark.parametrize("fraction", [1.0, 0.3, 0.0])
def test_sparse_ffn(rng, threshold, fraction):
    gate, up, down_t, x = random_ffn(rng)
    rows = np.sort(rng.choice(gate.shape[0], int(fraction * gate.shape[0]), replace=False)).astype(np.int64)
    out = np.empty(x.shape[0], dtype=np.float32)
    active = cpu_sparse.sparse_ffn(gate, up, down_t, x, rows, threshold, out)
    expected = reference.sparse_ffn(gate, up, down_t, x, rows, threshold)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)
    assert active == int((gate[rows] @ x >= threshold).sum())


def test_fatrelu_keeps_the_threshold_itself():
    values = np.array([0.5, 0.49999, 0.50001, -1.0], dtype=np.float32)
    assert reference.fatrelu(values, 0.5).tolist() == pytest.approx([0.5, 0.0, 0.50001, 0.0])
