#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script): installs
# what the tests need beyond Rust when it is missing, then runs `cargo test`
# (arguments are passed on to it). Installing takes root or sudo and apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

# Debian packages, installed with apt-get (as root, or through sudo).
install_apt() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "the tests need the Debian packages $*: run as root, or install them" >&2; exit 1; }
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null || { echo "the tests need $* (Debian's names): install them with your package manager" >&2; exit 1; }
  echo "installing $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# What the tests need, each checked on its own: add a new need here.
apt_packages=()
# Chromium and ChromeDriver: the browser test of `serve`.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_packages+=(chromium chromium-driver)
fi
# Mesa's software Vulkan driver and the Vulkan loader: the wgpu backend's tests run on its llvmpipe adapter.
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep 'libvulkan\.so\.1' >/dev/null; then
  apt_packages+=(mesa-vulkan-drivers libvulkan1)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  install_apt "${apt_packages[@]}"
fi

# ONNX Runtime and NumPy from PyPI: the ONNX export test runs the exported models with them (scripts/check_onnx.py).
if ! python3 -c 'import onnxruntime, numpy' 2>/dev/null; then
  command -v python3 >/dev/null || { echo "the ONNX export test needs python3 with pip (for onnxruntime and numpy)" >&2; exit 1; }
  echo "installing onnxruntime numpy (pip)"
  python3 -m pip install -q --disable-pip-version-check onnxruntime numpy
fi

cargo --version
cargo test "$@"
