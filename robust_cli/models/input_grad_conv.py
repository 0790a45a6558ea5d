"""A single-input-channel convolution whose input gradient is itself a convolution (a CPU speed-up).

Every adversarial attack and every robust-training defense differentiates the loss with respect to the
*images*. For a stride-1 convolution ``y = conv2d(x, W, padding=p)`` that gradient is the correlation of
``dL/dy`` with the kernel flipped in space and transposed in channels,

    dL/dx = conv2d(dL/dy, flip(W).transpose(0, 1), padding = k - 1 - p),

which is what ``convolution_backward`` computes. On CPU, oneDNN's backward-data kernel is pathologically
slow for a 1-channel 5x5 convolution (LeNet-5's conv1 on MNIST: 9.8 ms for a batch of 64 against 2.1 ms
for the equivalent forward convolution above, one thread; ``scripts/bench_defenses.py`` and BENCHMARKS.md),
and that one kernel made every defense step on LeNet-5 cost 2.5-12x a plain training step. Other shapes
measured (1->32 3x3, 3->16, 3->64, 16->16) show no such gap, so only LeNet-5's first layer uses this class.

The weight and bias gradients are PyTorch's own. The input gradient is itself a custom function whose
input gradient is the forward convolution again, so double backprop (the ``lip``/``tulip``/``margin``
penalties) stays on the fast kernels as well and differentiates through it like any layer (checked
against ``nn.Conv2d`` and by ``gradgradcheck`` in ``tests/test_input_grad_conv.py``).
Elsewhere (CUDA, CPU autocast, strides, dilation, groups, non-zero padding modes) it is a plain ``nn.Conv2d``; the
parameters and the ``state_dict`` are those of ``nn.Conv2d`` in every case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _transposed(grad_out: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """The adjoint of ``conv2d(., weight, padding)`` (stride 1): ``[B, O, H', W']`` -> ``[B, 1, H, W]``,
    as the forward convolution with the kernel flipped in space and transposed in channels."""
    back_pad = tuple(k - 1 - p for k, p in zip(weight.shape[-2:], padding))
    return F.conv2d(grad_out, weight.flip(2, 3).transpose(0, 1), padding=back_pad)


class _Conv(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding)`` (stride 1, 1 input channel); input gradient by ``_Adjoint``."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _Adjoint.apply(grad_out, weight, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, padding=ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


class _Adjoint(torch.autograd.Function):
    """``_transposed(grad_out, weight, padding)``. Its own input gradient is the forward convolution again
    (``_Conv``), so the double backward of the penalties stays on the fast kernels too: oneDNN's backward of
    this 6->1 convolution is as slow as the one this module avoids."""

    @staticmethod
    def forward(ctx, grad_out, weight, padding):
        ctx.save_for_backward(grad_out, weight)
        ctx.padding = padding
        return _transposed(grad_out, weight, padding)

    @staticmethod
    def backward(ctx, v):
        grad_out, weight = ctx.saved_tensors
        g_out = g_w = None
        if ctx.needs_input_grad[0]:
            g_out = _Conv.apply(v, weight, None, ctx.padding)
        if ctx.needs_input_grad[1]:  # d<v, adjoint(g, W)>/dW = d<conv(v, W), g>/dW
            g_w = torch.nn.grad.conv2d_weight(v, weight.shape, grad_out, padding=ctx.padding)
        return g_out, g_w, None


class InputGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters and state_dict) that takes the fast input-gradient path on
    CPU for a 1-input-channel, stride-1, undilated, ungrouped, zero-padded convolution with ``padding <
    kernel``. Shapes as ``nn.Conv2d``: ``[B, 1, H, W]`` -> ``[B, out_channels, H', W']``."""

    def _fast_path(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and self.in_channels == 1
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and all(p < k for p, k in zip(self.padding, self.kernel_size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_path(x):
            return _Conv.apply(x, self.weight, self.bias, tuple(self.padding))
        return super().forward(x)
