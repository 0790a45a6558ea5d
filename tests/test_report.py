"""``robust report`` over digits quickstart runs: mean ± std against pandas, Markdown round trip, plots,
sweep directories as input, the refusals, and (slow) the HTML page in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import robust

from robust_cli.errors import UserError
from robust_cli.report_app import build
from robust_cli.reporting.render import parse_markdown


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Four quickstart runs (defense none and fgsm_mix, seeds 0 and 1; 1 epoch), trained as one sweep and
    evaluated as one eval sweep (fgsm, deepfool in linf and l2 on 20 images): built once for the module."""
    out = tmp_path_factory.mktemp("report")
    train = robust("train", "-m", "experiment=quickstart", "epochs=1", "seed=0,1", "defense=none,fgsm_mix",
                   f"out_dir={out}", "hydra.job.name=qs", cwd=out)
    assert train.returncode == 0, train.stderr
    jobs = pd.read_csv(out / "sweeps" / "qs" / "jobs.csv")
    dirs = [str(out / d) if not Path(d).is_absolute() else d for d in jobs["run_dir"]]
    ev = robust("eval", "-m", "run=" + ",".join(dirs), "attack=[fgsm,deepfool]", "norm=[linf,l2]",
                "n_examples=20", f"out_dir={out}", "hydra.job.name=qs_eval", cwd=out)
    assert ev.returncode == 0, ev.stderr
    return {"out": out, "dirs": dirs, "sweep": out / "sweeps" / "qs", "eval_sweep": out / "sweeps" / "qs_eval"}


def report(hydra_compose, tmp: Path, **options) -> Path:
    """``robust report`` in process (composed like the CLI; ``out`` under ``tmp`` unless given)."""
    overrides = [f"{k}={v}" for k, v in {"out": str(tmp / "rep"), **options}.items()]
    cfg = hydra_compose(config_name="report", overrides=overrides)
    return build(cfg, overrides)


def _list(items) -> str:
    return "[" + ",".join(f"'{i}'" for i in items) + "]"


def _worst(summary: pd.DataFrame, norm: str) -> pd.Series:
    """The worst case row of ``norm``, or its one attack's (l2 here: deepfool only)."""
    rows = summary[summary["norm"] == norm]
    worst = rows[rows["attack"] == "worst_case"]
    assert len(worst) == 1 or len(rows) == 1
    return worst.iloc[0] if len(worst) else rows.iloc[0]


def test_mean_std_equal_pandas_and_markdown_parses_back(runs, hydra_compose, tmp_path):
    out = report(hydra_compose, tmp_path, runs=_list(runs["dirs"]), plots="false")
    per_run = {d: pd.read_csv(Path(d) / "eval" / "summary.csv") for d in runs["dirs"]}
    finlay = pd.read_csv(out / "tables" / "finlay.csv")
    header, rows = parse_markdown((out / "tables" / "finlay.md").read_text())
    assert header[0] == "defense" and [r[0] for r in rows] == list(finlay["defense"])
    for defense in ("none", "fgsm_mix"):
        mine = [d for d in runs["dirs"] if f"/{defense}/" in d]
        assert len(mine) == 2
        for norm, col in (("l2", "l2 median"), ("linf", "linf median")):
            values = pd.Series([_worst(per_run[d], norm)["median_distance"] for d in mine])
            row = finlay[finlay["defense"] == defense].iloc[0]
            assert row["runs"] == 2
            np.testing.assert_allclose([row[col], row[f"{col} std"]], [values.mean(), values.std()], rtol=1e-12)
            cell = rows[list(finlay["defense"]).index(defense)][header.index(col)]
            mean_text, std_text = cell.split(" ± ")
            np.testing.assert_allclose([float(mean_text), float(std_text)], [values.mean(), values.std()],
                                       rtol=1e-3)
    clean = pd.Series([100 * per_run[d]["clean_error"].iloc[0] for d in runs["dirs"] if "/none/" in d])
    row = finlay[finlay["defense"] == "none"].iloc[0]
    np.testing.assert_allclose([row["clean % err"], row["clean % err std"]], [clean.mean(), clean.std()])
    tidy = pd.read_csv(out / "tidy.csv")
    assert {"run", "dataset", "model", "defense", "seed", "epochs", "attack", "norm", "metric", "value"} <= set(tidy)
    one = tidy.query("attack == 'fgsm' and norm == 'linf' and metric == 'error_at_eps'")
    assert len(one) == 4 and sorted(one["seed"]) == [0, 0, 1, 1]
    # the thesis layout: one table per norm, rows = attacks, robust accuracy per threshold
    h, r = parse_markdown((out / "tables" / "attacks_linf.md").read_text())
    assert h[:2] == ["defense", "attack"] and "mean norm" in h and any(c.startswith("acc % @") for c in h)
    assert {x[1] for x in r} == {"deepfool", "fgsm", "worst_case"}
    tex = (out / "tables" / "finlay.tex").read_text()
    assert r"\toprule" in tex and r"$\pm$" in tex and r"\%" in tex
    assert (out / "tables" / "lipschitz.md").is_file()


