#!/usr/bin/env bash
# The GPU paths in one go (issue 16), under 5 minutes on one GPU:
#
#   1. the CUDA tests (pytest marker `gpu`: tests/test_gpu.py; skipped cleanly without CUDA);
#   2. one CIFAR-shaped (synthetic 3x32x32, 50k images) training epoch of ResNet-18 and ResNeXt-34 with amp
#      and channels_last, through the training loop's loader: images/s and the loader's wait
#      (scripts/bench_train_epoch.py);
#   3. the defense step-cost benchmark on a CIFAR ResNet-34 (scripts/bench_defenses.py): ms and ratios to
#      defense=none (tulip target <= 3.5x);
#   4. the attack-floor benchmark (scripts/bench_floor.py, where present): attack step / (forward + backward).
#
#   scripts/gpu_check.sh            # on a GPU machine; prints the tables, exit 1 if a step failed
#   scripts/gpu_check.sh --quick    # the same steps at tiny sizes (seconds); the default without CUDA
#
# Without CUDA it runs the same steps on the CPU in quick mode (the CUDA tests report as skipped), so the
# script itself is tested everywhere (tests/test_gpu_check.py). PYTHON selects the interpreter (default:
# .venv/bin/python where it exists). Each step has its own time limit; a failed or timed-out step is reported
# and the others still run.
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
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
FAILED=()

step() {  # step <name> <seconds> <command...>
    local name="$1" limit="$2"
    shift 2
    echo
    echo "=== $name ($DEV) ==="
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    if [ $rc -ne 0 ]; then
        FAILED+=("$name (exit $rc$([ $rc -eq 124 ] && echo ", over ${limit}s"))")
    fi
    echo "--- $name: $((SECONDS - t0)) s"
}

if [ "$QUICK" = 1 ]; then
    step "CUDA tests" 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    step "training epoch" 120 "$PY" scripts/bench_train_epoch.py --device "$DEV" --quick --models resnet18 \
        --images 32
    step "defense step cost" 120 "$PY" scripts/bench_defenses.py --device "$DEV" --models lenet5 \
        --defenses none tulip --batch 4 --repeats 1 --warmup 1
else
    step "CUDA tests" 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    step "training epoch" 90 "$PY" scripts/bench_train_epoch.py --device "$DEV"
    step "defense step cost" 90 "$PY" scripts/bench_defenses.py --device "$DEV" --models resnet \
        --batch 128 --repeats 10 --warmup 3 --resnet-width 64 --resnet-blocks 3 4 6 3
fi
if [ -f scripts/bench_floor.py ]; then
    FLOOR_ARGS=()
    HELP="$("$PY" scripts/bench_floor.py --help 2>/dev/null || true)"
    if grep -q -- "--device" <<<"$HELP"; then FLOOR_ARGS+=(--device "$DEV"); fi
    if [ "$QUICK" = 1 ] && grep -q -- "--quick" <<<"$HELP"; then FLOOR_ARGS+=(--quick); fi
    # quick: a small batch, few steps, one repeat, the 8x8 digits model only (seconds on a CPU)
    if [ "$QUICK" = 1 ]; then FLOOR_ARGS+=(--batch 32 --steps 5 --repeats 1 --models digits); fi
    step "attack floor" "$([ "$QUICK" = 1 ] && echo 120 || echo 60)" "$PY" scripts/bench_floor.py "${FLOOR_ARGS[@]}"
else
    echo
    echo "=== attack floor: scripts/bench_floor.py not present, skipped ==="
fi

echo
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_check: FAILED: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: all steps passed on $DEV$([ "$QUICK" = 1 ] && echo " (quick)")"
