#!/usr/bin/env bash
# Builds the release binary and the GPU test binaries (CUDA and wgpu), strips them and puts
# them in .device-bin/ (ignored by git) to carry to a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
rm -rf .device-bin && mkdir -p .device-bin
cp target/release/rusty-recognition .device-bin/
for t in $(cargo test --release -p rr-cuda -p rr-wgpu --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])'); do
  cp "$t" ".device-bin/$(basename "$t" | sed 's/-[0-9a-f]*$//')"
done
strip .device-bin/*
# The Vulkan loader, for the wgpu backend on a machine that has NVIDIA's Vulkan
# driver but no loader (Debian's libvulkan1; set LD_LIBRARY_PATH=.device-bin/vk there).
if [ -e /usr/lib/x86_64-linux-gnu/libvulkan.so.1 ]; then
  mkdir -p .device-bin/vk && cp -L /usr/lib/x86_64-linux-gnu/libvulkan.so.1 .device-bin/vk/
fi
cp ../shared/bench/torch_lenet.py .device-bin/ 2>/dev/null || true
ls -la .device-bin
