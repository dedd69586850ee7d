#!/usr/bin/env bash
# Install everything vt_timm, its tests and its quickstart need on a fresh Debian machine (as root):
# the real data (Debian's Fashion-MNIST), torch/torchvision, and vt_timm with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q torch==2.14.1 torchvision==0.29.1
python3 -m pip install -q -e '.[test]'
