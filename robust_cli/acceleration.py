"""Speed options that must not change the numbers beyond a tolerance: ``compile=true`` (torch.compile) and the
attacks' ``precision=fp32|bf16|fp16`` (autocast).

- ``compile_model``: ``torch.compile`` of a model, refused in one line where it cannot run here: the
  inductor backend generates C++ on the CPU (and Triton kernels, launched through C, on CUDA), so a machine
  without a C++ compiler (or without Triton for CUDA) cannot compile.
- ``LowPrecision``: a model wrapper running the forward under autocast (bf16 or fp16) and returning fp32
  logits, so the attacks' losses and input gradients are fp32 tensors while the convolutions and matrix
  products run in the low precision. The evaluation's verification never goes through it: it re-classifies
  every returned image with the bare model in fp32 (robust_cli.evaluation.runner.predict).

A defense or attack that differentiates through an input gradient (``create_graph=True``: double backprop)
cannot run on a compiled model (torch.compile has no double backward); ``needs_double_backward`` tells the
caller, who refuses ``compile=true`` for it in one line.
"""

from __future__ import annotations

import shutil
from typing import Any

import torch
from torch import nn

from robust_cli.errors import UserError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compiler_problem(device: torch.device) -> str | None:
    """Why ``torch.compile``'s inductor cannot build kernels for ``device`` here, or None."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) on PATH, which torch.compile's inductor needs"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed, which torch.compile's inductor needs on CUDA"
    return None


def compile_model(model: nn.Module, device: torch.device, what: str = "compile=true") -> nn.Module:
    """``torch.compile(model)`` (lazy: the first call compiles); a ``UserError`` where it cannot work here."""
    problem = compiler_problem(device)
    if problem is not None:
        raise UserError(f"{what}: {problem}; install one or use compile=false")
    return torch.compile(model, dynamic=False)


def needs_double_backward(obj: Any) -> bool:
    """A defense or attack whose step differentiates an input gradient (``create_graph=True``)."""
    if getattr(obj, "double_backward", False):
        return True
    penalty = getattr(obj, "penalty", None)
    return getattr(penalty, "method", None) == "double_backprop" and getattr(penalty, "lam", 0) > 0


def check_precision(precision: str) -> torch.dtype:
    """``fp32`` | ``bf16`` | ``fp16`` -> the dtype; anything else a ``UserError``."""
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision} is not a precision; expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


class LowPrecision(nn.Module):
    """``model`` under ``torch.autocast(dtype)``: ``[B,C,H,W]`` in [0,1] -> fp32 logits ``[B,K]``.

    The input stays fp32 (the attack's iterate and its gradient are fp32); autocast casts inside the
    convolutions and matrix products only, and the logits come back as fp32 so every loss is fp32.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def attack_model(model: nn.Module, device: torch.device, *, precision: str = "fp32", compile: bool = False,
                 ) -> nn.Module:
    """The model the attacks query: ``model`` itself, compiled and/or under low-precision autocast.

    It shares ``model``'s parameters (the attack contract, eval mode and frozen parameters, holds alike).
    """
    dtype = check_precision(precision)
    out = compile_model(model, device) if compile else model
    return out if dtype == torch.float32 else LowPrecision(out, dtype)
