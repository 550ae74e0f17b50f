#!/usr/bin/env bash
# The GPU run, in one script: what only a GPU can show, then the recipe's real figures. If a step fails,
# the script names it and stops. OUTDIR receives 8 small files (a lent GPU machine returns at most 8 of
# 16 MiB each): log.txt (every step's output), summary.txt (each step's result and time), throughput.json,
# history.csv, metrics.json, learning_curves.png, and the trained weights in fp16 as model.part1.pt and
# model.part2.pt (`python benchmarks/model_parts.py join OUTDIR runs/recipe/checkpoint.pt` makes the
# finished run's checkpoint of them, which notebook 04, helpers.evaluate and `make series` then use).
#
#   benchmarks/gpu_check.sh OUTDIR          on a machine with a CUDA GPU (planned: under 9 minutes on one H200)
#   benchmarks/gpu_check.sh --cpu OUTDIR    the same steps on the CPU, quick configuration, 1 epoch: a rehearsal
#
#   machine     torch, the GPU, and the execution precision="auto" picks there
#   tests       tests/test_cuda.py: every execution's epoch with host syncs made errors, eager and compiled;
#               exact resume; a CPU-trained checkpoint evaluated on the GPU; the AUTO table's choice here
#   throughput  benchmarks/training_throughput.py --compile: CUDA events around blocks of steps taken in
#               turn, every execution eager and auto's also compiled
#   train       the full recipe, 50 epochs, eager (python -m helpers.train; TRAIN_FLAGS=--compile to compile)
#   test_tta    the test set with flip TTA, then test: without
#   model       the trained weights as fp16, in two files under 16 MiB
#
# Needs python3 with torch >= 2.11, torchvision, pandas, matplotlib, seaborn, tqdm and pytest; no Jupyter,
# nbformat, nbval or pyyaml. Data: CIFAR10_DATA, else cifar10-jpeg.tar.gz in .data/ or shared/data/ in the
# checkout, or in ../shared/data/ beside it. PYTHON (default python3) may be set. Runs and checkpoints go
# to build/gpu_check/ (CIFAR10_OUTPUT), not to OUTDIR.
set -uo pipefail

cpu=0
if [[ ${1:-} == --cpu ]]; then cpu=1; shift; fi
out=${1:?usage: benchmarks/gpu_check.sh [--cpu] OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 1 # the repository: helpers/ imports without an install
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CIFAR10_PROGRESS=off
export CIFAR10_OUTPUT="$PWD/build/gpu_check"
py=${PYTHON:-python3}
started=$SECONDS

rm -f "$out/log.txt" "$out/summary.txt"
say() { echo "gpu_check: $*" | tee -a "$out/summary.txt" "$out/log.txt"; }

# step NAME COMMAND...: run it, its output shown and appended to OUTDIR/log.txt; stop the script if it fails.
step() {
    local name=$1 begun=$SECONDS status
    shift
    say "$name ..."
    "$@" 2>&1 | tee -a "$out/log.txt"
    status=${PIPESTATUS[0]}
    if ((status != 0)); then
        say "step '$name' FAILED (exit $status) after $((SECONDS - begun)) s; its output is at the end of log.txt; later steps were not run."
        exit "$status"
    fi
    say "$name passed in $((SECONDS - begun)) s"
}

# ---------------------------------------------------------------- data, device, configuration

data=${CIFAR10_DATA:-}
if [[ -z $data ]]; then
    for candidate in .data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
        if [[ -f $candidate ]]; then data=$(cd "$(dirname "$candidate")" && pwd)/$(basename "$candidate") && break; fi
    done
fi
if [[ -z $data || ! -e $data ]]; then
    say "no data: put cifar10-jpeg.tar.gz in .data/ in the checkout (or set CIFAR10_DATA); nothing was run."
    exit 2
fi
export CIFAR10_DATA=$data

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'; then
    if ((cpu == 0)); then
        say "no CUDA GPU is visible to torch here; nothing was run. To rehearse the steps on the CPU: benchmarks/gpu_check.sh --cpu OUTDIR"
        exit 2
    fi
elif ((cpu == 1)); then
    say "--cpu: rehearsing on the CPU although a GPU is present"
fi

if ((cpu == 1)); then # the quick configuration, a short benchmark without compiling (minutes on 2 CPU cores)
    device=cpu quick=(--quick --epochs 1) bench=(--images 256 --rounds 2)
else
    device=cuda quick=() bench=(--images 25600 --rounds 4 --compile)
fi
read -r -a train_flags <<<"${TRAIN_FLAGS:-}"
say "data: $(basename "$data"); device: $device; started $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# ---------------------------------------------------------------- the steps

machine() {
    "$py" - "$device" <<'EOF'
import sys, torch
from helpers.machinery import device, execution
d = device.resolve_device(sys.argv[1])
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); {torch.cuda.device_count()} GPU(s)")
print(f"execution: {execution.resolve(d)}")
EOF
}

# pytest without pyproject's nbval options (addopts): nbval and the notebook tests' packages may be absent
step machine machine
step tests "$py" -m pytest -p no:cacheprovider -o addopts= -q -rs tests/test_cuda.py
step throughput "$py" benchmarks/training_throughput.py --device "$device" "${bench[@]}" --json "$out/throughput.json"
step train "$py" -m helpers.train --device "$device" --data "$data" "${quick[@]}" "${train_flags[@]}"
run=$(dirname "$(ls -t "$CIFAR10_OUTPUT"/runs/*/checkpoint.pt | head -n 1)")
figs=$run  # the command line writes a run's figures beside its checkpoint
step test_tta "$py" -m helpers.evaluate --device "$device" --data "$data" --checkpoint "$run/checkpoint.pt" --tta
step test "$py" -m helpers.evaluate --device "$device" --data "$data" --checkpoint "$run/checkpoint.pt" # its figures kept
step model "$py" benchmarks/model_parts.py split "$run/checkpoint.pt" "$out"
cp "$run/history.csv" "$run/metrics.json" "$figs/learning_curves.png" "$out/"
grep -h "^test accuracy" "$out/log.txt" | tee -a "$out/summary.txt"
say "all steps passed in $((SECONDS - started)) s; OUTDIR holds $(cd "$out" && ls | tr '\n' ' ')"
