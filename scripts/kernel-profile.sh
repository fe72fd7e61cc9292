#!/usr/bin/env bash
# Per-kernel GPU time of a window of training steps, ours beside ../shared/bench/torch_cifar.py
# (ResNet-18, bf16), with Nsight Compute: which kernels each spends its step in.
#
#   scripts/kernel-profile.sh [SKIP] [COUNT]
#
# SKIP kernel launches are left out first (the warm-up, cuDNN's algorithm search and PyTorch's
# autotuning), then COUNT are timed (gpu__time_duration, one metric: a replay per kernel).
# Env: DATA (default /tmp/stage/cifar10), BIN (default .device-bin/rusty-recognition), TORCH_CIFAR
# (default .device-bin/torch_cifar.py), OURS (our train options; default ResNet-18 at bf16), NCU,
# NCU_FLAGS (more ncu options: "--clock-control none --cache-control none" times kernels at the
# clocks and with the caches a real run has; ncu's defaults lock base clocks and flush caches).
# Graphs are off on both sides (ncu times kernels one by one). Prints the top kernels of each and
# the time per training step (the window's time over the loss kernels it holds, one a step).
set -uo pipefail
cd "$(dirname "$0")/.."
SKIP=${1:-4000}
COUNT=${2:-800}
DATA=${DATA:-/tmp/stage/cifar10}
BIN=${BIN:-.device-bin/rusty-recognition}
TORCH_CIFAR=${TORCH_CIFAR:-.device-bin/torch_cifar.py}
OURS=${OURS:---model resnet18 --precision bf16}
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
WORK=${WORK:-/tmp/kernel-profile}
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

profile() {  # $1: label; the rest: the command
  local label=$1
  shift
  # shellcheck disable=SC2086
  "$NCU" ${NCU_FLAGS:-} --launch-skip "$SKIP" --launch-count "$COUNT" --metrics gpu__time_duration.sum --csv "$@" >"$WORK/$label.csv" 2>"$WORK/$label.err"
  python3 - "$WORK/$label.csv" "$label" <<'PY'
import collections, csv, sys
path, label = sys.argv[1], sys.argv[2]
hdr, total = None, collections.Counter()
calls = collections.Counter()
for row in csv.reader(open(path)):
    if "Kernel Name" in row:
        hdr = row
        continue
    if hdr is None or len(row) != len(hdr):
        continue
    d = dict(zip(hdr, row))
    if d["Metric Name"] != "gpu__time_duration.sum":
        continue
    # The name without its argument list ("(anonymous namespace)" is part of the name, not one).
    name = d["Kernel Name"].replace("(anonymous namespace)", "{anon}").split("(")[0].removeprefix("void ")[:70]
    total[name] += float(d["Metric Value"].replace(",", "")) / 1000.0
    calls[name] += 1
# One loss kernel per training step: ours computes loss and gradient in one, PyTorch's log-softmax backward.
steps = sum(c for n, c in calls.items() if n.startswith("softmax_cross_entropy") or "SoftMaxBackward" in n)
all_us = sum(total.values())
conv = sum(t for n, t in total.items() if any(k in n.lower() for k in ("conv", "xmma", "sm90", "cutlass", "implicit", "wgrad", "dgrad", "fprop", "gemm", "cudnn")))
per = f"{all_us / steps / 1000:.2f} ms per training step ({steps} steps)" if steps else "no whole step in the window"
print(f"== {label}: {sum(calls.values())} kernels, {all_us / 1000:.2f} ms in all, {per}; convolution/GEMM-like kernels {conv / 1000:.2f} ms")
for name, t in total.most_common(30):
    share = f"{t / steps:8.1f} us/step" if steps else ""
    print(f"{t / 1000:9.3f} ms {calls[name]:5d} calls {share}  {name}")
PY
}

profile ours "$BIN" train --device cuda --dataset cifar10 --data-dir "$DATA" --epochs 1 --no-graphs --out "$WORK/ours-run" $OURS
profile torch python3 "$TORCH_CIFAR" --data "$DATA" --epochs 1
