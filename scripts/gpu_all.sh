#!/usr/bin/env bash
# Every GPU check and benchmark in one unattended command (a GPU session's 10-minute call), then the Speed table.
#
#   scripts/gpu_all.sh [DATA_TARBALL]        e.g. scripts/gpu_all.sh .gpu/cifar10-jpg.tar.gz
#
# Stages, each under its own time limit, each run even when one before it failed (exit 1 at the end if any did):
#   data      unpack the tarball (the image-folder CIFAR-10) to /tmp/cifar10-jpg; without one, synthetic images
#   pytest    tests/test_gpu.py -m gpu: the captured step, recalibration, eval forward and default-path checks
#   bench     scripts/bench.py: tutorial vs eager vs graphs vs compile+graphs loops, evaluation, kernel counts
#   runs      scripts/gpu_check.py --no-checks: runner.engine.loop.train at batch 128 and 64, default and eager, real data
#   table     scripts/speed_table.py: the README's rows, printed and written to $OUT/speed_table.md
# Writes to $OUT (default gpu_out): gpu_all.log, bench.json, gpu_check.json, speed_table.md.
# Needs python3 with torch, torchvision, tensorboard, tqdm and pytest; no hydra (tests run with --noconftest).
# DEVICE=cpu QUICK=1 runs the same plumbing tiny on a CPU (tests/test_gpu.py does). Stage limits: PYTEST_S, BENCH_S,
# RUNS_S (seconds); the defaults add up to 575 s at most, inside one 10-minute call (about 7 minutes expected).
# STAGES="pytest runs" (a subset of "pytest bench runs") splits the work over two calls on one warm machine.
set -uo pipefail
cd "$(dirname "$0")/.."
TARBALL=${1:-}
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_all.log"
: >"$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STAGES=${STAGES:-pytest bench runs}
failed=()

want() { [[ " $STAGES " == *" $1 "* ]]; }

stage() {  # stage NAME SECONDS COMMAND...: run it under a time limit, into the log; remember a failure
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "=== stage $name (limit ${limit} s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "=== stage $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" = 0 ] || failed+=("$name")
  return "$rc"
}

unpack() {
  mkdir -p /tmp/cifar10-jpg && tar -xzf "$1" -C /tmp/cifar10-jpg && ls /tmp/cifar10-jpg
}

DATA_ROOT=synthetic
if [ -n "$TARBALL" ]; then
  stage data 40 unpack "$TARBALL" && DATA_ROOT=/tmp/cifar10-jpg
fi
stage env 30 "$PYTHON" -c "import torch, torchvision, platform; print(platform.python_version(), torch.__version__, \
torchvision.__version__, torch.version.cuda, torch.backends.cudnn.version(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

if want pytest; then  # off CUDA the gpu tests skip (gpu_check runs its checks uncaptured in `runs` instead)
  stage pytest "${PYTEST_S:-110}" "$PYTHON" -m pytest --noconftest -p no:cacheprovider -q -rA -m gpu tests/test_gpu.py
fi
if want bench; then
  stage bench "${BENCH_S:-230}" "$PYTHON" scripts/bench.py --device "$DEVICE" ${QUICK:+--quick} --e2e-epochs 0 \
    --out "$OUT/bench.json"
fi
if want runs; then
  checks=--no-checks  # on CUDA the pytest stage ran them
  [ "$DEVICE" = cuda ] || checks=--checks
  stage runs "${RUNS_S:-150}" "$PYTHON" scripts/gpu_check.py --device "$DEVICE" "$checks" ${QUICK:+--quick} \
    --data-root "$DATA_ROOT" --out "$OUT/gpu_check.json"
fi
rm -f "$OUT"/*.tmp  # a JSON write cut short by a time limit
stage table 15 bash -c "'$PYTHON' scripts/speed_table.py '$OUT/bench.json' '$OUT/gpu_check.json' >'$OUT/speed_table.md'"
tee -a "$LOG" <"$OUT/speed_table.md"

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_all: FAILED stages: ${failed[*]} (see $LOG)"
  exit 1
fi
echo "gpu_all: all stages passed; results in $OUT"
