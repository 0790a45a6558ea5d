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
  (upper-bound) error curves in ``error_curves.png`` and listed in ``summary.csv`` as ``certified_<method>``;
  train runs only (``model=<kind>`` with ``certify=`` is refused before any attack runs).

``robust eval -m attack=fgsm,pgd norm=l2,linf`` runs one job per combination; each merges under a file
lock after writing its own directory, so the merged files end up holding every job.
``robust eval -m run=<dir1>,<dir2> ...`` evaluates several runs; the sweep's ``jobs.csv`` (in
``<out_dir>/sweeps/eval/<name from the overrides>``) lists each job's status, pairs and median distances.

The data set is read from the run's stored ``data.root`` (absolute), or from ``data.root=<dir>`` /
``$ROBUST_DATA`` where given (a moved data folder).

``robust eval run=<dir> shard=i/n`` attacks only the i-th of n slices of the images (whole batches) into
``eval/shards/<n>/<i>/``; the job finishing the last shard of a set merges them into the files above, exactly
as one unsharded run writes them (``robust eval -m run=<dir> shard=0/8,...,7/8 hydra/launcher=slurm``);
``robust eval run=<dir> merge=true`` merges finished sets on demand (robust_cli.evaluation.shards).
``precision=bf16|fp16`` runs the attacks' forward passes under autocast and ``compile=true`` through
torch.compile; the verification of every returned image stays fp32 (robust_cli.acceleration).

