"""Benchmark: one iteration of PGD-linf, APGD-linf, FMN, DDN and PDPGD against its physical floor.

An iteration of a gradient attack cannot cost less than one forward plus one input-only backward of the
model on the batch (the *floor*, measured here on the same model and batch). For each model, one thread,
batch ``--batch``, every timing is repeated ``--repeats`` times, interleaved (floor, attack 1, attack 2, ...,
then again), and the median is kept:

- ``ratio``: the attack's whole call (``--steps`` iterations, its setup and its final bookkeeping
  included) divided by ``--steps`` floors: what one iteration really costs;
- ``marginal``: ``(T(steps) - T(steps / 2)) / (steps / 2)`` over the floor: the loop body alone.

The floor of an attack is measured **at the points that attack visits**: one call is recorded first (every
forward with grad enabled on an input that requires grad, i.e. every gradient the attack takes), and the floor
is one forward + input-only backward of the cross-entropy at each recorded point, in order (cycled if the
attack took fewer gradients than ``--steps``). Why not at the clean images: a LeNet-5 forward costs ~15% more
on MNIST images an attack has perturbed than on the clean ones (max-pooling and ReLU over the clean images'
uniform zero background branch predictably; measured: forward 9.9 ms at ``x``, 11.5 ms at ``x`` + a random
0.3-sign perturbation, batch 256, one thread), so a floor at ``x`` charges that data-dependent cost to the
attack's overhead. ``floor at x`` is still printed, for comparison with earlier runs.

``fmn l2 ball`` is FMN with the authors' projection (onto the ball, then clipped; ``projection=ball``), beside
our default exact projection onto ball ∩ box (``fmn l2``): the published algorithm's own step cost. ``pdgd l2``
runs PDPGD's primal-dual engine with no proximal operator (PDGD, thesis Algorithm 2): what PDPGD's step costs
without it, a lower bound on ``pdpgd l2``'s ratio.

``--ref DIR``: also time the attacks of another checkout's ``robust_cli`` (e.g. a ``git archive main``
snapshot) in the same run, interleaved with ours, and print both ratios side by side. The two packages are
imported one after the other under the same name; each function keeps its own module's globals.
An attack the ``--ref`` snapshot lacks (e.g. APGD in a checkout older than it) gets ``-`` in the main columns.
``--peers DIR``: torchattacks' ``PGD`` (a side-directory install, never a dependency of ``robust``) on the
same model, batch and steps: images x steps per second, ours over theirs. With ``--peers`` and/or ``--advlib DIR``
(adv-lib, also a side directory) the published implementations of the same attacks are timed in the same loop,
each over the floor at the points *it* visits (``PEERS``: torchattacks' APGD-CE, adv-lib's FMN, DDN, PDPGD and
PDGD, each at ``--steps`` iterations and its other defaults), and a second table sets their ratio beside ours:
what the best public step costs on the same model, batch and machine.

Models: LeNet-5 (``robust_cli.models.lenet5``) on MNIST (1x28x28, the real test images when ``--mnist``
points at a torchvision MNIST root that holds them, uniform noise otherwise) and on scikit-learn's 8x8 digits, randomly
initialised with seed 0 and labelled with the model's own predictions, so that every image is attacked (an
iteration's cost does not depend on the weights: no attack here stops early).

``--allocator robust`` (the default): glibc's allocator is set as ``robust train`` / ``robust eval`` set it
(``robust_cli.host_memory.reuse_freed_host_memory``: a step's freed tensors reused, not faulted in again);
``--allocator glibc`` leaves glibc's moving thresholds, for a before/after in two runs. The last line gives the
process's user and system CPU time and its page faults.

``--device cpu`` (the default): times are CPU seconds of the process (``time.process_time``, one thread),
which on a shared machine do not count the neighbours' load. ``--device cuda``: the model and the batch live
on the GPU and times are wall seconds (``time.perf_counter``) between two ``torch.cuda.synchronize()``, since
the process's CPU time does not see the GPU's work.

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_floor.py [--device cuda] [--ref /tmp/main_snapshot]
[--peers .bench-peers] [--advlib .bench-advlib] [--attacks "pdpgd l2,pdpgd linf"]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = {  # label -> (module, function, norm, eps or None for minimal-norm attacks, options)
    "pgd linf": ("pgd", "pgd", "linf", 0.3, {}),
    "apgd linf": ("apgd", "apgd", "linf", 0.3, {}),
    "fmn l2": ("fmn", "fmn", "l2", None, {}),
    # the authors' projection (onto the ball, then clipped): FMN as published, not our default (exact)
    "fmn l2 ball": ("fmn", "fmn", "l2", None, {"projection": "ball"}),
    "fmn linf": ("fmn", "fmn", "linf", None, {}),
    "ddn l2": ("ddn", "ddn", "l2", None, {}),
    "pdpgd l2": ("pdpgd", "pdpgd", "l2", None, {}),
    "pdpgd linf": ("pdpgd", "pdpgd", "linf", None, {}),
    # PDPGD's engine (Adam, dual player, best-so-far) with no proximal operator: PDGD (thesis Algorithm 2) takes
    # Adam on the whole Lagrangian instead, so its step is PDPGD's less the operator, the latter's lower bound
    "pdgd l2": ("pdgd", "pdgd", "l2", None, {}),
}


@contextlib.contextmanager
def imported_from(root: Path | None) -> Iterator[None]:
    """Inside the block ``import robust_cli`` gives the package of the checkout at ``root`` (None: ours, nothing
    changes). Ours is set aside and put back after, so the functions imported inside keep their own modules'
    globals; exits with a message where the package imported is not ``root``'s."""
    if root is None:
        yield
        return
    ours = [k for k in sys.modules if k == "robust_cli" or k.startswith("robust_cli.")]
    saved = {k: sys.modules.pop(k) for k in ours}
    sys.path.insert(0, str(root))
    try:
        yield
        module = sys.modules.get("robust_cli")
        where = Path(module.__file__).parent.parent if module is not None else None
        if where is not None and where.resolve() != root.resolve():
            raise SystemExit(f"--ref {root}: imported robust_cli from {where} instead")
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == "robust_cli" or k.startswith("robust_cli.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def load_attacks(root: Path | None) -> dict[str, Callable]:
    """The attack functions of the ``robust_cli`` under ``root`` (``None``: the installed one). A ``root``
    that lacks one (an older snapshot) leaves its label out; our own checkout must have every one."""
    with imported_from(root):
        out = {}
        for label, (module, fn, _, _, opts) in ATTACKS.items():
            if root is not None and opts:  # an option an older snapshot may lack: ours only
                continue
            try:
                out[label] = getattr(importlib.import_module(f"robust_cli.attacks.{module}"), fn)
            except (ImportError, AttributeError):
                if root is None:
                    raise
                print(f"--ref {root}: no {label}, skipped", file=sys.stderr)
        return out


def build(name: str, mnist_root: str | None, batch: int,
          device: str = "cpu") -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """``(LeNet-5, x [batch,1,H,W] in [0,1], y [batch], where the images came from)`` for ``mnist`` or
    ``digits``, all on ``device``. A missing MNIST root falls back to uniform noise (said in the source)."""
    from robust_cli.data.info import DatasetInfo
    from robust_cli.models import build_model

    torch.manual_seed(0)
    if name == "mnist":
        info = DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,))
        x, source = None, "uniform noise"
        if mnist_root:
            from robust_cli.data.sets.mnist import load
            from robust_cli.errors import UserError

            try:
                xs, ys = load(False, root=mnist_root, download=False)
            except (UserError, OSError, RuntimeError) as e:  # an iteration costs the same on noise
                print(f"MNIST not found under {mnist_root!r} ({type(e).__name__}): uniform noise instead",
                      file=sys.stderr)
            else:
                x = torch.as_tensor(xs[:batch]).float().div(255).unsqueeze(1)
                y = torch.as_tensor(ys[:batch]).long()
                source = f"MNIST test images from {mnist_root}"
        if x is None:
            x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    else:
        from robust_cli.data.sets.digits import load

        info = DatasetInfo("digits", (1, 8, 8), 10, (0.3,), (0.4,))
        xs, ys = load(False, root="", download=False)
        reps = -(-batch // len(xs))
        x = torch.as_tensor(xs).unsqueeze(1).repeat(reps, 1, 1, 1)[:batch]
        y = torch.as_tensor(ys).repeat(reps)[:batch]
        source = "scikit-learn digits"
    model = build_model({"_target_": "robust_cli.models.lenet5.LeNet5", "name": "lenet5"}, info).eval()
    model, x, y = model.to(device), x.to(device), y.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # the labels the model predicts: every image is attacked (none is skipped as wrong)
        y = model(x).argmax(1)
    return model, x, y, source


def floor_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> Callable[[], None]:
    """``steps`` times: one forward and one input-only backward of the cross-entropy (nothing else)."""
    def run() -> None:
        for _ in range(steps):
            xa = x.detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(model(xa), y, reduction="sum")
            torch.autograd.grad(loss, xa)

    return run


class GradientPoints(nn.Module):
    """``model`` recording the input of every forward that will be differentiated (grad enabled and the input
    requires grad): the points where an attack takes its gradients, ``[B,C,H,W]`` each, detached copies."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.points = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.points.append(x.detach().clone())
        return self.model(x)


def points_of(call_on: Callable[[nn.Module], Callable[[], None]], model: nn.Module,
              x: torch.Tensor) -> list[torch.Tensor]:
    """The points where one call ``call_on(model)()`` takes its gradients (at least one: ``x``)."""
    rec = GradientPoints(model).eval()
    call_on(rec)()
    return rec.points or [x]


def visited_points(fn: Callable, model, x, y, norm: str, eps: float | None, steps: int,
                   opts: dict) -> list[torch.Tensor]:
    """The points where one call of our attack ``fn`` takes its gradients."""
    return points_of(lambda m: attack_fn(fn, m, x, y, norm, eps, steps, opts), model, x)


def floor_at(model: nn.Module, points: list[torch.Tensor], y: torch.Tensor, steps: int) -> Callable[[], None]:
    """``steps`` times, at ``points[t % len(points)]``: one forward and one input-only backward of the
    cross-entropy (nothing else): the floor of an attack at the points it visits."""
    def run() -> None:
        for t in range(steps):
            xa = points[t % len(points)].detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(model(xa), y, reduction="sum")
            torch.autograd.grad(loss, xa)

    return run


def attack_fn(fn: Callable, model, x, y, norm: str, eps: float | None, steps: int,
              opts: dict) -> Callable[[], None]:
    kw = {"eps": eps, **opts} if eps is not None else opts
    return lambda: fn(model, x, y, norm=norm, steps=steps, **kw)


def torchattacks_fn(peers: str, model, x, y, eps: float, steps: int) -> Callable[[], None]:
    sys.path.insert(0, str(Path(peers).resolve()))
    import torchattacks

    # our pgd's first step is eps * step_size (0.25) annealed; theirs a constant alpha (2.5 eps / steps)
    atk = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    return lambda: atk(x, y)


def _torchattacks_apgd(model, x, y, steps: int) -> Callable[[], None]:
    import torchattacks

    atk = torchattacks.APGD(model, norm="Linf", eps=0.3, steps=steps, n_restarts=1, loss="ce", seed=0)
    return lambda: atk(x, y)


def _advlib(name: str, **kw) -> Callable[..., Callable[[], None]]:
    """A builder ``(model, x, y, steps) -> call`` of adv-lib's attack ``name`` (its step count's keyword: ``steps``
    for FMN and DDN, ``num_steps`` for the primal-dual ones)."""
    def build_call(model, x, y, steps: int) -> Callable[[], None]:
        import adv_lib.attacks as al

        fn = getattr(al, name)
        key = "num_steps" if name in ("pdpgd", "pdgd") else "steps"
        return lambda: fn(model, x, y, **{key: steps}, **kw)

    return build_call


#: label of ours -> (library, side-directory option, builder (model, x, y, steps) -> call)
PEERS: dict[str, tuple[str, str, Callable[..., Callable[[], None]]]] = {
    "apgd linf": ("torchattacks", "peers", _torchattacks_apgd),
    "fmn l2": ("adv-lib", "advlib", _advlib("fmn", norm=2)),
    "fmn linf": ("adv-lib", "advlib", _advlib("fmn", norm=float("inf"))),
    "ddn l2": ("adv-lib", "advlib", _advlib("ddn")),
    "pdpgd l2": ("adv-lib", "advlib", _advlib("pdpgd", norm=2)),
    "pdpgd linf": ("adv-lib", "advlib", _advlib("pdpgd", norm=float("inf"))),
    "pdgd l2": ("adv-lib", "advlib", _advlib("pdgd")),
}


def peer_builders(args, labels: list[str]) -> dict[str, Callable[..., Callable[[], None]]]:
    """``{label: builder}`` of the published implementation of each of ``labels`` whose side directory was given;
    each side directory is put on ``sys.path`` once."""
    from _bench import add_peers  # the side directory first on sys.path, adv-lib's optional imports stubbed

    dirs = {getattr(args, PEERS[label][1]) for label in labels if label in PEERS} - {None, ""}
    for where in dirs:
        add_peers(where)
    return {label: PEERS[label][2] for label in labels if label in PEERS and getattr(args, PEERS[label][1])}


def seconds(fn: Callable[[], None], device: str = "cpu") -> float:
    """CPU: CPU seconds of this (one-threaded) process, since on a shared machine wall time measures the
    neighbours. CUDA: wall seconds from an idle GPU to an idle GPU (kernels run asynchronously, and the
    process's CPU time does not include them)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start
    start = time.process_time()
    fn()
    return time.process_time() - start


def attack_labels(text: str) -> list[str]:
    """``--attacks "pgd linf, pdpgd l2"`` -> its labels (spaces around the commas dropped); empty: all."""
    return [a.strip() for a in text.split(",") if a.strip()] if text else list(ATTACKS)


def bench(name: str, args, ours: dict, ref: dict | None) -> list[str]:
    model, x, y, source = build(name, args.mnist, args.batch, args.device)
    s, h = args.steps, args.steps // 2
    jobs: dict[str, Callable[[], None]] = {"floor": floor_fn(model, x, y, s), "floor/2": floor_fn(model, x, y, h)}
    labels = attack_labels(args.attacks)
    for label in labels:
        _, _, norm, eps, opts = ATTACKS[label]
        # the floor at the points our attack visits (the same for --ref: its loop must visit the same points)
        points = visited_points(ours[label], model, x, y, norm, eps, s, opts)
        jobs[f"floor {label}"] = floor_at(model, points, y, s)
        jobs[f"floor {label}/2"] = floor_at(model, points, y, h)
        for tag, fns in (("ours", ours), ("ref", ref)):
            if fns is None or label not in fns:
                continue
            jobs[f"{tag} {label}"] = attack_fn(fns[label], model, x, y, norm, eps, s, opts)
            jobs[f"{tag} {label}/2"] = attack_fn(fns[label], model, x, y, norm, eps, h, opts)
    if args.peers and "pgd linf" in labels:
        jobs["torchattacks pgd linf"] = torchattacks_fn(args.peers, model, x, y, 0.3, s)
    peers = peer_builders(args, labels)
    for label, builder in peers.items():  # each peer over the floor at the points it visits, as ours
        points = points_of(lambda m, b=builder: b(m, x, y, s), model, x)
        jobs[f"peer {label}"] = builder(model, x, y, s)
        jobs[f"floor peer {label}"] = floor_at(model, points, y, s)
    for fn in jobs.values():  # warm-up: allocator, oneDNN primitive caches
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for k, fn in jobs.items():
            times[k].append(seconds(fn, args.device))
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = med["floor"] / s
    lines = [f"### LeNet-5 on {name} {tuple(x.shape)}, {args.device}: floor at x {1e3 * floor:.3f} ms/iter "
             f"(forward + input backward), {args.repeats} repeats, median", "", f"Images: {source}.", "",
             "| attack | floor at its points, ms/iter | ratio (whole call) | marginal (loop body) |"
             + (" main ratio | main marginal |" if ref else "") + " ratio to the floor at x |",
             "|---|---|---|---|" + ("---|---|" if ref else "") + "---|"]
    for label in labels:
        own = med[f"floor {label}"] / s
        own_marginal = (med[f"floor {label}"] - med[f"floor {label}/2"]) / (s - h)
        row = f"| {label} | {1e3 * own:.3f} |"
        for tag in ("ours", "ref") if ref else ("ours",):
            if f"{tag} {label}" not in med:
                row += " - | - |"
                continue
            whole = med[f"{tag} {label}"] / s / own
            marg = (med[f"{tag} {label}"] - med[f"{tag} {label}/2"]) / (s - h) / own_marginal
            row += f" {whole:.3f} | {marg:.3f} |"
        lines.append(row + f" {med[f'ours {label}'] / s / floor:.3f} |")
    if peers:
        lines += ["", "The published implementations, each over the floor at its own points (whole call):", "",
                  "| attack | library | floor at its points, ms/iter | theirs | ours |", "|---|---|---|---|---|"]
        for label in peers:
            theirs = med[f"peer {label}"] / med[f"floor peer {label}"]
            ours_ratio = med[f"ours {label}"] / med[f"floor {label}"]
            lines.append(f"| {label} | {PEERS[label][0]} | {1e3 * med[f'floor peer {label}'] / s:.3f} | "
                         f"{theirs:.3f} | {ours_ratio:.3f} |")
    if args.peers and "ours pgd linf" in med:
        ta = med["torchattacks pgd linf"]
        lines += ["", f"PGD-linf throughput, {s} steps: ours {x.shape[0] * s / med['ours pgd linf']:.0f} img-steps/s,"
                  f" torchattacks {x.shape[0] * s / ta:.0f} img-steps/s: ours / theirs = "
                  f"{ta / med['ours pgd linf']:.3f} (torchattacks {ta / s / floor:.3f}x the floor)"]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default="mnist,digits")
    p.add_argument("--attacks", default="", help=f"comma-separated labels to time (default: all of {list(ATTACKS)})")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu: CPU seconds, one thread; cuda: synchronized wall seconds on the GPU")
    p.add_argument("--mnist", default="/work/shared/data", help="torchvision MNIST root ('' for noise)")
    p.add_argument("--ref", type=Path, default=None, help="another checkout holding robust_cli/ (e.g. main)")
    p.add_argument("--peers", default=None, help="side directory holding torchattacks")
    p.add_argument("--advlib", default=None, help="side directory holding adv_lib (FMN, DDN, PDPGD, PDGD)")
    p.add_argument("--allocator", default="robust", choices=["robust", "glibc"],
                   help="robust: glibc's allocator set as `robust train/eval` set it "
                        "(robust_cli.host_memory.reuse_freed_host_memory); glibc: its own moving thresholds")
    args = p.parse_args()
    unknown = [a for a in attack_labels(args.attacks) if a not in ATTACKS]
    if unknown:
        raise SystemExit(f"--attacks: unknown {unknown}; expected labels of {list(ATTACKS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    from robust_cli.host_memory import reuse_freed_host_memory

    allocator = "glibc's defaults"
    if args.allocator == "robust":
        allocator = "robust's thresholds" if reuse_freed_host_memory() else "robust's (not glibc, or set by the user)"
    torch.set_num_threads(1)
    ref = load_attacks(args.ref) if args.ref else None
    ours = load_attacks(None)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU thread"
    clock = "synchronized wall time" if args.device == "cuda" else "process CPU time"
    print(f"torch {torch.__version__}, {where}, batch {args.batch}, {args.steps} steps, {clock}, "
          f"host allocator: {allocator}\n")
    for name in args.models.split(","):
        print("\n".join(bench(name, args, ours, ref)), "\n", flush=True)
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(f"process CPU time: user {use.ru_utime:.1f} s, system {use.ru_stime:.1f} s (page faults: "
          f"{use.ru_minflt} minor, {use.ru_majflt} major)")


if __name__ == "__main__":
    main()
