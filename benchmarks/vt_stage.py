#!/usr/bin/env python3
"""Where the VT stage's time goes, next to the ResNet layer4 it replaces (docs/benchmarks.md).

For each depth, inference on the stride-16 map (batch x C x 14 x 14 at 224 px): ResNet-N's layer4,
VT-ResNet-N's VT stage and each of its parts (lift, then per module tokenizer, relation,
projector), timed alternately round by round (median), with their MACs (the project's counter)
and the resulting GMAC/s. Two reference rows give this machine's rate for each kind of work:
a plain fp32 GEMM at the shape of the VT's FFN (batch*L x C_T x C_T) and the 3x3 convolution of
layer4 (512 channels at 7x7, or the bottleneck's 3x3 at 7x7).

    python benchmarks/vt_stage.py [--threads 2] [-b 16] [--depths 18 34 50 101] [--markdown]
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vt_timm  # noqa: E402,F401  registers the models
from vt_timm.tools.macs import count_call_macs, format_table  # noqa: E402

Run = Callable[[], torch.Tensor]


def time_alternately(runs: Dict[str, Run], rounds: int, warmup: int = 3) -> Dict[str, float]:
    """Median milliseconds of each run, timed one call each per round."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def stage_parts(depth: int, batch_size: int) -> Dict[str, Run]:
    """Callables for ResNet-N's layer4, the VT stage and its parts, on a fixed random stride-16 map."""
    torch.manual_seed(0)
    resnet = timm.create_model(f'resnet{depth}').eval()
    vt = timm.create_model(f'vt_resnet{depth}').eval().vt
    x = torch.randn(batch_size, resnet.layer4[0].conv1.in_channels, 14, 14)
    with torch.no_grad():
        lifted = vt.lift(x.contiguous(memory_format=torch.channels_last))
        maps, tokens, block_tokens = [lifted], [None], []
        for block in vt.blocks:
            block_tokens.append(block.tokenizer(maps[-1], tokens[-1]))
            tokens.append(block.relation(block_tokens[-1]))
            maps.append(block.projector(maps[-1], tokens[-1]) if block.projector is not None else maps[-1])
    runs: Dict[str, Run] = {f'resnet{depth} layer4': lambda: resnet.layer4(x), f'vt_resnet{depth} vt': lambda: vt(x)}
    if not isinstance(vt.lift, nn.Identity):
        runs['- lift'] = lambda: vt.lift(x.contiguous(memory_format=torch.channels_last))
    for i, block in enumerate(vt.blocks):
        runs[f'- {i} tokenizer'] = lambda b=block, m=maps[i], t=tokens[i]: b.tokenizer(m, t)
        runs[f'- {i} relation'] = lambda b=block, t=block_tokens[i]: b.relation(t)
        if block.projector is not None:
            runs[f'- {i} projector'] = lambda b=block, m=maps[i], t=tokens[i + 1]: b.projector(m, t)
    return runs


def reference_runs(batch_size: int, token_chs: int = 1024, num_tokens: int = 16) -> Dict[str, Run]:
    """This machine's rate for a plain GEMM at the FFN's shape and for layer4's 3x3 convolution."""
    rows = torch.randn(batch_size * num_tokens, token_chs)
    weight = torch.randn(token_chs, token_chs)
    width = 512  # layer4's 3x3 convs: 512 channels (BasicBlock), 512 inner channels (Bottleneck)
    fmap, kernel = torch.randn(batch_size, width, 7, 7), torch.randn(width, width, 3, 3)
    return {
        f'ref: GEMM {batch_size * num_tokens}x{token_chs}x{token_chs} (torch.mm)': lambda: rows @ weight,
        f'ref: conv3x3 {width}->{width} at 7x7 (layer4)': lambda: F.conv2d(fmap, kernel, padding=1),
    }


def stage_table(depths: Sequence[int], batch_size: int, rounds: int) -> List[List[str]]:
    rows = [['part', 'MMACs', 'ms', 'GMAC/s']]
    with torch.inference_mode():
        for depth in depths:
            runs = {**stage_parts(depth, batch_size), **reference_runs(batch_size)}
            macs = {name: count_call_macs(run)[0] / 1e6 for name, run in runs.items()}
            ms = time_alternately(runs, rounds)
            rows += [[name, f'{macs[name]:.1f}', f'{ms[name]:.2f}', f'{macs[name] / ms[name]:.0f}'] for name in runs]
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('-b', '--batch-size', type=int, default=16)
    parser.add_argument('--depths', type=int, nargs='+', default=[18, 34, 50, 101], choices=(18, 34, 50, 101))
    parser.add_argument('--rounds', type=int, default=15, help='timed calls per part (median)')
    parser.add_argument('--markdown', action='store_true')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'inference, batch {args.batch_size}, stride-16 map at 224 px, {args.threads} threads, '
          f'torch {torch.__version__}, timm {timm.__version__}\n')
    print(format_table(stage_table(args.depths, args.batch_size, args.rounds), args.markdown))


if __name__ == '__main__':
    main()
