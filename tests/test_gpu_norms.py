"""The GPU side's RMSNorm kernels (`gpu/norm_kernels.py`, under TRITON_INTERPRET=1 on the CPU) against their torch
twin (`gpu/norm_reference.py`): alone and after the residual add, widths that are and are not powers of two; the
split FFN's two-addend residual add."""

import os

import pytest
import torch

from hybridinfer.gpu import norm_reference

DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")


@pytest.mark.parametrize("tokens,width", [(1, 64), (3, 96), (1, 5120)])
def test_norm_kernels_equal_the_twin(tokens, width):
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    from hybridinfer.gpu import norm_kernels
    gen = torch.Generator().manual_seed(width)
    x, a, w = (torch.randn(*shape, generator=gen).to(DEVICE) for shape in ((tokens, width), (tokens, width), (width,)))
    expected = norm_reference.rms_norm(x, w, 1e-5)
    assert torch.allclose(norm_kernels.rms_norm(x, w, 1e-5), expected, rtol=1e-5, atol=1e-6)
    x_twin, normed_twin = norm_reference.add_rms_norm(x.clone(), a, 0.5, w, 1e-5)
    x_kernel, normed_kernel = norm_kernels.add_rms_norm(x.clone(), a, 0.5, w, 1e-5)
    assert torch.allclose(x_kernel, x_twin, rtol=1e-6, atol=1e-6)
    assert torch.allclose(normed_kernel, normed_twin, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(x_twin, x)  # the add happened, in place


@pytest.mark.parametrize("width", [64, 5120])
def test_two_addend_residual_kernel_equals_the_twin(width):
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    from hybridinfer.gpu import norm_kernels
    gen = torch.Generator().manual_seed(width + 1)
    x, a, b = (torch.randn(1, width, generator=gen).to(DEVICE) for _ in range(3))
    expected = norm_reference.add(x.clone(), a, 0.25, b)
    assert torch.allclose(norm_kernels.add(x.clone(), a, 0.25, b), expected, rtol=1e-6, atol=1e-6)
    assert torch.allclose(expected, x + 0.25 * (a + b))


@pytest.mark.parametrize("tokens,width,two", [(1, 64, False), (3, 96, True), (1, 5120, True)])
def test_post_norm_adds_equal_the_twin(tokens, width, two):
    """gemma3's post-block norms: the block's output (or the split FFN's two halves' sum) RMS-normed with its own
    weight before the residual add, alone and with the next block's norm."""
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    from hybridinfer.gpu import norm_kernels
    gen = torch.Generator().manual_seed(width + 7)
    x, a, b = (torch.randn(tokens, width, generator=gen).to(DEVICE) for _ in range(3))
    w, post = ((1 + 0.3 * torch.randn(width, generator=gen)).to(DEVICE) for _ in range(2))
    b = b if two else None
    expected = norm_reference.add(x.clone(), a, 0.5, b, post, 1e-6)
    plain = a if b is None else a + b
    assert torch.allclose(expected, x + 0.5 * plain * torch.rsqrt(plain.pow(2).mean(-1, keepdim=True) + 1e-6) * post,
                          rtol=1e-5, atol=1e-5)
    assert torch.allclose(norm_kernels.add(x.clone(), a, 0.5, b, post, 1e-6), expected, rtol=1e-5, atol=1e-5)
    x_twin, normed_twin = norm_reference.add_rms_norm(x.clone(), a, 0.5, w, 1e-6, post)
    x_kernel, normed_kernel = norm_kernels.add_rms_norm(x.clone(), a, 0.5, w, 1e-6, post)
    assert torch.allclose(x_kernel, x_twin, rtol=1e-5, atol=1e-5)
    assert torch.allclose(normed_kernel, normed_twin, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(x_twin, norm_reference.add_rms_norm(x.clone(), a, 0.5, w, 1e-6)[0])  # post applied
