"""``robust``: dispatch ``train``, ``eval`` and ``data-lipschitz`` to their Hydra apps.

Before handing over, the overrides are composed once (every combination, for ``-m``) so that a typo, an
unknown option or a wrong type ends in one clear line and exit status 2 instead of Hydra's multi-line
report, and before any run directory is touched.
"""

from __future__ import annotations

import importlib
import re
import sys
from importlib import resources

from robust_cli.errors import UserError

APPS = {
    "train": ("robust_cli.train_app", "train", "train dataset x model x defense into a resumable run directory"),
    "eval": ("robust_cli.eval_app", "eval", "attack a trained run: distances, error curves, summaries, plots"),
    "detect": ("robust_cli.detect_app", "detect", "gradient-norm attack detection and its evasive attack"),
    "data-lipschitz": ("robust_cli.data_lipschitz_app", "data_lipschitz",
                       "the Lipschitz constant of a data set (Finlay et al. Table 2)"),
    "report": ("robust_cli.report_app", "report", "paper-style tables, plots and an HTML page over runs and sweeps"),
}
#: the list-valued keys of ``robust report``, given as ``key=a,b`` (no sweep in a report) or ``key=[a,b]``
REPORT_LISTS = ("runs", "by", "metrics", "attacks", "format")
# Hydra flags that print something and exit: nothing to validate
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc"}
#: flags that print the composed config instead of running it: the config is checked, its input files are not
_SHOW_FLAGS = {"--cfg", "-c"}
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}


def config_groups() -> dict[str, list[str]]:
    """``{group: [options]}`` from the shipped ``conf/`` folders (``attack`` also offers ``all``)."""
    root = resources.files("robust_cli.conf")
    groups = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.is_dir() and not entry.name.startswith(("_", ".")) and entry.name != "hydra":
            options = sorted(p.name[:-5] for p in entry.iterdir() if p.name.endswith(".yaml"))
            groups[entry.name] = options + (["all"] if entry.name == "attack" else [])
    return groups


def expand_attack_all(args: list[str]) -> list[str]:
    """``attack=all`` (alone, in a list or as one sweep value) -> every file of ``conf/attack``.

    ``all`` is an alias expanded here, at the command line, rather than a YAML file listing the attacks:
    so adding an attack is one module and one YAML, and ``attack=all`` includes it without a third edit.
    ``attack=all`` -> ``attack=[a,b,...]``; ``attack=[fgsm,all]`` -> ``attack=[fgsm,a,b,...]``;
    ``-m attack=fgsm,all`` -> ``attack=fgsm,[a,b,...]`` (one job with all of them).
    """
    names = [n for n in config_groups()["attack"] if n != "all"]
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key == "attack":
            def in_list(m: re.Match) -> str:
                items = [item.strip() for item in m.group(1).split(",")]
                return "[" + ",".join(n for item in items for n in (names if item == "all" else [item])) + "]"

            value = re.sub(r"\[([^\[\]]*)\]", in_list, value)
            values = re.split(r",(?![^\[]*\])", value)  # the sweep's values: commas outside brackets
            arg = key + "=" + ",".join("[" + ",".join(names) + "]" if v.strip() == "all" else v for v in values)
        out.append(arg)
    return out


def _quote(item: str) -> str:
    """``item`` as a Hydra string, quoted where it holds characters Hydra's grammar would parse (a glob)."""
    item = item.strip()
    if re.fullmatch(r"[A-Za-z0-9_./@+-]*", item) or (item[:1] in "'\"" and item[-1:] == item[:1]):
        return item
    return "'" + item.replace("\\", "\\\\").replace("'", "\\'") + "'"


def report_lists(args: list[str]) -> list[str]:
    """``robust report``'s ``runs=a,b`` -> ``runs=[a,b]`` and a glob quoted (``runs='outputs/*/x'``): a report
    sweeps nothing, so a comma there lists values, as ``by=defense,model`` reads."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in REPORT_LISTS and not value.startswith("["):
            items = [_quote(v) for v in value.split(",")] if value else []
            arg = f"{key}=[{','.join(items)}]" if len(items) != 1 else f"{key}={items[0]}"
        elif sep and key in REPORT_LISTS:
            arg = f"{key}=[{','.join(_quote(v) for v in value.strip('[]').split(',') if v.strip())}]"
        out.append(arg)
    return out


#: ``robust eval`` keys written without their ``model.`` prefix (``model=torchscript path=m.pt``)
MODEL_SHORTHAND = ("path", "factory", "name", "threat_model", "mean", "std", "in_shape")


def expand_model_shorthand(args: list[str]) -> list[str]:
    """``robust eval model=<kind> path=... factory=... name=...`` -> ``model.kind=<kind> model.path=...``.

    ``model`` is a config group of ``robust train`` (the architectures), so Hydra would read ``model=x`` as
    choosing ``conf/model/x.yaml``; in ``robust eval`` it names an external model's kind
    (``robust_cli.config.ExternalModelConfig``). The spec's other keys may be given bare, as the short form
    reads; they are rewritten only where ``model=`` is given.
    """
    if not any(a.partition("=")[0].lstrip("+") == "model" and "=" in a for a in args):
        return args
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+~")
        if sep and bare == "model":
            arg = f"model.kind={value}"
        elif sep and bare in MODEL_SHORTHAND:
            arg = f"model.{bare}={value}"
        out.append(arg)
    return out


def usage() -> str:
    lines = ["usage: robust <command> [hydra overrides]   (robust <command> --help for the composed config)", "",
             "commands:"]
    lines += [f"  {name:<16}{doc}" for name, (_, _, doc) in APPS.items()]
    lines += ["", "config groups (group=option):"]
    lines += [f"  {group:<12}{', '.join(opts)}" for group, opts in config_groups().items()]
    lines += ["", "examples:",
              "  robust train experiment=quickstart",
              "  robust train dataset=mnist model=lenet5 defense=tulip data.root=../shared/data",
              "  robust eval run=<train run dir> attack=[fgsm,pgd] norm=[l2,linf] n_examples=500",
              "  robust eval model=torchscript path=m.pt dataset=cifar10 attack=pgd norm=linf",
              "  robust train -m defense=none,at_l2,tulip hydra/launcher=slurm",
              "  robust report runs='outputs/train/digits/*/*/*' by=defense,model"]
    return "\n".join(lines)


def _one_line(err: BaseException) -> str:
    """Hydra/OmegaConf's multi-line messages (and their causes) folded into one line."""
    parts = []
    while err is not None and len(parts) < 3:
        text = str(err).strip()
        if "Available options" in text:
            head, _, options = text.partition("Available options")
            options = options.split("Config search path")[0]  # Hydra appends its search path: noise here
            opts = [o.strip() for o in options.split("\n")[1:] if o.strip() and not o.strip().endswith("_schema")]
            text = f"{head.strip()} (available: {', '.join(opts)})"
        first = " ".join(line.strip() for line in text.splitlines()[:1] if line.strip())
        extra = [line.strip() for line in text.splitlines()[1:] if line.strip().startswith(("Key ", "Value "))]
        for piece in [first, *extra]:
            if piece and piece not in parts:
                parts.append(piece)
        err = err.__cause__ or err.__context__
    return "; ".join(parts) or "invalid configuration"


