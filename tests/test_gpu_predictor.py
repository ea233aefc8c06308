"""The predictor's threshold kernel (`gpu/predictor_kernels.py`, under TRITON_INTERPRET=1 on the CPU) against its
torch twin (`gpu/predictor_reference.py`): every neuron's mask and the hot neurons' gathered, including none hot."""

import os

import pytest
import torch

from hybridinfer.gpu import predictor_reference

DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")


@pytest.mark.parametrize("n_ff,n_hot", [(192, 40), (3000, 1500), (64, 0)])
def test_masks_kernel_equals_the_twin(n_ff, n_hot):
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    from hybridinfer.gpu import predictor_kernels
    gen = torch.Generator().manual_seed(n_ff + n_hot)
    scores = torch.randn(1, n_ff, generator=gen).to(DEVICE)
    hot_index = torch.sort(torch.randperm(n_ff, generator=gen)[:n_hot]).values.to(DEVICE)
    mask, hot_mask = predictor_kernels.masks(scores, 0.3, hot_index)
    expected_mask, expected_hot = predictor_reference.masks(scores, 0.3, hot_index)
    assert torch.equal(mask, expected_mask) and torch.equal(hot_mask, expected_hot)
    assert 0 < int(mask.sum()) < n_ff
