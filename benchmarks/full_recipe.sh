#!/usr/bin/env bash
# The full recipe once on this machine's GPU, with both throughput benchmarks; small result files go
# to OUTDIR (logs, history.csv, metrics.json, test metrics with and without flip TTA as text and JSON,
# learning curves, confusion matrix).
#
#   benchmarks/full_recipe.sh OUTDIR [extra helpers.train flags, e.g. --compile]
#
# DEVICE (default cuda) and PYTHON (default python3) may be set; CIFAR10_DATA selects the data as everywhere.
set -euo pipefail
out=${1:?usage: benchmarks/full_recipe.sh OUTDIR [helpers.train flags]}
shift
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."                                   # the repository: helpers/ imports without an install
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
export CIFAR10_OUTPUT="$out/output" CIFAR10_PROGRESS=off PYTHONUNBUFFERED=1

"$py" -c 'import sys, torch; from helpers.machinery import device, execution; d = device.resolve_device(sys.argv[1]); print("torch", torch.__version__, "|", execution.resolve(d))' "$device" | tee "$out/machine.txt"
"$py" benchmarks/augment_throughput.py --device "$device" | tee "$out/augment_throughput.txt"
"$py" benchmarks/training_throughput.py --device "$device" --json "$out/training_throughput.json" | tee "$out/training_throughput.txt"
"$py" -m helpers.train --device "$device" "$@" | tee "$out/train.txt"
run=$(ls -d "$out"/output/runs/*/ | head -n 1)
"$py" -m helpers.evaluate --device "$device" --checkpoint "$run/checkpoint.pt" --tta --json "$out/test_metrics_tta.json" > "$out/test_metrics_tta.txt"
"$py" -m helpers.evaluate --device "$device" --checkpoint "$run/checkpoint.pt" --json "$out/test_metrics.json" | tee "$out/test_metrics.txt"  # figures without TTA
cp "$run/history.csv" "$run/metrics.json" "$out/"  # the default checkpoint.pt's own (checkpoint.companion); pass no --checkpoint
cp "$out"/output/figs/*/learning_curves.png "$out"/output/figs/*/confusion_matrix_normalized.png "$out/"
