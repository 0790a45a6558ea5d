"""``robust eval``: attack a trained run and write distances, error curves, summaries, plots and diagnostics.

``robust eval run=<train run dir> attack=[fgsm,pgd] norm=[l2,linf] n_examples=500`` evaluates every
(attack, norm) combination on the first ``n_examples`` test images and writes under ``<run>/eval/``:

- ``<attack>-<norm>/per_sample.csv``, ``curve.csv``, ``summary.json`` (reused on a later call with the
  same settings; a call with other settings is refused unless ``force=true`` or it only adds images:
  robust_cli.evaluation.cache);
- ``summary.csv``, ``error_curves.csv``, ``error_curves.png`` merged over everything evaluated on the run;
- ``lipschitz.json`` (``lipschitz=true``);
- ``<attack>-<norm>/adversarials.npz`` and ``.png`` (``save_adversarials=N``: the first N successes);
- ``transfer_<attack>_<id>-<norm>/`` (``source=<train run>``: crafted on the source, scored on ``run``);
- ``universal/<norm>/`` (``universal=true``: a universal perturbation at ``eps.<norm>``, its fooling rate);
- ``certified/<method>-<norm>/`` (``certify=[lipschitz,ibp,crown]``): certified radii, drawn as the certified
  (upper-bound) error curves in ``error_curves.png`` and listed in ``summary.csv`` as ``certified_<method>``.

``robust eval -m attack=fgsm,pgd norm=l2,linf`` runs one job per combination; each merges under a file
lock after writing its own directory, so the merged files end up holding every job.
``robust eval -m run=<dir1>,<dir2> ...`` evaluates several runs; the sweep's ``jobs.csv`` (in
``<out_dir>/sweeps/eval/<name from the overrides>``) lists each job's status, pairs and median distances.

The data set is read from the run's stored ``data.root`` (absolute), or from ``data.root=<dir>`` /
``$ROBUST_DATA`` where given (a moved data folder).
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from robust_cli.apps import is_multirun, user_errors
from robust_cli.norms import NORMS
from robust_cli.config import register_configs
from robust_cli.data import with_root
from robust_cli.errors import UserError
from robust_cli.evaluation.cache import cached_summary, lipschitz_stale, model_identity, result_config
from robust_cli.rundir import RunDir

register_configs()
log = logging.getLogger("robust_cli.eval")

def selected_norms(norm: Any) -> list[str]:
    norms = list(norm) if isinstance(norm, (list, tuple, ListConfig)) else [norm]
    norms = [str(n) for n in norms]
    bad = [n for n in norms if n not in NORMS]
    if bad:
        raise UserError(f"unknown norm {', '.join(bad)}; expected one of {', '.join(NORMS)} or a list of them")
    if not norms:
        raise UserError("norm=[] selects nothing")
    return list(dict.fromkeys(norms))


def selected_attacks(attack_cfg: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """``{name: (attack function, options)}`` from ``cfg.attack`` (``{name: {_target_, name, ...}}``)."""
    if attack_cfg is None or not isinstance(attack_cfg, DictConfig) or len(attack_cfg) == 0:
        raise UserError("no attack selected; give attack=<name>, attack=[a,b] or attack=all")
    out = {}
    for key, node in attack_cfg.items():
        options = OmegaConf.to_container(node, resolve=True)
        target = options.pop("_target_", None)
        name = str(options.pop("name", key))
        if target is None:
            raise UserError(f"attack {key!r} has no _target_")
        try:
            fn = hydra.utils.get_method(target)
        except (ImportError, AttributeError, ValueError) as err:
            raise UserError(f"attack {name}: cannot import {target}: {err}") from None
        if not hasattr(fn, "norms") or not hasattr(fn, "budget"):
            raise UserError(f"attack {name}: {target} is not registered with @register_attack")
        out[name] = (fn, options)
    return out


def plan(attacks: dict[str, tuple[Any, dict]], norms: list[str], single: bool) -> list[tuple[str, str]]:
    """The (attack, norm) pairs to evaluate; unsupported pairs are an error when asked for singly."""
    pairs = []
    for name, (fn, _) in attacks.items():
        for norm in norms:
            if norm in fn.norms:
                pairs.append((name, norm))
            elif single:
                raise UserError(f"attack {name} does not support norm={norm} (it supports {', '.join(fn.norms)})")
            else:
                log.info("skipping %s-%s: %s supports %s only", name, norm, name, ", ".join(fn.norms))
    if not pairs and not is_multirun():
        raise UserError(f"no selected attack supports norm={','.join(norms)}")
    return pairs  # a -m job whose one combination is unsupported has nothing to do: not a failed job


def wants_reference(fn: Any) -> bool:
    """The attack takes ``reference=(images, labels)`` (the data stability attack): it gets the training set."""
    try:
        return "reference" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def evaluate_one(model, x, y, name, fn, params, norm, cfg, *, device, thresholds, zero_grad, progress,
                 config, reference=None, best=None, source=None) -> dict:
    """Run one (attack, norm), write its three files, return its summary.

    ``source``: ``(label, path, model)`` of a transfer evaluation (crafted on ``model``, scored on the
    target), whose result is stored as ``label``. ``config``: ``result_config(...)``, stored for the cache.
    ``reference``: the training set
    ``(x [N,C,H,W], y [N])``, passed to attacks that take one. ``best``: the ``RunningBest`` of this norm
    in this call: its images are the ``x_init`` of attacks that take one, and this result updates it.
    """
    from robust_cli.evaluation.checks import curve_check, unbounded_check
    from robust_cli.evaluation.curves import error_curve
    from robust_cli.evaluation.runner import run_attack
    from robust_cli.evaluation.summary import summarize

    task = progress.add_task(f"{name}-{norm}", total=int(x.shape[0]))
    torch.manual_seed(cfg.seed)
    extra = {"reference": reference} if reference is not None and wants_reference(fn) else {}
    result = run_attack(
        model, x, y, fn, norm, {**params, **extra}, batch_size=cfg.batch_size, eps_search=cfg.eps_search,
        search_steps=cfg.search_steps, device=device, on_batch=lambda k: progress.advance(task, k),
        x_init=None if best is None else best.start(), craft_model=None if source is None else source[2],
    )
    if best is not None:
        best.update(result)
    label = name if source is None else source[0]
    summary = summarize(
        result.frame, attack=label, norm=norm, x_norm=result.x_norm, eps=float(cfg.eps.get(norm, math.nan)),
        thresholds=thresholds.get(norm, []), seconds=result.seconds,
        forward_per_sample=result.forward_per_sample, backward_per_sample=result.backward_per_sample,
    )
    eps, err = error_curve(result.frame["distance"].to_numpy())
    summary["budget"] = bool(fn.budget)
    summary["search_resolution"] = result.resolution
    summary["checks"] = {
        **curve_check(err, result.non_monotone),
        **unbounded_check(bool(fn.budget), summary["success_rate"], name),
        "zero_grad_fraction": zero_grad,
    }
    summary["config"] = config
    if source is not None:
        summary["source"], summary["transfer_of"] = source[1], name
    out = RunDir(cfg.run).eval.result(label, norm)
    out.write(result.frame, pd.DataFrame({"eps": eps, "error": err}), summary)
    if cfg.save_adversarials > 0 and result.x_adv is not None:
        from robust_cli.evaluation.saved import save_adversarials

        saved = save_adversarials(out, result.frame, x, result.x_adv, int(cfg.save_adversarials))
        log.info("%s-%s: saved %d adversarials to %s", name, norm, saved, out.adversarials_path)
    return summary


def evaluate(cfg: DictConfig) -> pd.DataFrame:
    """Everything ``robust eval`` does; returns the merged summary table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from robust_cli.data import load_split
    from robust_cli.data.sets import thresholds_of
    from robust_cli.evaluation.lipschitz import lipschitz_statistics, zero_gradient_fraction
    from robust_cli.device import resolve_device
    from robust_cli.reporting.console import print_summary
    from robust_cli.reporting.plots import plot_error_curves
    from robust_cli.reporting.tables import evaluated, merge, update_cross_checks
    from robust_cli.training.checkpoint import load_trained_model

    run_dir = RunDir(cfg.run)
    if not run_dir.is_dir():
        raise UserError(f"run={cfg.run} is not a directory; give run=<a finished train run directory>")
    if cfg.n_examples < 1 or cfg.batch_size < 1:
        raise UserError("n_examples and batch_size must be at least 1")
    if cfg.universal and cfg.universal_images < 1:
        raise UserError(f"universal_images={cfg.universal_images}: must be at least 1")
    if cfg.save_adversarials < 0:
        raise UserError(f"save_adversarials={cfg.save_adversarials}: must be >= 0 (0 saves none)")
    if cfg.eps_search not in ("bisection", "grid"):
        raise UserError(f"eps_search must be bisection or grid, got {cfg.eps_search}")
    from robust_cli.evaluation.certified import certify_run, selected_methods

    norms = selected_norms(cfg.norm)
    methods = selected_methods(OmegaConf.to_container(cfg.certify) if isinstance(cfg.certify, ListConfig)
                               else cfg.certify)
    attacks = selected_attacks(cfg.attack)
    single = len(attacks) == 1 and len(norms) == 1 and not is_multirun()
    pairs = plan(attacks, norms, single)
    if not pairs:
        return pd.DataFrame()

    device = resolve_device(cfg.device)
    model, train_cfg = load_trained_model(run_dir, device=device)
    source = None
    if cfg.get("source"):
        from robust_cli.evaluation.transfer import load_source

        source = load_source(cfg.source, train_cfg, device)
    data_cfg = with_root(train_cfg.get("data"), cfg.data.root)  # data.root= / $ROBUST_DATA over the stored one
    x, y = load_split(train_cfg.dataset, data_cfg, "test")
    n = min(int(cfg.n_examples), int(x.shape[0]))
    x, y = x[:n], y[:n]
    thresholds = thresholds_of(train_cfg.dataset, cfg.get("thresholds"))
    eval_dir = run_dir.eval

    x, y = x.to(device), y.to(device)
    model_id = model_identity(model)
    zero_grad = None  # computed on the first pair that is not reused
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), transient=False)
    configs = {}  # every pair's stored result is checked before any attack runs: a refusal changes nothing
    for name, norm in pairs:
        fn, params = attacks[name]
        config = result_config(fn, params, n, cfg, model_id)
        label = name
        if source is not None:
            label = source.label(name)
            config["params"] = {**config["params"], "source_model": source.model_id}
        eps = float(cfg.eps.get(norm, math.nan))
        if cached_summary(eval_dir.result(label, norm), config, eps, thresholds.get(norm, []), attack=name,
                          force=bool(cfg.force)) is not None:
            log.info("%s-%s: already evaluated, reusing (force=true recomputes)", name, norm)
            if cfg.save_adversarials > 0 and not eval_dir.result(name, norm).adversarials_path.is_file():
                log.info("%s-%s: a reused result holds no images; force=true to save adversarials", name, norm)
        else:
            configs[name, norm] = config
    reference = None
    if any(wants_reference(attacks[name][0]) for name, _ in configs):
        reference = load_split(train_cfg.dataset, data_cfg, "train")
    from robust_cli.evaluation.runner import RunningBest

    bests = {norm: RunningBest() for norm in norms}  # x_init of later attacks (cached results hold no images)
    with progress:
        for (name, norm), config in configs.items():
            fn, params = attacks[name]
            if zero_grad is None:
                zero_grad = zero_gradient_fraction(model, x, y, cfg.batch_size)
            evaluate_one(model, x, y, name, fn, params, norm, cfg, device=device, thresholds=thresholds,
                         zero_grad=zero_grad, progress=progress, config=config, reference=reference,
                         best=bests[norm] if source is None else None,
                         source=None if source is None else (source.label(name), source.path, source.model))

    if methods:
        certify_run(model, x, y, methods, norms, eval_dir, eps=dict(cfg.eps), thresholds=thresholds,
                    steps=int(cfg.search_steps), batch_size=int(cfg.batch_size), model_id=model_id,
                    force=bool(cfg.force))

    if cfg.universal:
        from robust_cli.evaluation.universal_run import universal_run

        universal_run(model, x, load_split(train_cfg.dataset, data_cfg, "train")[0][:int(cfg.universal_images)],
                      norms, dict(cfg.eps), eval_dir, seed=int(cfg.seed), device=device)

    with eval_dir.lock():  # concurrent -m jobs merge one after another
        stale = lipschitz_stale(eval_dir.read_lipschitz(), n, model_id)  # n_examples changed, or retrained
        if cfg.lipschitz and (cfg.force or stale):
            stats = {**lipschitz_statistics(model, x, y, cfg.batch_size), "model": model_id}
            eval_dir.write_lipschitz(stats)
            log.info("lipschitz: max |grad loss| %.4g, max |J| %.4g, prod |W| %.4g",
                     stats["max_grad_norm"], stats["max_jacobian_norm"], stats["weight_norm_product"])
        update_cross_checks(eval_dir)
        summary, curves = merge(eval_dir)
        plot_error_curves(curves, eval_dir.plot_path, title=str(run_dir))
        checks = {f"{s['attack']}-{s['norm']}": s.get("checks", {}) for _, s in evaluated(eval_dir)}
    print_summary(summary, checks)
    log.info("wrote %s", eval_dir)
    summary.attrs["pairs"] = pairs  # what this call evaluated or reused (job_result)
    return summary


