"""Run the ``robust`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def robust(*args: str, cwd: Path | None = None, env: dict | None = None,
           timeout: int = 600) -> subprocess.CompletedProcess:
    """``robust <args>`` via ``python -m robust_cli.cli``; returns the completed process (text output)."""
    full_env = {k: v for k, v in os.environ.items() if k != "ROBUST_DATA"}  # tests choose their data
    full_env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "robust_cli.cli", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def only_run_dir(out_dir: Path) -> Path:
    """The single train run directory under ``out_dir`` (the one holding run.json)."""
    runs = [p.parent for p in out_dir.glob("train/*/*/*/*/run.json")]
    assert len(runs) == 1, f"expected one run under {out_dir}, found {runs}"
    return runs[0]


# ---------------------------------------------------------------- in-process runs (fast: no interpreter start)

#: warning categories Python shows by default (the others are ignored outside ``__main__``)
_HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def robust_in_process(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``robust <args>`` through the same entry point (``robust_cli.cli.main``) in this process.

    What a user would see on stderr is collected: the text written to ``sys.stderr`` (the one-line errors,
    the rich log handler, Hydra's "Error executing job" report and its traceback) and every warning Python
    shows by default, one line each (pytest would otherwise record them silently). ``SystemExit`` becomes
    the return code; an exception escaping ``main`` is written out as the traceback a user would get, code 1.
    Saves the whole Hydra start-up of a subprocess (2-4 s on a loaded machine) per call.
    """
    import contextlib
    import io
    import traceback
    import warnings

    from robust_cli import cli

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = list(sys.argv), os.getcwd()
    saved_env = dict(os.environ)
    os.environ.pop("ROBUST_DATA", None)
    os.environ.update({"COLUMNS": "200", **(env or {})})
    code: object = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            try:
                code = cli.main(list(args))
            except SystemExit as stop:
                code = stop.code
            except BaseException:  # what the interpreter would print
                traceback.print_exc(file=err)
                code = 1
        for w in caught:
            if not issubclass(w.category, _HIDDEN_WARNINGS):
                err.write(f"{w.filename}:{w.lineno}: {w.category.__name__}: {' '.join(str(w.message).split())}\n")
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    rc = 0 if code is None else code if isinstance(code, int) else 1
    if not isinstance(code, (int, type(None))):
        err.write(f"{code}\n")
    return subprocess.CompletedProcess(["robust", *args], rc, out.getvalue(), err.getvalue())


def compose_checked(name: str, overrides: list[str]):
    """The config ``robust <name> <overrides>`` composes, canonicalised and value-checked as the CLI does
    (``robust_cli.norms.canonicalize_config``, ``robust_cli.config.check_config``), for in-process tests."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from robust_cli.config import check_config, register_configs
    from robust_cli.norms import canonicalize_config

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("robust_cli.conf", version_base=None):
            cfg = canonicalize_config(compose(name, overrides=overrides))
    finally:
        GlobalHydra.instance().clear()
    check_config(cfg)
    return cfg


def patched_run(tmp_path: Path, monkeypatch, model, x, y, in_shape=(1, 4, 4)) -> Path:
    """An empty run directory ``<tmp_path>/run`` whose model is ``model`` and whose every split is ``(x, y)``:
    ``load_trained_model`` and ``load_split`` patched, for evaluations of a known (linear) model."""
    from omegaconf import OmegaConf

    from robust_cli import data
    from robust_cli.training import checkpoint

    run = tmp_path / "run"
    run.mkdir()
    train_cfg = OmegaConf.create({"dataset": {"name": "mnist", "in_shape": list(in_shape)}, "data": {}})
    monkeypatch.setattr(checkpoint, "load_trained_model", lambda run_dir, device="cpu", **_: (model, train_cfg),
                        raising=False)
    monkeypatch.setattr(data, "load_split", lambda ds, dc, split: (x, y), raising=False)
    return run
