#!/usr/bin/env python3
"""Where the VT stage's time goes, next to the ResNet layer4 it replaces (docs/benchmarks.md).

For each depth, inference on the stride-16 map (batch x C x 14 x 14 at 224 px): ResNet-N's layer4,
VT-ResNet-N's VT stage, the same stage on its reference paths (``fused_attn=False``: the equations
as written) and each part of the stage (lift, then per module tokenizer, relation, projector), timed
alternately round by round (median); then a training step of each stage (forward + backward on its
own input, train mode), layer4's and the VT stage's timed alternately. MACs by the project's counter,
in the paper's form (the equations as written; a training step's forward and backward) and as
executed (the fast inference paths re-associate some products), with the resulting GMAC/s. Two
reference rows give this machine's rate for each kind of work: a plain fp32 GEMM at the shape of
the VT's FFN (batch*L x C_T x C_T) and the 3x3 convolution of layer4 (512 channels at 7x7, or the
bottleneck's 3x3 at 7x7). A second table reads the ratios layer4 / VT stage per depth.

``--compile`` times layer4, the VT stage (fast and reference paths) and both training steps through
``torch.compile`` (inductor, each module compiled on its own; MACs are counted on the same modules
uncompiled); the parts and the two rows of this machine's GEMM and convolution rates are then left out.

    python benchmarks/vt_stage.py [--threads 2] [-b 16] [--depths 18 34 50 101] [--compile] [--markdown]
"""
import copy
import argparse
import os
import statistics
import sys
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vt_timm  # noqa: E402,F401  registers the models
from vt_timm.tools.macs import count_call_macs, format_table, reference_paths  # noqa: E402

Run = Callable[[], Any]


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


def stage_parts(
        depth: int,
        batch_size: int,
        compiled: bool = False,
) -> Tuple[Dict[str, Run], Dict[str, Run], Dict[str, Run], Dict[str, Run], nn.Module]:
    """Inference and training-step callables for ResNet-N's layer4, the VT stage (and, inference only, the
    stage on its reference paths and, uncompiled, its parts), on a fixed random stride-16 map, twice: to
    time (through ``torch.compile`` if ``compiled``) and to count MACs (uncompiled); and the VT stage."""
    torch.manual_seed(0)
    resnet = timm.create_model(f'resnet{depth}').eval()
    vt = timm.create_model(f'vt_resnet{depth}').eval().vt
    x = torch.randn(batch_size, resnet.layer4[0].conv1.in_channels, 14, 14)
    infer: Dict[str, Run] = {
        f'resnet{depth} layer4': lambda: resnet.layer4(x),
        f'vt_resnet{depth} vt': lambda: vt(x),
        f'vt_resnet{depth} vt, reference paths': partial(reference_call, vt, x),
    }
    train = {
        f'resnet{depth} layer4, training step': training_step(copy.deepcopy(resnet.layer4), x),
        f'vt_resnet{depth} vt, training step': training_step(copy.deepcopy(vt), x),
    }
    if compiled:
        layer4, stage = torch.compile(resnet.layer4), torch.compile(vt)
        timed_infer = dict(zip(infer, (partial(layer4, x), partial(stage, x), partial(reference_call, stage, x))))
        timed_train = {name: training_step(torch.compile(copy.deepcopy(module)), x)
                       for name, module in zip(train, (resnet.layer4, vt))}
        return timed_infer, infer, timed_train, train, vt
    # the parts, each on the input the stage gives it
    with torch.no_grad():
        lifted = vt.lift(x.contiguous(memory_format=torch.channels_last))
        maps, tokens, block_tokens = [lifted], [None], []
        for block in vt.blocks:
            block_tokens.append(block.tokenizer(maps[-1], tokens[-1]))
            tokens.append(block.relation(block_tokens[-1]))
            maps.append(block.projector(maps[-1], tokens[-1]) if block.projector is not None else maps[-1])
    if not isinstance(vt.lift, nn.Identity):
        infer['- lift'] = lambda: vt.lift(x.contiguous(memory_format=torch.channels_last))
    for i, block in enumerate(vt.blocks):
        infer[f'- {i} tokenizer'] = lambda b=block, m=maps[i], t=tokens[i]: b.tokenizer(m, t)
        infer[f'- {i} relation'] = lambda b=block, t=block_tokens[i]: b.relation(t)
        if block.projector is not None:
            infer[f'- {i} projector'] = lambda b=block, m=maps[i], t=tokens[i + 1]: b.projector(m, t)
    return infer, infer, train, train, vt


