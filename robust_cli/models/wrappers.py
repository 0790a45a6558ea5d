"""What wraps a model without changing its function: DistributedDataParallel, DataParallel, torch.compile."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DistributedDataParallel / DataParallel / torch.compile wrappers (else ``model``).

    Save and evaluate this one (wrappers prefix state-dict keys with ``module.`` / ``_orig_mod.``); inner
    attacks call it too: a DDP forward with gradients enabled arms the gradient reducer, which an input-only
    backward would never fire.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
