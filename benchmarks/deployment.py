#!/usr/bin/env python3
"""VT-ResNet-N / ResNet-N inference throughput in three deployment runtimes (issue 14, item 4).

For each depth, both models run one fixed random batch in fp32 eager PyTorch (``torch.inference_mode``),
bf16 autocast on CPU (``torch.autocast('cpu', dtype=torch.bfloat16)``) and ONNX Runtime
(CPUExecutionProvider, ``intra_op_num_threads`` = ``--threads``, ``inter_op_num_threads`` 1) on the file
``vt_timm.tools.export.export_onnx`` writes. Within each runtime the VT-ResNet and the ResNet are timed
alternately, one call each per round (median ms), so that both see the same machine load; the time ratio
is ResNet ms / VT-ResNet ms (> 1: the VT-ResNet is faster), next to the ResNet / VT-ResNet MAC ratio (the
paper's form, ``profile_model``). The weights are random (seed 0) with every residual branch active
(``zero_init_last=False``: every op moves the logits, and the VT's tokens differ, where with the zero-init
last BNs of a fresh model they nearly coincide); for bf16 and ONNX, the max abs difference of the logits to
fp32 eager's, relative to the largest fp32 logit, shows the deployed model computes the same function. The
header says whether oneDNN has native bf16 kernels on this CPU (without, bf16 is emulated and slow).

    python benchmarks/deployment.py [--threads 2] [-b 16] [--depths 18 50] [--rounds 10] [--markdown]
"""
import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import onnxruntime as ort
import timm
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vt_timm  # noqa: E402,F401  registers the models
from benchmarks.vt_stage import Run, time_alternately  # noqa: E402
from vt_timm.tools.export import export_onnx  # noqa: E402
from vt_timm.tools.macs import format_table, profile_model  # noqa: E402

RUNTIMES = ('fp32 eager', 'bf16 autocast', 'onnxruntime')


@dataclass
class Result:
    """One depth in one runtime: median ms of each model and each one's output error relative to fp32 eager
    (max abs difference / max abs fp32 output; None for fp32 eager itself)."""
    depth: int
    runtime: str
    vt_ms: float
    resnet_ms: float
    mac_ratio: float
    vt_error: Optional[float]
    resnet_error: Optional[float]

    @property
    def time_ratio(self) -> float:
        return self.resnet_ms / self.vt_ms


def random_model(name: str) -> nn.Module:
    """``name`` in eval mode with random weights (seed 0) and every residual branch active."""
    torch.manual_seed(0)
    return timm.create_model(name, zero_init_last=False).eval()


def onnx_session(model: nn.Module, path: Path, img_size: int, threads: int) -> ort.InferenceSession:
    """ONNX Runtime CPU session on ``model`` exported to ``path``."""
    export_onnx(model, path, input_size=(3, img_size, img_size))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def runtime_runs(model: nn.Module, session: ort.InferenceSession, x: torch.Tensor) -> Dict[str, Run]:
    """One inference of ``model`` on ``x`` per runtime, each returning the logits as a float32 tensor."""
    feed = {session.get_inputs()[0].name: x.numpy()}

    def bf16() -> torch.Tensor:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return model(x).float()
    return {
        'fp32 eager': lambda: model(x),
        'bf16 autocast': bf16,
        'onnxruntime': lambda: torch.from_numpy(session.run(None, feed)[0]),
    }


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs difference of ``output`` to ``reference``, relative to the largest magnitude in ``reference``."""
    return ((output - reference).abs().max() / reference.abs().max()).item()


def depth_results(depth: int, batch_size: int, img_size: int, rounds: int, threads: int) -> List[Result]:
    """VT-ResNet-``depth`` and ResNet-``depth`` timed alternately in each runtime, on a fixed random batch."""
    names = (f'vt_resnet{depth}', f'resnet{depth}')
    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    models = {name: random_model(name) for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: runtime_runs(model, onnx_session(model, Path(tmp, f'{name}.onnx'), img_size, threads), x)
                for name, model in models.items()}
    vt_macs, resnet_macs = (profile_model(name, img_size).macs for name in names)
    results = []
    with torch.inference_mode():
        reference = {name: runs[name]['fp32 eager']() for name in names}
        for runtime in RUNTIMES:
            ms = time_alternately({name: runs[name][runtime] for name in names}, rounds)
            error = {name: None if runtime == 'fp32 eager' else relative_error(runs[name][runtime](), reference[name])
                     for name in names}
            results.append(Result(depth, runtime, ms[names[0]], ms[names[1]], resnet_macs / vt_macs,
                                  error[names[0]], error[names[1]]))
    return results


def _error(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.1e}'


def result_table(results: Sequence[Result]) -> List[List[str]]:
    """One row per depth and runtime: both models' ms, the time and MAC ratios, both output errors."""
    rows = [['depth', 'runtime', 'VT-ResNet ms', 'ResNet ms', 'time ratio ResNet / VT', 'MAC ratio ResNet / VT',
             'VT-ResNet error vs fp32', 'ResNet error vs fp32']]
    for r in results:
        rows.append([str(r.depth), r.runtime, f'{r.vt_ms:.1f}', f'{r.resnet_ms:.1f}', f'{r.time_ratio:.2f}',
                     f'{r.mac_ratio:.2f}', _error(r.vt_error), _error(r.resnet_error)])
    return rows


def ratio_table(results: Sequence[Result]) -> List[List[str]]:
    """Per depth, ResNet / VT-ResNet: MACs and the time in each runtime, side by side."""
    by_depth: Dict[int, Dict[str, Result]] = {}
    for r in results:
        by_depth.setdefault(r.depth, {})[r.runtime] = r
    rows = [['depth', 'MAC ratio', *(f'time ratio, {runtime}' for runtime in RUNTIMES)]]
    for depth, row in by_depth.items():
        rows.append([str(depth), f'{row[RUNTIMES[0]].mac_ratio:.2f}',
                     *(f'{row[runtime].time_ratio:.2f}' for runtime in RUNTIMES)])
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('-b', '--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--depths', type=int, nargs='+', default=[18, 50], choices=(18, 34, 50, 101))
    parser.add_argument('--rounds', type=int, default=10, help='timed calls per model and runtime (median)')
    parser.add_argument('--markdown', action='store_true')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'inference, batch {args.batch_size}, {args.img_size} px, {args.threads} threads, torch {torch.__version__} '
          f'(CPU capability {torch.backends.cpu.get_cpu_capability()}, '
          f'oneDNN bf16 kernels {torch.ops.mkldnn._is_mkldnn_bf16_supported()}), onnxruntime {ort.__version__}, '
          f'timm {timm.__version__}\n')
    results = [r for depth in args.depths
               for r in depth_results(depth, args.batch_size, args.img_size, args.rounds, args.threads)]
    print(format_table(result_table(results), args.markdown))
    print('\nResNet / VT-ResNet per depth (> 1: the VT-ResNet is faster)\n')
    print(format_table(ratio_table(results), args.markdown))


if __name__ == '__main__':
    main()
