#!/usr/bin/env bash
# The GPU paths in one go (issue 16), under 5 minutes on one GPU:
#
#   1. the CUDA tests (pytest marker `gpu`: tests/test_gpu.py; skipped cleanly without CUDA);
#   2. one CIFAR-shaped (synthetic 3x32x32, 50k images) training epoch of ResNet-18 and ResNeXt-34 with amp
#      and channels_last, through the training loop's loader: images/s and the loader's wait
#      (scripts/bench_train_epoch.py);
#   3. the defense step-cost benchmark on a CIFAR ResNet-34 (scripts/bench_defenses.py): ms and ratios to
#      defense=none (tulip target <= 3.5x);
#   4. the attack-floor benchmark on the same device (scripts/bench_floor.py --device, 20 steps, 3 repeats):
#      attack iteration / (forward + input backward), timed as synchronized wall time on CUDA.
#
#   scripts/gpu_check.sh            # on a GPU machine; prints the tables, exit 1 if a step failed
#   scripts/gpu_check.sh --quick    # the same steps at tiny sizes (seconds); the default without CUDA
#
# Without CUDA it runs the same steps on the CPU in quick mode (the CUDA tests report as skipped), so the
# script itself is tested everywhere (tests/test_gpu_check.py). PYTHON selects the interpreter (default:
# .venv/bin/python where it exists, else python3); the repository root goes first on PYTHONPATH, so nothing
# needs installing. Each step has its own time limit (full mode: 60 + 70 + 50 + 40 = 220 s) and none may run
# past BUDGET seconds from the start (default 270; quick: 600): a failed or timed-out step is reported and the others
# still run. With OUT set, every step's output is also written to $OUT/gpu_check/<step>.txt and the summary
# to $OUT/gpu_check/summary.txt (5 files).
#
# A machine whose Python has torch but not this project's pure-Python dependencies (hydra-core, omegaconf,
# ...) takes them as wheels: put them in .whl/ (git-ignored), e.g. `python -m pip wheel --no-deps -w .whl
# hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 hydra-submitit-launcher==1.2.0
# submitit==1.5.4 hydra-joblib-launcher==1.2.0`, and the script installs them into a temporary directory
# (WHEELS names another folder) when `import hydra, omegaconf` fails.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        *) echo "gpu_check: unknown argument $arg (only --quick)" >&2; exit 2 ;;
    esac
done
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEV=cuda
else
    DEV=cpu
    QUICK=1
    echo "gpu_check: no CUDA device: running every step on the CPU at tiny sizes (the gpu tests skip)"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BUDGET="${BUDGET:-$([ "$QUICK" = 1 ] && echo 600 || echo 270)}"
LOGS=""
if [ -n "${OUT:-}" ]; then
    LOGS="$OUT/gpu_check"
    mkdir -p "$LOGS" || LOGS=""
fi
WHEELS="${WHEELS:-.whl}"
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        SITE="$(mktemp -d)"
        echo "gpu_check: installing the wheels of $WHEELS into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
            && export PYTHONPATH="$PYTHONPATH:$SITE"
    else
        echo "gpu_check: $PY lacks hydra/omegaconf and $WHEELS/ holds no wheels: the steps will fail (see the header)"
    fi
fi
FAILED=()
TIMES=()

step() {  # step <name> <file stem> <seconds> <command...>: runs under min(seconds, what is left of BUDGET)
    local name="$1" stem="$2" limit="$3"
    shift 3
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    echo
    echo "=== $name ($DEV) ==="
    if [ "$limit" -le 0 ]; then
        FAILED+=("$name (not run: the ${BUDGET}s budget is spent)")
        echo "--- $name: not run, the ${BUDGET}s budget is spent"
        return
    fi
    local t0=$SECONDS rc
    if [ -n "$LOGS" ]; then
        timeout "$limit" "$@" 2>&1 | tee "$LOGS/$stem.txt"
        rc=${PIPESTATUS[0]}
    else
        timeout "$limit" "$@"
        rc=$?
    fi
    if [ $rc -ne 0 ]; then
        FAILED+=("$name (exit $rc$([ $rc -eq 124 ] && echo ", over ${limit}s"))")
    fi
    TIMES+=("$name: $((SECONDS - t0)) s (limit ${limit} s)")
    echo "--- $name: $((SECONDS - t0)) s"
}

if [ "$QUICK" = 1 ]; then
    step "CUDA tests" tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    step "training epoch" epoch 120 "$PY" scripts/bench_train_epoch.py --device "$DEV" --quick --models resnet18 \
        --images 32
    step "defense step cost" defenses 120 "$PY" scripts/bench_defenses.py --device "$DEV" --models lenet5 \
        --defenses none tulip --batch 4 --repeats 1 --warmup 1
    # a small batch, few steps, one repeat, the 8x8 digits model only (seconds on a CPU)
    step "attack floor" floor 120 "$PY" scripts/bench_floor.py --device "$DEV" --batch 32 --steps 5 --repeats 1 \
        --models digits
else
    step "CUDA tests" tests 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    step "training epoch" epoch 70 "$PY" scripts/bench_train_epoch.py --device "$DEV"
    step "defense step cost" defenses 50 "$PY" scripts/bench_defenses.py --device "$DEV" --models resnet \
        --batch 128 --repeats 5 --warmup 2 --resnet-width 64 --resnet-blocks 3 4 6 3
    # batch 256, both LeNet-5s (MNIST falls back to noise where /work/shared/data is missing)
    step "attack floor" floor 40 "$PY" scripts/bench_floor.py --device "$DEV" --steps 20 --repeats 3
fi

if [ ${#FAILED[@]} -gt 0 ]; then
    RESULT="gpu_check: FAILED: ${FAILED[*]}"
else
    RESULT="gpu_check: all steps passed on $DEV$([ "$QUICK" = 1 ] && echo " (quick)")"
fi
if [ -n "$LOGS" ]; then
    { printf '%s\n' "${TIMES[@]}" "total: ${SECONDS} s of ${BUDGET} s" "$RESULT"; } >"$LOGS/summary.txt"
fi
echo
echo "total: ${SECONDS} s"
echo "$RESULT"
[ ${#FAILED[@]} -eq 0 ]