def test_plots_html_and_a_sweep_directory_as_input(runs, hydra_compose, tmp_path):
    from matplotlib.image import imread

    out = report(hydra_compose, tmp_path, runs=str(runs["sweep"]), by="defense")
    record = json.loads((out / "report.json").read_text())
    assert sorted(record["inputs"]["runs"]) == sorted(runs["dirs"])
    for stem in ("error_curves", "robust_accuracy", "training_curves", "rho_adv"):
        png = imread(out / "plots" / f"{stem}.png")
        assert png.std() > 0.01, f"{stem}.png is blank"
        assert "<svg" in (out / "plots" / f"{stem}.svg").read_text()[:2000]
    page = (out / "index.html").read_text()
    assert 'src="plots/error_curves.png"' in page and "<table>" in page and "± " in page
    # the eval sweep names the same runs; the same inputs again rewrite their own report
    again = report(hydra_compose, tmp_path, runs=str(runs["eval_sweep"]), by="defense", plots="false")
    assert sorted(json.loads((again / "report.json").read_text())["inputs"]["runs"]) == sorted(runs["dirs"])


def test_another_report_is_not_overwritten(runs, hydra_compose, tmp_path):
    report(hydra_compose, tmp_path, runs=_list(runs["dirs"]), plots="false", format="[md]")
    with pytest.raises(UserError, match="holds another report"):
        report(hydra_compose, tmp_path, runs=_list(runs["dirs"][:2]), plots="false", format="[md]")
    out = report(hydra_compose, tmp_path, runs=_list(runs["dirs"][:2]), plots="false", format="[csv]", force="true")
    assert not (out / "report.md").exists() and (out / "tables" / "finlay.csv").is_file()  # replaced whole


