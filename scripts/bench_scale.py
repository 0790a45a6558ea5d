"""Benchmark: ``robust eval`` time and peak memory against the number of test images (1k vs 10k MNIST).

Each measurement is a fresh child process running ``robust_cli.eval_app.evaluate`` (the whole of
``robust eval``: data loading, the attacks, the files) on a copy of the run, so its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which never decreases in a process) belongs to that size
alone; the child also reports its CPU seconds and the peak of Python-level allocations (``tracemalloc``:
tensor storage is not Python memory, so that number only catches lists and frames that grow). The peak
memory *above* the same child's footprint right after loading the data and the model is what an
evaluation adds; flat in the number of images is the target.

``--ref DIR``: the children of a second column import ``robust_cli`` from ``DIR`` (a snapshot of main).

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_scale.py --run RUN_DIR [--sizes 1000,10000]
[--attacks fgsm,deepfool] [--norm linf] [--search bisection:1] [--ref /tmp/main_snapshot]
[--allocator both]`` (a cheap
search by default: the memory, not the attack, is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def child(run: str, n: int, attacks: str, norm: str, search: str) -> None:
    import torch
    from omegaconf import OmegaConf

    torch.set_num_threads(1)
    try:  # as `robust eval` sets it (apps.user_errors); ROBUST_HOST_ALLOCATOR=glibc in the env: glibc's own
        from robust_cli.host_memory import reuse_freed_host_memory
    except ImportError:  # a --ref snapshot older than it
        pass
    else:
        reuse_freed_host_memory()
    from robust_cli.config import EvalConfig
    from robust_cli.eval_app import evaluate

    tracemalloc.start()
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), {
        "run": run, "attack": {}, "norm": norm, "n_examples": n, "batch_size": 500, "lipschitz": False,
        "force": True, "device": "cpu", "eps_search": search.split(":")[0],
        "search_steps": int(search.split(":")[1])})
    for name in attacks.split(","):
        cfg.attack[name] = {"_target_": f"robust_cli.attacks.{name}.{name}", "name": name}
    start, wall = time.process_time(), time.perf_counter()
    use = resource.getrusage(resource.RUSAGE_SELF)
    sys0, faults0 = use.ru_stime, use.ru_minflt
    evaluate(cfg)
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"n": n, "cpu_s": time.process_time() - start, "wall_s": time.perf_counter() - wall,
                      "sys_s": use.ru_stime - sys0, "faults": use.ru_minflt - faults0,
                      "peak_rss_mb": use.ru_maxrss / 1024,
                      "tracemalloc_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}))


def measure(run: str, n: int, attacks: str, norm: str, search: str, root: str | None,
            allocator: str = "robust") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", ROBUST_HOST_ALLOCATOR=allocator)
    if root:
        env["PYTHONPATH"] = root
    out = subprocess.run([sys.executable, __file__, "--child", "--run", run, "--sizes", str(n),
                          "--attacks", attacks, "--norm", norm, "--search", search], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--attacks", default="fgsm,deepfool")
    p.add_argument("--norm", default="linf")
    p.add_argument("--ref", default=None)
    p.add_argument("--search", default="bisection:1", help="eps_search:search_steps of budget attacks")
    p.add_argument("--allocator", default="robust", choices=["robust", "glibc", "both"],
                   help="glibc's allocator in the children: robust's thresholds (what `robust eval` sets), "
                        "glibc's own (ROBUST_HOST_ALLOCATOR=glibc), or both, interleaved per size")
    p.add_argument("--child", action="store_true")
    args = p.parse_args()
    if args.child:
        child(args.run, int(args.sizes), args.attacks, args.norm, args.search)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "run")
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("eval"))
        print(f"robust eval attack=[{args.attacks}] norm={args.norm} batch_size=500 lipschitz=false "
              f"eps_search={args.search.replace(':', ' search_steps=')}, {args.run}\n")
        print("| code | allocator | images | CPU s | of which system | page faults | CPU ms / image | peak RSS MB | "
              "tracemalloc peak MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        allocators = ("glibc", "robust") if args.allocator == "both" else (args.allocator,)
        for tag, root in (("main", args.ref), ("this branch", None)) if args.ref else (("this branch", None),):
            for n in (int(s) for s in args.sizes.split(",")):
                for allocator in allocators:
                    r = measure(run, n, args.attacks, args.norm, args.search, root, allocator)
                    print(f"| {tag} | {allocator} | {n} | {r['cpu_s']:.1f} | {r['sys_s']:.1f} | {r['faults']} | "
                          f"{1e3 * r['cpu_s'] / n:.2f} | "
                          f"{r['peak_rss_mb']:.0f} | {r['tracemalloc_peak_mb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