def _overrides(args: list[str]) -> tuple[list[str], bool]:
    """Split Hydra flags from overrides; ``(overrides, multirun)``."""
    overrides, multirun, skip = [], False, False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in _FLAGS_WITH_VALUE:
            skip = True
        elif arg.startswith("-"):
            continue
        else:
            overrides.append(arg)
    return overrides, multirun


#: how many of a sweep's combinations are composed before any job starts, whatever their values (then only those
#: with a value not seen yet, see ``_covering``)
FIRST_COMBOS = 64


def _covering(combos: list[list[str]]) -> list[list[str]]:
    """The sweep combinations composed before any job starts: the first ``FIRST_COMBOS``, then, of the rest,
    each one that holds an override (``key=value``) no earlier chosen combination holds, so that every value of
    every swept key is checked in at least one job's config (a bad 65th value of a long sweep too), while a
    huge grid is not composed twice in full."""
    chosen, seen = [], set()
    for i, combo in enumerate(combos):
        if i < FIRST_COMBOS or not seen.issuperset(combo):
            chosen.append(combo)
            seen.update(combo)
    return chosen


def validate(config_name: str, args: list[str], inputs: bool = True) -> str | None:
    """Compose ``config_name`` with the overrides (each sweep combination); the error line, or None.

    ``inputs=False`` checks the config alone, not the files a job would read (``--cfg job`` only shows the
    config, which must work on a machine without the data set)."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from omegaconf import open_dict

    from robust_cli.config import check_config, check_job_name, check_launcher, register_configs
    from robust_cli.norms import canonicalize_config
    from robust_cli.preflight import check_inputs

    register_configs()
    overrides, multirun = _overrides(args)
    try:
        if multirun:
            parsed = OverridesParser.create().parse_overrides(overrides)
            combos = [c for batch in BasicSweeper.split_arguments(parsed, None) for c in batch]
        else:
            combos = [overrides]
        GlobalHydra.instance().clear()
        with initialize_config_module("robust_cli.conf", version_base=None):
            for combo in _covering(combos):
                cfg = compose(config_name, overrides=list(combo), return_hydra_config=True)
                check_launcher(cfg.hydra)
                check_job_name(cfg.hydra)
                with open_dict(cfg):
                    del cfg["hydra"]
                check_config(canonicalize_config(cfg))  # values too
                if inputs:  # the files each job will read (a multirun's bad one fails now)
                    check_inputs(config_name, cfg)
    except UserError as err:
        return " ".join(str(err).split())
    except Exception as err:  # every composition error is the user's input
        return _one_line(err)
    finally:
        GlobalHydra.instance().clear()
    return None


def main(argv: list[str] | None = None) -> int:
    """``robust <command> [overrides]``: the exit status (2: bad input, 130: interrupted). Ctrl-C before a job
    has started (while torch and Hydra import, while the config is checked) is one line too, not a traceback;
    once a job runs, its app handles it (``robust_cli.apps``)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("robust: interrupted\n")
        return 130


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage() + "\n")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in APPS:
        sys.stderr.write(f"robust: error: unknown command {command!r}; expected one of {', '.join(APPS)}\n")
        return 2
    module_name, config_name, _ = APPS[command]
    rest = expand_model_shorthand(expand_attack_all(rest)) if command == "eval" else rest
    rest = expand_attack_all(rest) if command == "detect" else rest
    rest = report_lists(rest) if command == "report" else rest
    if _SHOW_FLAGS.intersection(rest) and _overrides(rest)[1]:  # Hydra's own refusal is a traceback
        sys.stderr.write("robust: error: --cfg shows one job's config and -m runs a sweep: give one of them\n")
        return 2
    if not _INFO_FLAGS.intersection(rest):
        problem = validate(config_name, rest, inputs=not _SHOW_FLAGS.intersection(rest))
        if problem:
            sys.stderr.write(f"robust: error: {problem}\n")
            return 2
    app = importlib.import_module(module_name)
    sys.argv = [f"robust {command}", *rest]
    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