def _copy(run: str, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_refusals(runs, hydra_compose, tmp_path):
    with pytest.raises(UserError, match="matches nothing"):
        report(hydra_compose, tmp_path, runs=f"'{tmp_path}/nothing*'")
    running = _copy(runs["dirs"][0], tmp_path / "a" / "running")
    rec = json.loads((running / "run.json").read_text())
    (running / "run.json").write_text(json.dumps({**rec, "status": "running"}))
    failed = _copy(runs["dirs"][1], tmp_path / "a" / "failed")
    (failed / "run.json").write_text(json.dumps({**rec, "status": "failed"}))
    with pytest.raises(UserError, match=r"unfinished runs, not reported \(2\).*running \(running\).*failed \(failed\)"):
        report(hydra_compose, tmp_path, runs=_list([*runs["dirs"], running, failed]))
    bare = _copy(runs["dirs"][0], tmp_path / "b" / "bare")
    shutil.rmtree(bare / "eval")
    with pytest.raises(UserError, match="runs with no eval results \\(1\\).*bare"):
        report(hydra_compose, tmp_path, runs=_list([*runs["dirs"], bare]))
    other = _copy(runs["dirs"][0], tmp_path / "c" / "other")
    (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("name: digits", "name: mnist"))
    with pytest.raises(UserError, match="several data sets .*add by=dataset"):
        report(hydra_compose, tmp_path, runs=_list([*runs["dirs"], other]), plots="false")
    out = report(hydra_compose, tmp_path, runs=_list([*runs["dirs"], other]), by="[dataset,defense]", plots="false")
    assert set(pd.read_csv(out / "tables" / "finlay.csv")["dataset"]) == {"digits", "mnist"}
    with pytest.raises(UserError, match="by: unknown column nope"):
        report(hydra_compose, tmp_path / "x", runs=_list(runs["dirs"]), by="nope")
    with pytest.raises(UserError, match="differ in defense, not only in seed"):
        report(hydra_compose, tmp_path / "x", runs=_list(runs["dirs"]), by="seed")
    with pytest.raises(UserError, match="metrics: unknown metric nope"):
        report(hydra_compose, tmp_path / "x", runs=_list(runs["dirs"]), metrics="[nope]")


def test_cli_lists_and_globs():
    """``by=defense,model`` lists (a report sweeps nothing); a glob is quoted for Hydra's grammar."""
    from robust_cli.cli import report_lists

    assert report_lists(["by=defense,model", "runs=out/train/*/x+y", "metrics=[rho_adv,n]", "format=md",
                         "force=true"]) == ["by=[defense,model]", "runs='out/train/*/x+y'", "metrics=[rho_adv,n]",
                                            "format=md", "force=true"]


def test_cli_refusal_is_one_line_exit_2(runs):
    bad = robust("report", f"runs={runs['out']}/nothing*", "by=defense,seed", cwd=runs["out"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "matches nothing" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_html_renders_in_headless_chromium(runs, hydra_compose, tmp_path):
    """The page, opened by a real browser: the screenshot is not blank (tables and figures drawn)."""
    from matplotlib.image import imread

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH (Debian: apt-get install chromium)")
    out = report(hydra_compose, tmp_path, runs=_list(runs["dirs"]))
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1400,2400", (out / "index.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    image = imread(shot)[..., :3]
    assert image.std() > 0.05  # white page with black text, tables and coloured curves
    colours = np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # antialiased text and the figures' colours, not a blank or one-colour page


def test_finlay_clean_error_comes_from_the_result_with_the_most_images():
    """The Finlay table's clean error is the run's, over the most images any result evaluated: a 4-image result
    that sorts first (the shipped quickstart's ``minimal-l0``) no longer gives it."""
    from robust_cli.reporting.paper_tables import _clean_error

    s = pd.DataFrame({"attack": ["minimal", "vfga", "worst_case"], "norm": ["l0", "l0", "l0"], "n": [4, 32, 4],
                      "clean_error": [0.0, 0.0625, 0.0]})
    assert _clean_error(s) == 0.0625
    assert _clean_error(s.iloc[::-1].reset_index(drop=True)) == 0.0625
    assert np.isnan(_clean_error(s.assign(clean_error=np.nan)))


def test_the_runs_note_counts_the_runs_behind_each_value():
    """A metrics row over two runs, one of which lacks an attack: the note says a value may average one run."""
    from robust_cli.reporting.paper_tables import _aggregate
    from robust_cli.reporting.render import _runs_note, markdown

    per_run = pd.DataFrame({"run": ["a", "b"], "defense": ["none", "none"],
                            "fgsm-linf median": [0.1, np.nan], "pgd-linf median": [0.2, 0.3]})
    table = _aggregate("metrics", "m", per_run, ["defense"])
    assert _runs_note(table) == "runs per value: 1, 2"
    assert "(runs per value: 1, 2;" in markdown(table)
    full = _aggregate("metrics", "m", per_run.fillna(0.4), ["defense"])
    assert _runs_note(full) == "runs per row: 2"
    rows = _aggregate("metrics", "m", per_run.assign(defense=["none", "tulip"]), ["defense"])
    assert _runs_note(rows) == "runs per row: 1"  # a value no run of its row holds ("-") is not counted
