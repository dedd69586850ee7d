#!/usr/bin/env bash
# GPU checks for a lent device machine (issue 6), in one short run: the CUDA correctness tests, then the
# GPU benchmark table (AMP + channels_last, batch 256, torch.compile off and on). Results go to $OUT (or ./gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu}
mkdir -p "$out"
python -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
models="vt_resnet18,vt_resnet34,vt_resnet50,vt_resnet101"
python benchmark.py --compare --model-list $models --device cuda --amp --channels-last -b 256 \
    --results-file "$out/gpu_eager.csv" | tee "$out/gpu_eager.md"
python benchmark.py --compare --model-list $models --device cuda --amp --channels-last -b 256 --torchcompile \
    --results-file "$out/gpu_compile.csv" | tee "$out/gpu_compile.md"
