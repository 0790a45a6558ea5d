"""``critic``: robust learning with an adversary critic (Matyasko's thesis Ch.4, "Improved network robustness
with adversary critic", §4.4-4.5; eq. 4.3-4.5, Algorithm 1).

Per batch ``x`` ``[B,C,H,W]`` in [0,1], labels ``y`` ``[B]``, ``K`` classes:

1. ``C_k``, the running mean of the classifier's confidence ``max_j p_j(x)`` over the images it predicts as
   ``k`` (an exponential moving average with weight ``confidence_decay`` on the old value, starting at 1 as in
   the authors' code), is updated from the batch.
2. The target ``t`` of each image is the class of the nearest linearised decision boundary (DeepFool's
   choice; thesis §4.4), and ``x_adv = A_f(x; t)`` is the high-confidence attack (Algorithm 1, ``steps``
   adaptive steps ``(log C_t - log p_t) / ||grad log p_t||^2 * grad log p_t``) run *with its graph*: every
   step's input gradient keeps its dependence on the parameters (second-order gradients) and the stopping
   indicator ``I(p_t < C_t)`` back-propagates as ``sigmoid(log C_t - log p_t)`` (the sigmoid-adjusted
   straight-through estimator of Bengio, Léonard & Courville 2013; thesis §4.4 after eq. 4.8).
   The adversarial examples that count are those of correctly classified images whose prediction the attack
   changed (``hit``); the authors' code filters the same way.
3. Critic step (eq. 4.3, one Adam step on ``D`` with ``x_adv`` taken as data):
   ``L_D = BCE(D_y(x), 1) + BCE(D_t(x_adv), 0) + lam_grad * (GP(x) + GP(x_adv))``,
   ``GP`` the gradient penalty of :mod:`robust_cli.defenses.critic_net` at each point separately.
4. Classifier loss (eq. 4.4, 4.5) with the critic frozen:
   ``L_f = CE(f(x), y) + lam * BCE(D_t(x_adv), 1) + lam_rec * ||A_f(x_adv; y, p_y(x)) - x||_2``
   (the fool-the-critic term in its non-saturating form, ``-log D_t``; the cycle starts from ``x_adv`` with its
   graph, so it is differentiated through both attacks, and aims back at the label with the clean confidence
   ``p_y(x)``; both averaged over ``hit``).

During the first ``pretrain_epochs`` epochs the loss is plain CE and only ``C`` is updated (thesis §4.5: one
epoch, "to get the initial estimate of the class confidence scores"). The critic is a second model with its
own Adam (``beta1 = 0.5``, thesis §4.5), built on the first batch from a private seed; its learning rate is
``critic_lr`` times the classifier schedule's factor (``begin_epoch``), so ``schedule=multistep`` with
``milestones=[40,80] gamma=0.5`` halves both every 40 epochs. Its weights, optimizer state and ``C`` travel in
the training checkpoint (``state_dict``/``load_state_dict``), so a resumed run continues bit-identically.
Runs in one process only (the critic's gradients are not all-reduced).

Stats: ``nll``, ``fool``, ``cycle``, ``critic_loss``, ``critic_gp``, ``critic_acc_real`` (fraction of clean
images with ``D_y(x) > 0``), ``critic_acc_adv`` (of ``hit`` adversarials with ``D_t(x_adv) < 0``, before the
critic's step), ``attack_success`` (fraction ``hit``), ``adv_l2`` (mean ``||x_adv - x||_2`` over ``hit``),
``confidence`` (mean of ``C``); NaN during pre-training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks.contract import frozen_params
from robust_cli.attacks.geometry import batch_norm
from robust_cli.attacks.high_confidence import high_confidence_steps, nearest_boundary_class
from robust_cli.defenses.base import DefenseOutput, to_floats
from robust_cli.defenses.critic_net import CriticNet, critic_scores
from robust_cli.models.wrappers import unwrap
from robust_cli.schema import Length, Range, schema_of

STATS = ("nll", "fool", "cycle", "critic_loss", "critic_gp", "critic_acc_real", "critic_acc_adv",
         "attack_success", "adv_l2", "confidence")
BETAS = (0.5, 0.999)  # thesis §4.5: Adam with beta1 = 0.5 (beta2 Adam's default)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode only: unlike ``attack_mode`` the parameters keep ``requires_grad``, because the classifier's
    loss must reach them *through* the attack."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def masked_mean(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum(v * w) / max(sum(w), 1)`` for ``[B]`` values and 0/1 weights (0 when none counts, no sync)."""
    return (v * w).sum() / w.sum().clamp_min(1.0)


