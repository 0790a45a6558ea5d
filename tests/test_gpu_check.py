"""scripts/gpu_check.sh's CPU fallback: without CUDA it runs every step on the CPU at tiny sizes, the CUDA
tests report as skipped (not failed), and it ends saying so with exit status 0; with OUT set, every step's
output and the summary land under $OUT/gpu_check (what comes back from a lent GPU machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_falls_back_to_a_quick_cpu_run(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "no CUDA device: running every step on the CPU" in out
    assert "skipped" in out and "failed" not in out.split("=== training epoch")[0]  # the gpu tests skip cleanly
    assert "| resnet18 |" in out and "loader wait" in out  # the epoch table
    assert "| tulip | <= 3.5x |" in out  # the defense table with its ratio
    assert proc.stdout.rstrip().endswith("gpu_check: all steps passed on cpu (quick)")
    logs = tmp_path / "gpu_check"
    assert sorted(p.name for p in logs.iterdir()) == ["defenses.txt", "epoch.txt", "floor.txt", "summary.txt",
                                                      "tests.txt"]
    assert "| tulip | <= 3.5x |" in (logs / "defenses.txt").read_text()
    assert "| apgd linf |" in (logs / "floor.txt").read_text()  # the floor step ran, with APGD
    assert (logs / "summary.txt").read_text().rstrip().endswith("gpu_check: all steps passed on cpu (quick)")


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--fast"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr
