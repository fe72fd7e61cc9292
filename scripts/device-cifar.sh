#!/usr/bin/env bash
# The CIFAR-10 figures of BENCHMARKS.md on the GPU machine, after scripts/device-bin.sh and
# ../shared/tools/device-stage.sh ../shared/data/cifar10 (the data in /tmp/stage/cifar10).
# Each step fits one device call (10 minutes at most):
#   scripts/device-cifar.sh checks   # GPU tests, LeNet-5 bench (this build and .device-bin/rr-before), PyTorch references
#   scripts/device-cifar.sh resnet18 # our ResNet-18 with its default recipe, eval, PyTorch strict load of the checkpoint
#   scripts/device-cifar.sh resume   # continue the ResNet-18 run if the previous call ran out of time
# Logs and metrics go to $OUT (or /tmp/rr-cifar).
set -uo pipefail
cd "$(dirname "$0")/.."
B=.device-bin
DATA=${DATA:-/tmp/stage/cifar10}
OUT=${OUT:-/tmp/rr-cifar}
RUN=/tmp/rr-r18
mkdir -p "$OUT"
export RR_MNIST_DIR=$PWD/data/mnist
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
case "${1:-}" in
checks)
  $B/conformance_cuda --include-ignored 2>&1 | grep -E "panicked|error|test result" | head -20
  $B/train_cuda --include-ignored 2>&1 | grep -E "panicked|test result"
  for i in 1 2; do
    echo "== LeNet-5 bench, before (rr-before), round $i"; $B/rr-before bench --device cuda 2>&1 | grep BENCH
    echo "== LeNet-5 bench, this build, round $i"; $B/rusty-recognition bench --device cuda 2>&1 | grep BENCH
  done
  if [ -f "$RUN/model.safetensors" ]; then
    echo "== PyTorch strict load of the last ResNet-18 run (TF32 off)"
    python3 scripts/load_resnet_in_pytorch.py "$RUN/model.safetensors" "$DATA" --torch-cifar $B/torch_cifar.py
  fi
  echo "== PyTorch torch_cifar.py, bf16 + channels-last (default)"
  python3 $B/torch_cifar.py --data "$DATA" 2>&1 | tail -4
  echo "== PyTorch torch_cifar.py --amp off (fp32)"
  python3 $B/torch_cifar.py --data "$DATA" --amp off 2>&1 | tail -4
  ;;
resnet18 | resume)
  if [ "$1" = resnet18 ]; then
    rm -rf "$RUN"
    args=(--model resnet18 --dataset cifar10 --data-dir "$DATA" --out "$RUN")
  else
    args=(--resume "$RUN/model.safetensors" --epochs "${EPOCHS:-20}" --data-dir "$DATA")
  fi
  timeout "${LIMIT:-540}" $B/rusty-recognition train --device cuda "${args[@]}" 2>&1 | grep -vE "^\s*$" | tee "$OUT/resnet18.log" | grep -E "^(training|resuming|augmentation|label|epoch|peak|wrote|error)"
  cp "$RUN/metrics.csv" "$OUT/resnet18-metrics.csv" 2>/dev/null
  if grep -q "^wrote $RUN/metrics.csv" "$OUT/resnet18.log"; then
    $B/rusty-recognition eval --device cuda --checkpoint "$RUN/model.safetensors" --data-dir "$DATA" 2>&1 | head -3
    python3 scripts/load_resnet_in_pytorch.py "$RUN/model.safetensors" "$DATA" --torch-cifar $B/torch_cifar.py
    cp "$RUN/model.safetensors" "$OUT/" 2>/dev/null
  fi
  ;;
*) echo "usage: $0 checks|resnet18|resume" >&2; exit 2 ;;
esac
