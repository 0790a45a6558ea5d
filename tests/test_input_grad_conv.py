"""InputGradConv2d: the same function, gradients and second derivatives as nn.Conv2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_cli.models.input_grad_conv import InputGradConv2d


def pair(padding, bias=True, out=3, k=5):
    torch.manual_seed(0)
    ref = nn.Conv2d(1, out, k, padding=padding, bias=bias).double()
    fast = InputGradConv2d(1, out, k, padding=padding, bias=bias).double()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("padding", [0, 2, 4, (1, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_equal_nn_conv2d(padding, bias):
    ref, fast = pair(padding, bias)
    assert fast._fast_path(torch.zeros(1, 1, 9, 9, dtype=torch.double).requires_grad_())
    x = torch.rand(4, 1, 9, 11, dtype=torch.double, requires_grad=True)
    y_ref, y_fast = ref(x), fast(x)
    torch.testing.assert_close(y_fast, y_ref)
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    grads_fast = torch.autograd.grad(y_fast, [x, *fast.parameters()], g)
    for a, b in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_and_double_backward():
    _, fast = pair((2, 1), out=2, k=3)
    x = torch.rand(2, 1, 5, 6, dtype=torch.double, requires_grad=True)
    params = list(fast.parameters())
    assert torch.autograd.gradcheck(lambda x, w, b: InputGradConv2d.forward(fast, x), (x, *params))
    assert torch.autograd.gradgradcheck(lambda x, w, b: InputGradConv2d.forward(fast, x), (x, *params))


def test_input_gradient_penalty_gradient_equals_nn_conv2d():
    """The lip/tulip shape: d/dW of ||d(loss)/dx||^2 by double backprop, through a nonlinearity."""
    ref, fast = pair(2)
    x = torch.rand(3, 1, 8, 8, dtype=torch.double)

    def penalty_grad(conv):
        xr = x.clone().requires_grad_(True)
        loss = torch.tanh(conv(xr)).pow(3).sum()
        (gx,) = torch.autograd.grad(loss, xr, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), list(conv.parameters()))

    for a, b in zip(penalty_grad(fast), penalty_grad(ref), strict=True):
        torch.testing.assert_close(a, b)


def test_plain_conv_where_the_fast_path_does_not_apply():
    x = torch.rand(2, 1, 8, 8)
    assert not InputGradConv2d(1, 2, 3, stride=2)._fast_path(x.requires_grad_())
    assert not InputGradConv2d(3, 2, 3)._fast_path(torch.rand(2, 3, 8, 8))
    assert not InputGradConv2d(1, 2, 3, padding="same")._fast_path(x)
    with torch.no_grad():
        assert not InputGradConv2d(1, 2, 3)._fast_path(x)
    assert set(InputGradConv2d(1, 2, 3).state_dict()) == {"weight", "bias"}


def test_cpu_bf16_autocast_forward_and_backward():
    """Under CPU autocast the plain path runs (the fast one would mix bfloat16 and float32 in its backward)."""
    torch.manual_seed(0)
    conv = InputGradConv2d(1, 3, 5, padding=2)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv._fast_path(x)
        loss = conv(x).float().pow(2).sum()
    loss.backward()
    assert x.grad is not None and conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
