#!/usr/bin/env bash
# Quickstart on a CPU with real data: train.py trains VT-ResNet-18 from scratch on a Fashion-MNIST subset
# (vt_timm/configs/quickstart_fashion_mnist.yaml, by name), then validate.py re-evaluates the best checkpoint with the
# run's own settings. Extra arguments go to train.py, e.g. --epochs 1 or --model resnet18.
set -euo pipefail
cd "$(dirname "$0")/.."
output=${OUTPUT:-output}  # root of the run folder
run_dir=$output/quickstart
python train.py -c quickstart_fashion_mnist --output "$output" --experiment quickstart "$@"
python validate.py -c "$run_dir/args.yaml" --checkpoint "$run_dir/model_best.pth.tar" \
    --results-file "$run_dir/validate.json" --results-format json
echo "run folder: $run_dir (summary.csv, curves.png, checkpoints, validate.json)"