The data set is read from the run's stored ``data.root`` (absolute), or from ``data.root=<dir>`` /
``$ROBUST_DATA`` where given (a moved data folder).
"""

from __future__ import annotations

import contextlib
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
from robust_cli.evaluation.cache import cached_summary, model_identity, result_config
from robust_cli.rundir import RunDir

register_configs()
log = logging.getLogger("robust_cli.eval")

def fixed_budgets(cfg: DictConfig, norms: list[str]) -> dict[str, list[float]]:
    """``mode=fixed``: ``{norm: the eps.<norm> list}`` for the selected norms; ``{}`` in ``mode=distance``."""
    from robust_cli.config import check_eval_mode, eps_values

    check_eval_mode(cfg)
    if str(cfg.mode) != "fixed":
        return {}
    missing = [n for n in norms if n not in cfg.eps]
    if missing:
        raise UserError(f"mode=fixed needs eps.{missing[0]}=[...] (the budgets to attack at)")
    return {n: eps_values(cfg.eps[n], f"eps.{n}") for n in norms}


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


def with_targeted(attacks: dict[str, tuple[Any, dict]], targeted: bool) -> dict[str, tuple[Any, dict]]:
    """``targeted=true`` (or an ``attack.<name>.targeted=true``): such attacks are evaluated as
    ``<name>-targeted``, their results apart from the untargeted ones; an attack without the option is
    refused where ``targeted=true`` asks for it."""
    from robust_cli.schema import options_of

    out = {}
    for name, (fn, params) in attacks.items():
        if targeted and "targeted" not in options_of(fn):
            raise UserError(f"attack {name} has no targeted option; targeted=true takes attacks that have one")
        if targeted or params.get("targeted"):
            out[f"{name}-targeted"] = (fn, {**params, "targeted": True})
        else:
            out[name] = (fn, params)
    return out


def plan(attacks: dict[str, tuple[Any, dict]], norms: list[str], single: bool) -> list[tuple[str, str]]:
    """The (attack, norm) pairs to evaluate; unsupported pairs are an error when asked for singly."""
    from robust_cli.attacks.contract import norms_with

    pairs = []
    for name, (fn, params) in attacks.items():
        supported, why = norms_with(fn, params)
        for norm in norms:
            if norm in supported:
                pairs.append((name, norm))
            elif single:
                raise UserError(f"attack {name}{why} does not support norm={norm} (it supports "
                                f"{', '.join(supported)})")
            else:
                log.info("skipping %s-%s: %s%s supports %s only", name, norm, name, why, ", ".join(supported))
    if not pairs and not is_multirun():
        raise UserError(f"no selected attack supports norm={','.join(norms)}")
    return pairs  # a -m job whose one combination is unsupported has nothing to do: not a failed job


def attack_pair(model, x, y, name, fn, params, norm, cfg, *, device, progress, reference=None, best=None,
                index_offset: int = 0, queried=None, targets=None, keep_adv: bool = True, budgets=None, source=None):
    """Run one (attack, norm) on ``x`` ``[N,C,H,W]`` / ``y`` ``[N]``; returns ``(AttackResult, started_from,
    (the attacks whose images were this one's ``x_init``, recorded in its summary), ``bracketed_by`` (those
    whose distances were a budget attack's first upper brackets)).

    ``reference``: the training set ``(x [M,C,H,W], y [M])``, passed to attacks that take one. ``best``:
    the ``RunningBest`` of this norm in this call: its images are the ``x_init`` of attacks that take one,
    its distances the budget attacks' first upper brackets, and this result updates it. ``index_offset``:
    the index of ``x[0]`` among the evaluated images (shards). ``queried``: the model the attack queries
    (compiled / low precision; ``model`` by default). ``targets``: ``[N]`` target classes of a targeted
    attack. ``keep_adv``: the result keeps its images (some attack of this norm takes ``x_init``).
    ``budgets``: ``mode=fixed``, the eps of this norm a budget attack runs at (no search).
    ``source``: a transfer evaluation's source model (``transfer.Source``): the attack crafts on it, the
    target ``model`` decides every success.
    """
    from robust_cli.evaluation.runner import run_attack, takes_argument

    task = progress.add_task(f"{name}-{norm}", total=int(x.shape[0]))
    torch.manual_seed(cfg.seed)
    extra = {"reference": reference} if reference is not None and takes_argument(fn, "reference") else {}
    result = run_attack(
        model, x, y, fn, norm, {**params, **extra}, batch_size=cfg.batch_size, eps_search=cfg.eps_search,
        search_steps=cfg.search_steps, device=device, on_batch=lambda k: progress.advance(task, k),
        x_init=None if best is None else best.start(), targets=targets, rtol=float(cfg.eps_rtol),
        eps_tol=None if cfg.eps_tol is None else float(cfg.eps_tol),
        upper=None if best is None else best.distance, keep_adv=keep_adv,
        seed=int(cfg.seed), index_offset=index_offset, attack_model=queried, budgets=budgets,
        craft_model=None if source is None else source.model,
    )
    starts = best is not None and best.start() is not None and not fn.budget and takes_argument(fn, "x_init")
    started_from = list(best.sources) if starts else []
    bracketed = best is not None and best.distance is not None and fn.budget and budgets is None
    bracketed_by = list(best.bracket_sources) if bracketed and cfg.eps_search == "adaptive" else []
    if best is not None:
        best.update(result, name)
    return result, started_from, bracketed_by


def evaluate(cfg: DictConfig) -> pd.DataFrame:
    """Everything ``robust eval`` does; returns the merged summary table (empty for a shard whose set is
    not finished yet)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from robust_cli.acceleration import attack_model, check_precision
    from robust_cli.data import load_split
    from robust_cli.data.sets import thresholds_of
    from robust_cli.evaluation.checks import model_output_checks
    from robust_cli.device import resolve_device
    from robust_cli.eval_target import resolve_target
    from robust_cli.evaluation.lipschitz import zero_gradient_fraction
    from robust_cli.evaluation.results import eps_of, search_settings, write_merged, write_result
    from robust_cli.evaluation.shards import missing_shards, parse_shard, shard_done, shard_range, write_shard
    from robust_cli.reporting.console import print_summary
    from robust_cli.reporting.tracking import check_logger, log_evaluation
    from robust_cli.rundir.shards import ShardsDir

    check_logger(str(cfg.logger))
    if cfg.n_examples < 1 or cfg.batch_size < 1:
        raise UserError("n_examples and batch_size must be at least 1")
    if cfg.eps_search not in ("adaptive", "bisection", "grid"):
        raise UserError(f"eps_search must be adaptive, bisection or grid, got {cfg.eps_search}")
    if cfg.universal and cfg.universal_images < 1:
        raise UserError(f"universal_images={cfg.universal_images}: must be at least 1")
    if cfg.save_adversarials < 0:
        raise UserError(f"save_adversarials={cfg.save_adversarials}: must be >= 0 (0 saves none)")
    shard = parse_shard(cfg.get("shard"))
    if shard is not None and cfg.get("model") is not None and cfg.model.get("kind"):
        raise UserError(f"shard={cfg.shard} shards the evaluation of a train run (run=<dir>), not of model=")
    if shard is not None and (cfg.certify or cfg.universal or cfg.get("source") or cfg.save_adversarials):
        raise UserError(f"shard={cfg.shard} shards the attacks only; run certify=, universal=, source= and "
                        "save_adversarials= in an unsharded robust eval")
    if cfg.get("merge"):
        if shard is not None:
            raise UserError(f"merge=true merges the finished shards of the run; give it without shard={cfg.shard}")
        return merge_command(cfg)
    check_precision(str(cfg.precision))
    from robust_cli.evaluation.certified import certify_run, selected_methods
    from robust_cli.evaluation.runner import predict
    from robust_cli.preflight import check_eval_writable

    norms = selected_norms(cfg.norm)
    methods = selected_methods(OmegaConf.to_container(cfg.certify) if isinstance(cfg.certify, ListConfig)
                               else cfg.certify)
    if methods and cfg.get("model") is not None and cfg.model.get("kind"):
        raise UserError(f"certify= bounds the project's architectures (run=<dir>), not model={cfg.model.kind}; "
                        "drop certify= to attack the model")
    attacks = with_targeted(selected_attacks(cfg.attack), bool(cfg.targeted))
    if str(cfg.precision) != "fp32" and any(params.get("targeted") for _, params in attacks.values()):
        raise UserError(f"precision={cfg.precision} finishes untargeted attacks in fp32 only; targeted "
                        "attacks run with precision=fp32")
    single = len(attacks) == 1 and len(norms) == 1 and not is_multirun()
    pairs = plan(attacks, norms, single)
    if not pairs:
        return pd.DataFrame()

    device = resolve_device(cfg.device)
    target = resolve_target(cfg, device)  # run=<dir> or model=<kind> (robust_cli.eval_target)
    model, dataset_cfg, data_cfg, eval_dir = target.model, target.dataset, target.data, target.eval_dir
    if target.record is None:  # a train run: eval/ must be a writable folder (an external model's is ours)
        check_eval_writable(RunDir(cfg.run))
    x, y = load_split(dataset_cfg, data_cfg, "test")
    source = None
    if cfg.get("source"):
        import types

        from robust_cli.evaluation.transfer import load_source

        if target.record is not None:
            raise UserError(f"source={cfg.source} transfers to a train run (run=<dir>), not to model=")
        source = load_source(cfg.source, types.SimpleNamespace(dataset=dataset_cfg), device)

    def label_of(name: str) -> str:
        """Where a pair's result is stored: the attack's name, or a transfer's ``transfer_<attack>_<id>``."""
        return name if source is None else source.label(name)
    n = min(int(cfg.n_examples), int(x.shape[0]))
    x, y = x[:n], y[:n]
    thresholds = thresholds_of(dataset_cfg, cfg.get("thresholds"))
    budgets = fixed_budgets(cfg, norms)
    if budgets:  # mode=fixed: robust accuracy at exactly the budgets attacked
        thresholds = {**thresholds, **budgets}
    targets = None
    if any(params.get("targeted") for _, params in attacks.values()):
        from robust_cli.evaluation.runner import choose_targets

        targets = choose_targets(y, int(dataset_cfg.num_classes), str(cfg.targets), int(cfg.seed))
    x, y = x.to(device), y.to(device)
    queried = attack_model(model, device, precision=str(cfg.precision), compile=bool(cfg.compile))
    lo, hi = (0, n) if shard is None else shard_range(n, int(cfg.batch_size), *shard)
    shards = ShardsDir.of(eval_dir) if shard is not None else None
    predict(model, x, cfg.batch_size)  # logits that are not finite are refused before anything is logged or written
    model_id = model_identity(model)
    zero_grad = None  # computed on the first pair that is not reused
    model_checks = None  # likewise (randomised model, softmax output: checks.model_output_checks)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), transient=False)
    configs = {}  # every pair's stored result is checked before any attack runs: a refusal changes nothing
    sharded = []  # (attack, norm, config) of the pairs this shard contributes to
    refused = None
    # writers of eval/ hold its lock (no lock before eval/ exists: a refusal creates nothing)
    with eval_dir.lock() if eval_dir.is_dir() else contextlib.nullcontext():
        if eval_dir.is_dir():
            for tmp in eval_dir.remove_temp_files():
                log.info("removed %s (left by a killed write)", tmp)
        reused = []
        for name, norm in pairs:  # first every refusal (nothing written), then the updates of reused results
            fn, params = attacks[name]
            # targeted: which targets were drawn is part of what produced the result
            config = result_config(fn, {**params, "targets": str(cfg.targets)} if params.get("targeted") else params,
                                   n, cfg, model_id)
            if budgets and fn.budget:  # attacked at the listed eps, no search: a result of its own
                config.update(eps_search=f"fixed {budgets[norm]}", search_steps=None, eps_rtol=None, eps_tol=None)
            if source is not None:  # crafted on another model: a result of its own, stored as its label
                config["params"] = {**config["params"], "source_model": source.model_id}
            try:
                stored = cached_summary(eval_dir.result(label_of(name), norm), config, math.nan, None,
                                        attack=name, force=bool(cfg.force))
            except UserError as err:
                refused = refused or err
                continue
            if stored is not None:
                if cfg.save_adversarials > 0 and not eval_dir.result(label_of(name), norm).adversarials_path.is_file():
                    # asked for images a stored result lacks: the same settings again, this time keeping them
                    log.info("%s-%s: the stored result holds no adversarial images; recomputing it to save them",
                             name, norm)
                else:
                    reused.append((name, norm, config))
                    continue
            if shard is not None:
                sharded.append((name, norm, config))
                if not cfg.force and shard_done(shards.result(shard[1], shard[0], name, norm), config):
                    log.info("%s-%s: shard %s already evaluated, reusing", name, norm, cfg.shard)
                    continue
            configs[name, norm] = config
        if refused is not None:
            raise refused
        for name, norm, config in reused:  # a changed eps.<norm> or thresholds: read off the stored distances
            cached_summary(eval_dir.result(name, norm), config, eps_of(cfg.eps, norm), thresholds.get(norm, []),
                           attack=name, force=bool(cfg.force))
            log.info("%s-%s: already evaluated, reusing (force=true recomputes)", name, norm)
    from robust_cli.evaluation.runner import RunningBest, takes_argument

    reference = None
    if any(takes_argument(attacks[name][0], "reference") for name, _ in configs):
        reference = load_split(dataset_cfg, data_cfg, "train")

    bests = {norm: RunningBest() for norm in norms}  # x_init of later attacks (cached results hold no images)
    if shard is None and source is None:  # reused results' distances bound the searches as when computed
        for name, norm, _ in reused:
            frame = eval_dir.result(label_of(name), norm).read_per_sample()
            bests[norm].add_distances(torch.tensor(frame["distance"].to_numpy(dtype="float64")), name)
    # minimal-norm attacks first: their distances are the budget attacks' first upper brackets (adaptive)
    order = sorted(configs.items(), key=lambda item: bool(attacks[item[0][0]][0].budget))
    # images are kept (N of them per norm) only in a norm where some attack starts from them
    keep = {norm: any(takes_argument(attacks[a][0], "x_init") and not attacks[a][0].budget
                      for (a, m) in configs if m == norm) for norm in norms}
    with progress:
        for (name, norm), config in order:
            fn, params = attacks[name]
            result, started_from, bracketed_by = attack_pair(
                model, x[lo:hi], y[lo:hi], name, fn, params, norm, cfg, device=device, progress=progress,
                reference=reference, best=bests[norm] if source is None else None, index_offset=lo,
                queried=queried, targets=targets[lo:hi] if targets is not None and params.get("targeted") else None,
                keep_adv=keep[norm] or cfg.save_adversarials > 0, budgets=budgets.get(norm) if budgets else None,
                source=source)
            if model_checks is None:
                model_checks = model_output_checks(model, x[:cfg.batch_size])
            if shard is not None:
                settings = {"eps": eps_of(cfg.eps, norm), "thresholds": list(thresholds.get(norm) or []),
                            "batch_size": int(cfg.batch_size), "lipschitz": bool(cfg.lipschitz),
                            "search": search_settings(cfg), "mode": str(cfg.mode),
                            "budgets": budgets.get(norm) if budgets else None, "model_checks": model_checks}
                write_shard(shards.result(shard[1], shard[0], name, norm), result, attack=name, norm=norm,
                            budget=fn.budget, config=config, settings=settings, index=shard[0], count=shard[1],
                            start=lo, stop=hi, started_from=started_from, bracketed_by=bracketed_by)
                continue
            if zero_grad is None:
                zero_grad = zero_gradient_fraction(model, x, y, cfg.batch_size)
            out = eval_dir.result(label_of(name), norm)
            with eval_dir.lock():  # writers of eval/ hold its lock: a temp file found under it is a killed write's
                write_result(out, result, attack=label_of(name), norm=norm, budget=fn.budget,
                             eps=eps_of(cfg.eps, norm), thresholds=thresholds.get(norm, []), zero_grad=zero_grad,
                             config=config, started_from=started_from, search=search_settings(cfg),
                             mode=str(cfg.mode), budgets=budgets.get(norm) if budgets else None,
                             model_checks=model_checks,
                             source=None if source is None else {"source": source.path, "transfer_of": name},
                             bracketed_by=bracketed_by)
                if cfg.save_adversarials > 0 and result.x_adv is not None:
                    from robust_cli.evaluation.saved import save_adversarials

                    saved = save_adversarials(out, result.frame, x, result.x_adv, int(cfg.save_adversarials))
                    log.info("%s-%s: saved %d adversarials to %s", name, norm, saved, out.adversarials_path)

    if methods:
        certify_run(model, x, y, methods, norms, eval_dir, eps={m: eps_of(cfg.eps, m) for m in norms},
                    thresholds=thresholds, steps=int(cfg.search_steps), batch_size=int(cfg.batch_size),
                    model_id=model_id, force=bool(cfg.force))
    if cfg.universal:
        from robust_cli.evaluation.universal_run import universal_run

        universal_run(model, x, load_split(dataset_cfg, data_cfg, "train")[0][:int(cfg.universal_images)],
                      norms, {m: eps_of(cfg.eps, m) for m in norms}, eval_dir, seed=int(cfg.seed), device=device)

    if shard is not None and sharded:
        run_dir = RunDir(cfg.run)
        waiting = {f"{a}-{m}": missing_shards(shards, shard[1], a, m, c) for a, m, c in sharded}
        waiting = {k: v for k, v in waiting.items() if v}
        if waiting:
            log.info("shard %s done; still to run: %s (the job finishing the last shard merges them, or robust "
                     "eval run=%s merge=true)", cfg.shard, "; ".join(
                         f"{k} {' '.join(f'{i}/{shard[1]}' for i in v)}" for k, v in waiting.items()), run_dir)
            frame = pd.DataFrame()
            frame.attrs["pairs"] = pairs
            return frame
        from robust_cli.evaluation.shards import merge_pairs

        summary, checks = merge_pairs(run_dir, model, x, y, shard[1], sharded, force=bool(cfg.force))
    else:
        if target.record is not None:
            with eval_dir.lock():
                if eval_dir.read_spec() != target.record:
                    eval_dir.write_spec(target.record)  # an external model: what it is and where it was read last
        summary, checks = write_merged(eval_dir, model, x, y, batch_size=int(cfg.batch_size),
                                       lipschitz=bool(cfg.lipschitz), force=bool(cfg.force), model_id=model_id,
                                       title=target.title)
    from robust_cli.reporting.tables import evaluated

    log_evaluation(cfg, eval_dir, evaluated(eval_dir), eval_dir.plot_path, [eval_dir.summary_path,
                                                                            eval_dir.curves_path])
    print_summary(summary, checks)
    log.info("wrote %s", eval_dir)
    summary.attrs["pairs"] = pairs  # what this call evaluated or reused (job_result)
    return summary


def load_evaluated(cfg: DictConfig, run_dir: RunDir, n_examples: int | None = None):
    """``(model, x [N,C,H,W], y [N], train config, device)``: the run's model and its first ``N =
    min(n_examples, test set)`` test images, on the device of ``cfg.device``."""
    from robust_cli.data import load_split
    from robust_cli.device import resolve_device
    from robust_cli.training.checkpoint import load_trained_model

    device = resolve_device(cfg.device)
    model, train_cfg = load_trained_model(run_dir, device=device)
    data_cfg = with_root(train_cfg.get("data"), cfg.data.root)  # data.root= / $ROBUST_DATA over the stored one
    x, y = load_split(train_cfg.dataset, data_cfg, "test")
    n = min(int(cfg.n_examples if n_examples is None else n_examples), int(x.shape[0]))
    return model, x[:n].to(device), y[:n].to(device), train_cfg, device


def merge_command(cfg: DictConfig) -> pd.DataFrame:
    """``robust eval run=<dir> merge=true``: merge every finished shard set of the run (the settings are the
    shards' own; ``device`` and ``data.root`` are this command's)."""
    from robust_cli.evaluation.shards import finished_sets, merge_pairs
    from robust_cli.reporting.console import print_summary

    run_dir = RunDir(cfg.run)
    done, unfinished = finished_sets(run_dir)
    for line in unfinished:
        log.warning("not merged: %s", line)
    if not done:
        raise UserError(f"{run_dir} has no finished shard set to merge"
                        + (f" ({'; '.join(unfinished)})" if unfinished else " (robust eval ... shard=i/n writes one)"))
    summary = pd.DataFrame()
    merged = []
    for count, triples in done.items():
        n = int(triples[0][2]["n"])
        model, x, y, _, _ = load_evaluated(cfg, run_dir, n_examples=n)
        summary, checks = merge_pairs(run_dir, model, x, y, count, triples)
        merged += [(a, m) for a, m, _ in triples]
    print_summary(summary, checks)
    summary.attrs["pairs"] = merged
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
