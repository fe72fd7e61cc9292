#!/usr/bin/env bash
# The wgpu backend on the GPU machine through NVIDIA's Vulkan driver, beside
# PyTorch's eager loop and our CUDA backend, in one device call. Run from the
# repository root after scripts/device-bin.sh (which carries Debian's Vulkan
# loader in .device-bin/vk). In the container only the EGL flavour of NVIDIA's
# Vulkan driver initializes headless, so an ICD file naming libEGL_nvidia is
# written here (the stock one names libGLX_nvidia, which needs an X server).
cd "$(dirname "$0")/.."
export RR_MNIST_DIR=$PWD/data/mnist
B=.device-bin
export LD_LIBRARY_PATH=$PWD/$B/vk:$LD_LIBRARY_PATH
printf '{"file_format_version":"1.0.1","ICD":{"library_path":"libEGL_nvidia.so.0","api_version":"1.3.0"}}\n' > /tmp/nvidia_egl_icd.json
export VK_ICD_FILENAMES=/tmp/nvidia_egl_icd.json
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== wgpu conformance"; $B/conformance_wgpu --test-threads 1 2>&1 | grep -vE "XDG" | grep -E "wgpu conformance on|panicked|relative|analytic|result"
echo "== wgpu training tests"; $B/train_wgpu --include-ignored --nocapture 2>&1 | grep -vE "XDG" | grep -E "accuracy|panicked|result"
echo "== bench wgpu (x2; CPU time of the process beside its wall time)"
for i in 1 2; do /usr/bin/time -f "%e s wall, %U s user CPU" $B/rusty-recognition bench --device wgpu --epochs 5 --infer-reps 5 2>&1 | grep -E "^BENCH|wall"; done
echo "== bench cuda"; $B/rusty-recognition bench --device cuda --epochs 5 --infer-reps 5 2>&1 | grep -E "^BENCH"
echo "== PyTorch eager"; python3 $B/torch_lenet.py --data data/mnist --device cuda --modes eager --epochs 5 2>&1 | tail -3
echo "== train --device wgpu (defaults)"; /usr/bin/time -f "%e s wall" $B/rusty-recognition train --device wgpu --out /tmp/rr-wgpu-train 2>&1 | grep -vE "XDG" | grep -E "^(adapter|epoch|peak)|wall"
echo "== profile (GPU timestamps around each op; 30 steps and one 10,000-image test pass)"; $B/rusty-recognition train --device wgpu --epochs 1 --limit-train 3840 --eval-batch-size 10000 --profile --out /tmp/rr-wgpu-prof 2>&1 | grep -A22 "^profile"
echo "== the strong model on wgpu, one epoch"; timeout 90 $B/rusty-recognition train --device wgpu --model mnist-cnn --epochs 1 --out /tmp/rr-wgpu-cnn 2>&1 | grep -E "^epoch"