def job_result(summary: pd.DataFrame) -> dict[str, str]:
    """What a ``-m`` job reports in the sweep's ``jobs.csv`` (robust_cli.sweep): ``evaluated``, the job's
    (attack, norm) pairs, and ``median_distance``, each pair's median adversarial distance
    (``fgsm-linf=0.0312 pgd-linf=0.0251``; ``inf`` where the attack failed on most images)."""
    pairs = summary.attrs.get("pairs", [])
    medians = {(r.attack, r.norm): r.median_distance for r in summary.itertuples()} if len(summary) else {}
    return {"evaluated": " ".join(f"{a}-{n}" for a, n in pairs),
            "median_distance": " ".join(f"{a}-{n}={medians.get((a, n), math.nan):.4g}" for a, n in pairs)}


@hydra.main(config_path="pkg://robust_cli.conf", config_name="eval", version_base=None)
@user_errors
def _hydra_main(cfg: DictConfig) -> dict[str, str]:
    return job_result(evaluate(cfg))  # a -m job's row of jobs.csv


def main() -> None:
    """``robust eval`` (``sys.argv`` holds the overrides); a SLURM submission that sbatch refuses is one
    line (robust_cli.slurm)."""
    from robust_cli.slurm import report_sbatch_refusals

    report_sbatch_refusals()
    _hydra_main()
