"""VFGA, the Voting Folded Gaussian Attack (Césaire et al. 2021, "Stochastic sparse adversarial attacks",
§3: FGA and its voting variant VFGA), l0, minimal-norm: a greedy that changes one more value per iteration,
with a random magnitude, until the image is misclassified.

Per iteration, at the current point ``x_k`` (values not yet changed: ``Gamma``), with ``p_y`` the softmax
probability of the true class (of the target, ascended, when ``targeted``) and ``g = grad (-p_y)``:

- the value to increase ``i+ = argmax_{i in Gamma} g_i (1 - x_i)`` and the one to decrease
  ``i- = argmin_{i in Gamma} g_i x_i`` (first order: the largest fall of ``p_y`` for moving a value to its face);
- ``samples`` magnitudes each from the folded Gaussians ``|N(0,1)| (1 - x_{i+})`` and ``-|N(0,1)| x_{i-}``,
  the ``2 samples`` candidates clipped to [0,1] and classified (the "votes");
- the next point is the candidate of lowest ``p_y`` among the misclassified ones if any, else of lowest
  ``p_y`` overall; an image stops at its first misclassified point (the one returned: each iteration adds one
  changed value, so it is the run's sparsest).

The order of operations is that of adv-lib 0.2.8's implementation (``vfga``; its
``large_memory=False`` batching, the candidates classified in ``samples`` chunks), and the draws come from a
private generator seeded ``seed``, so that with ``saturation=advlib`` a run on one machine and batch retraces
adv-lib's under ``torch.manual_seed(seed)`` bit for bit: a draw of other sparse basins for the ``minimal``
ensemble (BENCHMARKS.md, issue 10, session 9). The default differs from it only where the float32 softmax
saturates (``saturation``). Values are counted per coordinate, as the paper does; on one-channel
images a value is a pixel. Cost per iteration: one forward and backward of the images left, and ``2 samples``
forwards.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.losses import attack_loss, is_adversarial, loss_gradient
from robust_cli.norms import check_norm
from robust_cli.schema import Range, schema_of


@register_attack(norms=("l0",), budget=False)
def vfga(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l0",
    samples: Annotated[int, Range(ge=1)] = 10,
    max_iter: Annotated[int, Range(ge=1)] | None = None,
    targeted: bool = False,
    saturation: Literal["logits", "advlib"] = "logits",
    seed: int = 0,
) -> torch.Tensor:
    """VFGA on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]`` (targets when ``targeted``).

    Args:
        samples: magnitudes drawn per direction and iteration (the paper and adv-lib: 10).
        max_iter: at most this many values changed; None: every value (``C H W``), i.e. until misclassified.
        targeted: ``y`` holds targets: ascend their probability, stop once predicted.
        saturation: where the softmax saturates. In float32 ``p_y`` rounds to exactly 1 once the model's margin
            exceeds ~17 (on the 2-epoch MNIST LeNet-5 at most of its points), so every candidate that fails
            ties in the vote, and past ~100 the gradient of ``p_y`` is 0. ``logits`` (the default): ties are
            broken by the largest ``s = logsumexp_{j != y} f_j - f_y`` (``p_y = sigmoid(-s)``: the lowest
            ``p_y`` in exact arithmetic), and an image whose gradient vanished takes the scale-free CE's
            (``attack_loss``: ``grad p_y`` over a positive factor, so the same choices), the algorithm the
            paper means. ``advlib``: adv-lib's run as it is, retraced (ties: the first candidate, i.e. the
            first draw of the increasing direction; a zero gradient: the first value not yet changed): its blind
            votes are a draw of other basins for the ``minimal`` ensemble.
        seed: of the private generator of the draws (adv-lib draws from the global one: the same numbers under
            ``torch.manual_seed(seed)``).

    Returns:
        ``[B,C,H,W]`` in [0,1]: per image its first misclassified point (classified by the model on the very
        tensor returned, in the candidates' batch), ``x`` where none was found within ``max_iter``.
    """
    check_norm(norm, vfga.norms, who="vfga")
    x, y = x.detach(), y.to(x.device)
    shape = x.shape[1:]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    sign = 1.0 if targeted else -1.0  # adv-lib's multiplier: descend p_y, ascend the target's
    adv = x.clone()
    out = x.clone()
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    n = samples
    as_advlib = saturation == "advlib"
    with frozen_eval(model):
        for _ in range(x[0].numel() if max_iter is None else max_iter):
            unchanged = adv == x
            exhausted = ~unchanged.flatten(1).any(1)
            if bool((exhausted | done).all()):
                break
            active = ~(exhausted | done)
            xs, ys, free = adv[active], y[active], unchanged[active]
            b = len(xs)
            taken = torch.zeros_like(free, dtype=x.dtype).masked_fill_(~free, float("inf"))
            with torch.enable_grad():
                xs.requires_grad_(True)
                p = model(xs).softmax(dim=1).gather(1, ys.unsqueeze(1)).squeeze(1)
                (g,) = torch.autograd.grad(sign * p.sum(), inputs=xs, only_inputs=True)
            xs = xs.detach()
            blind = ~g.flatten(1).any(1)
            if not as_advlib and bool(blind.any()):  # p_y saturated in float32 (a confident model): its gradient is 0
                # the scale-free CE's gradient is grad(sign p_y) divided by a positive per-image factor
                # (p_y sigmoid(s), see attack_loss): the same choices below, without the underflow
                g_free, _ = loss_gradient(model, xs[blind], ys[blind], "ce", targeted, scale_free=True)
                g[blind] = g_free
            up = (1 - xs).mul_(g).sub_(taken).flatten(1).argmax(dim=1, keepdim=True)
            down = g.mul_(xs).add_(taken).flatten(1).argmin(dim=1, keepdim=True)
            room_up = 1 - xs.flatten(1).gather(1, up)
            room_down = xs.flatten(1).gather(1, down)
            s_up = torch.randn(b, n, generator=gen, device=x.device).abs_().mul_(room_up)
            s_down = torch.randn(b, n, generator=gen, device=x.device).abs_().neg_().mul_(room_down)
            cands = xs.flatten(1).unsqueeze(1).repeat(1, 2 * n, 1)
            where = torch.cat([up, down], dim=1).repeat_interleave(n, dim=1, output_size=2 * n)
            cands.scatter_add_(2, where.unsqueeze(2), torch.cat([s_up, s_down], dim=1).unsqueeze(2))
            cands.clamp_(min=0, max=1)
            with torch.no_grad():  # the candidates in adv-lib's chunks: the same batches, the same rounding
                logits = torch.cat([model(c) for c in torch.chunk(cands.view(-1, *shape), chunks=n)])
            probs = logits.softmax(dim=1).view(b, 2 * n, -1)
            yy = ys.repeat_interleave(2 * n)
            hit = is_adversarial(logits, yy, targeted).view(b, 2 * n)  # the logits decide, as everywhere
            p_new = probs.gather(2, ys.view(-1, 1, 1).expand(-1, 2 * n, 1)).squeeze(2)
            # the vote: an adversarial candidate first, then the lowest p_y (highest target probability)
            key = -(p_new + hit.float()) if targeted else p_new - hit.float()
            if as_advlib:  # adv-lib's argmin: the first of exact ties
                pick = key.argmin(dim=1)
            else:  # exact ties of p_y (a saturated softmax) broken by what p_y is a decreasing function of
                # (p_y = sigmoid(-s), s = logsumexp_{j != y} f_j - f_y, which does not saturate)
                s_y = attack_loss(logits, yy, "ce", scale_free=True)
                tie_break = (s_y if targeted else -s_y).view(b, 2 * n)
                tied = key == key.amin(dim=1, keepdim=True)
                pick = torch.where(tied, tie_break, torch.full_like(tie_break, float("inf"))).argmin(dim=1)
            adv[active] = cands[torch.arange(b, device=x.device), pick].view(-1, *shape)
            found = hit.gather(1, pick.unsqueeze(1)).squeeze(1)
            done[active] = found
            out[active] = torch.where(found.view(-1, *[1] * len(shape)), adv[active], out[active])
    return out


SCHEMAS = {"vfga": schema_of(vfga, "vfga")}
