#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, in one device call: conformance, the strong
# model's recipe (3 seeds on MNIST and Fashion-MNIST), PyTorch running the same
# recipe, LeNet's default recipe (3 seeds), and short runs for time to accuracy.
# Run from the repository root on the GPU machine after scripts/device-bin.sh,
# with Fashion-MNIST copied to .device-bin/fashion; logs go to $OUT.
cd "$(dirname "$0")/.."
export RR_MNIST_DIR=$PWD/data/mnist
OUT=${OUT:-/tmp/rr-figures}
mkdir -p "$OUT"
B=.device-bin
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for i in 1 2; do $B/conformance_cuda --include-ignored --test-threads 1 2>&1 | grep -E "panicked|relative error|analytic|result"; done
$B/train_cuda --include-ignored 2>&1 | grep -E "result"
R="$B/rusty-recognition train --device cuda"
F="--dataset fashion-mnist --data-dir $B/fashion"
keep() { name=$1; shift; "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; cp "$OUT/$name/metrics.csv" "$OUT/$name.csv"; rm -rf "${OUT:?}/$name"; }
echo "== mnist-cnn seed 0 alone"
keep cnn-m0 $R --model mnist-cnn --seed 0; grep -E "^(training|augmentation|epoch|peak)" "$OUT/cnn-m0.log"
echo "== PyTorch, same recipe, alone"
timeout 200 python3 scripts/torch_mnist_cnn.py --epochs 20 2>&1 | tail -21
echo "== parallel: mnist-cnn seeds 1, 2 and fashion seeds 0, 1, 2"
keep cnn-m1 $R --model mnist-cnn --seed 1 &
keep cnn-m2 $R --model mnist-cnn --seed 2 &
for s in 0 1 2; do keep cnn-f$s $R --model mnist-cnn $F --seed $s & done
wait
for f in cnn-m1 cnn-m2 cnn-f0 cnn-f1 cnn-f2; do echo "$f: $(grep -E '^epoch' "$OUT/$f.log" | tail -1)"; done
echo "== lenet default recipe"
for s in 0 1 2; do keep lenet-$s $R --seed $s; echo "lenet s$s: $(grep -E '^epoch' "$OUT/lenet-$s.log" | tail -1)"; done
echo "== short runs (time to accuracy)"
keep fast-w16-e2 $R --model mnist-cnn --width 16 --epochs 2
keep fast-w16-e3 $R --model mnist-cnn --width 16 --epochs 3
keep fast-w32-e3 $R --model mnist-cnn --epochs 3
for f in fast-w16-e2 fast-w16-e3 fast-w32-e3; do echo "$f:"; grep -E '^epoch' "$OUT/$f.log"; done