def reference_call(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``stage`` on ``x`` on its reference paths (the equations as written)."""
    with reference_paths(stage):
        return stage(x)


def training_step(stage: nn.Module, x: torch.Tensor) -> Run:
    """One forward + backward of ``stage`` (train mode) on ``x``, from a fixed random output gradient, with the
    gradient of the input as in a whole network; gradients are reset, not accumulated."""
    stage.train()
    x = x.clone().requires_grad_(True)
    with torch.no_grad():
        grad = torch.randn_like(stage(x))

    def run() -> None:
        stage.zero_grad(set_to_none=True)
        x.grad = None
        stage(x).backward(grad)
    return run


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


def _rows(runs: Dict[str, Run], ms: Dict[str, float], paper: Dict[str, float],
          executed: Dict[str, float]) -> List[List[str]]:
    return [[name, f'{paper[name]:.1f}', f'{ms[name]:.2f}', f'{paper[name] / ms[name]:.0f}',
             f'{executed[name]:.1f}', f'{executed[name] / ms[name]:.0f}'] for name in runs]


def stage_table(depths: Sequence[int], batch_size: int, rounds: int, compiled: bool = False) -> List[List[str]]:
    """One row per timed part: name, MMACs (paper form), ms, GMAC/s, MMACs executed, GMAC/s executed."""
    rows = [['part', 'MMACs', 'ms', 'GMAC/s', 'MMACs executed', 'GMAC/s executed']]
    for depth in depths:
        infer, counted_infer, train, counted_train, vt = stage_parts(depth, batch_size, compiled)
        if not compiled:
            infer.update(reference_runs(batch_size))
        with reference_paths(vt):
            paper = {name: count_call_macs(counted_infer[name])[0] / 1e6 for name in infer}
        executed = {name: count_call_macs(counted_infer[name])[0] / 1e6 for name in infer}
        for name in train:  # a training step runs the written equations: one count for both
            paper[name] = executed[name] = count_call_macs(counted_train[name], grad=True)[0] / 1e6
        with torch.inference_mode():
            rows += _rows(infer, time_alternately(infer, rounds), paper, executed)
        rows += _rows(train, time_alternately(train, rounds), paper, executed)
    return rows


def ratio_table(rows: List[List[str]], depths: Sequence[int]) -> List[List[str]]:
    """Per depth, layer4 / VT stage: MACs (paper form, executed) and time (inference, training step)."""
    table = {r[0]: r for r in rows[1:]}
    out = [['depth', 'MACs ratio (paper form)', 'MACs ratio (executed)', 'time ratio, inference',
            'time ratio, training step', 'VT reference / fast paths, time']]
    for depth in depths:
        l4, vt = table[f'resnet{depth} layer4'], table[f'vt_resnet{depth} vt']
        l4_train, vt_train = table[f'resnet{depth} layer4, training step'], table[f'vt_resnet{depth} vt, training step']
        reference = table[f'vt_resnet{depth} vt, reference paths']
        out.append([
            str(depth), f'{float(l4[1]) / float(vt[1]):.2f}', f'{float(l4[4]) / float(vt[4]):.2f}',
            f'{float(l4[2]) / float(vt[2]):.2f}', f'{float(l4_train[2]) / float(vt_train[2]):.2f}',
            f'{float(reference[2]) / float(vt[2]):.2f}',
        ])
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('-b', '--batch-size', type=int, default=16)
    parser.add_argument('--depths', type=int, nargs='+', default=[18, 34, 50, 101], choices=(18, 34, 50, 101))
    parser.add_argument('--rounds', type=int, default=15, help='timed calls per part (median)')
    parser.add_argument('--compile', action='store_true', help='time the stages through torch.compile (inductor)')
    parser.add_argument('--markdown', action='store_true')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'inference and training step, batch {args.batch_size}, stride-16 map at 224 px, {args.threads} threads, '
          f'{"torch.compile (inductor)" if args.compile else "eager"}, torch {torch.__version__}, '
          f'timm {timm.__version__}\n')
    rows = stage_table(args.depths, args.batch_size, args.rounds, args.compile)
    print(format_table(rows, args.markdown))
    print('\nlayer4 / VT stage per depth\n')
    print(format_table(ratio_table(rows, args.depths), args.markdown))


if __name__ == '__main__':
    main()