class Critic:
    """The adversary-critic defense; see the module docstring. Defaults: thesis §4.5 (the MLP's ``lam``).

    Args:
        lam: weight of the fool-the-critic term (thesis: 0.5 for the MLP, 0.1 for LeNet-5).
        lam_rec: weight of the adversarial cycle-consistency term (eq. 4.5; thesis 0.01).
        lam_grad: weight of the critic's gradient penalty (thesis 10).
        steps: iterations of the training attack (Algorithm 1; thesis 5).
        critic_widths: hidden widths of the critic MLP (thesis: 1200, 1200).
        critic_lr: the critic's Adam learning rate (thesis 1e-3), scaled by the classifier schedule.
        noise_input: std of the critic's noise on the pixels (authors' code 0.1).
        noise_hidden: std of the critic's noise on its hidden layers' inputs (authors' code 0.5).
        leak: the critic's leaky-ReLU slope (authors' code 0.2).
        confidence_decay: EMA weight of the old value in the running class confidence (authors' code 0.5).
        pretrain_epochs: epochs of plain CE before the critic terms start (thesis 1).
        seed: seed of the critic's initial weights (a private generator: the run's random streams are
            untouched, so a resumed run draws what an uninterrupted one draws).
    """

    distributed = False  # the loop refuses DDP: the critic would diverge across ranks

    def __init__(self, lam: Annotated[float, Range(ge=0)] = 0.5, lam_rec: Annotated[float, Range(ge=0)] = 0.01,
                 lam_grad: Annotated[float, Range(ge=0)] = 10.0, steps: Annotated[int, Range(ge=1)] = 5,
                 critic_widths: Annotated[Sequence[Annotated[int, Range(ge=1)]], Length(ge=1)] = (1200, 1200),
                 critic_lr: Annotated[float, Range(gt=0)] = 1e-3, noise_input: Annotated[float, Range(ge=0)] = 0.1,
                 noise_hidden: Annotated[float, Range(ge=0)] = 0.5, leak: Annotated[float, Range(ge=0)] = 0.2,
                 confidence_decay: Annotated[float, Range(ge=0, lt=1)] = 0.5,
                 pretrain_epochs: Annotated[int, Range(ge=0)] = 1, seed: int = 0):
        if not critic_widths or min(int(w) for w in critic_widths) < 1:
            raise ValueError(f"critic_widths={list(critic_widths)}: needs at least one width, each >= 1")
        for name, value in (("lam", lam), ("lam_rec", lam_rec), ("lam_grad", lam_grad)):
            if value < 0:
                raise ValueError(f"{name}={value}: must be >= 0")
        self.lam, self.lam_rec, self.lam_grad = float(lam), float(lam_rec), float(lam_grad)
        self.steps, self.critic_widths = int(steps), [int(w) for w in critic_widths]
        self.critic_lr, self.noise_input, self.noise_hidden = float(critic_lr), float(noise_input), float(noise_hidden)
        self.leak, self.confidence_decay = float(leak), float(confidence_decay)
        self.pretrain_epochs, self.seed = int(pretrain_epochs), int(seed)
        self.epoch, self.lr_scale = 0, 1.0
        self.critic: CriticNet | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.confidence: torch.Tensor | None = None  # [K]
        self._pending: dict[str, Any] | None = None

    # --- the loop's hooks: schedule and checkpoint -------------------------------------------------------
    def begin_epoch(self, epoch: int, lr_scale: float) -> None:
        """Called by the loop before epoch ``epoch`` (0-based) with the classifier's ``lr / base lr``."""
        self.epoch, self.lr_scale = int(epoch), float(lr_scale)
        self._set_lr()

    def state_dict(self) -> dict[str, Any]:
        if self.critic is None:
            return dict(self._pending or {})
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict(),
                "confidence": self.confidence.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; applied when the critic is built (on the first batch,
        whose shape and device it needs), or at once if it already is."""
        self._pending = dict(state)
        if self.critic is not None:
            self._apply_pending()

    def _set_lr(self) -> None:
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.critic_lr * self.lr_scale

    def _build(self, x: torch.Tensor, num_classes: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            critic = CriticNet(x[0].numel(), num_classes, self.critic_widths, self.noise_input,
                               self.noise_hidden, self.leak)
        self.critic = critic.to(device=x.device, dtype=x.dtype).train()
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.critic_lr, betas=BETAS)
        self.confidence = torch.ones(num_classes, device=x.device, dtype=x.dtype)
        self._set_lr()
        if self._pending:
            self._apply_pending()

    def _apply_pending(self) -> None:
        state, self._pending = self._pending, None
        if state:
            self.critic.load_state_dict(state["critic"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.confidence = state["confidence"].to(self.confidence)
            self._set_lr()

    # --- one step -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _update_confidence(self, p: torch.Tensor) -> None:
        """EMA of the batch's mean confidence per predicted class; classes absent from the batch keep theirs."""
        conf, pred = p.max(dim=1)
        k = p.shape[1]
        total = torch.zeros(k, dtype=p.dtype, device=p.device).index_add_(0, pred, conf)
        count = torch.zeros(k, dtype=p.dtype, device=p.device).index_add_(0, pred, torch.ones_like(conf))
        batch = torch.where(count > 0, total / count.clamp_min(1.0), self.confidence)
        self.confidence = self.confidence * self.confidence_decay + batch * (1.0 - self.confidence_decay)

    def _critic_step(self, x, y, x_adv, target, w) -> dict[str, torch.Tensor]:
        """One Adam step of the critic on eq. 4.3 + the gradient penalty; ``x_adv`` is data here."""
        penalty = self.lam_grad > 0
        with torch.enable_grad():
            z_real, gp_real = critic_scores(self.critic, x, y, penalty=penalty)
            z_adv, gp_adv = critic_scores(self.critic, x_adv.detach(), target, penalty=penalty)
            bce = F.softplus(-z_real).mean() + masked_mean(F.softplus(z_adv), w)  # labels: real 1, adversarial 0
            gp = gp_real.mean() + masked_mean(gp_adv, w) if penalty else torch.zeros((), device=x.device)
            loss = bce + self.lam_grad * gp
            params = list(self.critic.parameters())
            grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        self.optimizer.step()
        return {"critic_loss": loss.detach(), "critic_gp": gp.detach(),
                "critic_acc_real": (z_real.detach() > 0).to(x.dtype).mean(),
                "critic_acc_adv": masked_mean((z_adv.detach() < 0).to(x.dtype), w)}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        x = x.detach()
        logits = model(x)
        nll = F.cross_entropy(logits, y)
        if self.critic is None:
            self._build(x, logits.shape[1])
        p = logits.detach().softmax(dim=1)
        self._update_confidence(p)
        if self.epoch < self.pretrain_epochs:
            stats = {k: float("nan") for k in STATS}
            stats.update(nll=nll.detach(), confidence=self.confidence.mean())
            return DefenseOutput(nll, logits.detach(), to_floats(stats))

        bare = unwrap(model)
        with eval_mode(bare):
            target = nearest_boundary_class(bare, x, y)
            x_adv = high_confidence_steps(bare, x, target, self.confidence[target], steps=self.steps,
                                          create_graph=True)
            with torch.no_grad():
                pred_adv = bare(x_adv).argmax(dim=1)
            hit = (p.argmax(dim=1) == y) & (pred_adv != y)
            w = hit.to(x.dtype)
            stats = self._critic_step(x, y, x_adv, target, w)
            with frozen_params(self.critic):
                fool = masked_mean(F.softplus(-self.critic(x_adv).gather(1, target[:, None]).squeeze(1)), w)
            if self.lam_rec > 0:
                # from x_adv with its graph, as eq. 4.5 writes A(A(x, y_t), y_s): the cycle's gradient also
                # reaches the parameters through the first attack (the same backward pass as the fool term's,
                # so it costs next to nothing: 1.01x the step with x_adv detached, LeNet-5, batch 100, CPU)
                back = high_confidence_steps(bare, x_adv, y, p.gather(1, y[:, None]).squeeze(1),
                                             steps=self.steps, create_graph=True)
                cycle = masked_mean(batch_norm(back - x, "l2"), w)
            else:
                cycle = torch.zeros((), dtype=x.dtype, device=x.device)
        loss = nll + self.lam * fool + self.lam_rec * cycle
        stats.update(nll=nll.detach(), fool=fool.detach(), cycle=cycle.detach(), attack_success=w.mean(),
                     adv_l2=masked_mean(batch_norm(x_adv.detach() - x, "l2"), w), confidence=self.confidence.mean())
        return DefenseOutput(loss, logits.detach(), to_floats({k: stats[k] for k in STATS}))


SCHEMAS = {"critic": schema_of(Critic, "critic")}
