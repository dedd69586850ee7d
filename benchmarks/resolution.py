#!/usr/bin/env python3
"""Cost against resolution (issue 14): MACs and time of VT-ResNet vs ResNet and VT-FPN vs FPN as the image grows.

The paper's claim: a VT spends its token operations on L tokens whatever the image size, so only its pixel
side (lift, tokenizers' and projectors' pixel products) grows with the image, and its advantage over the
convolutions it replaces widens with resolution. For each pair and input size (square sizes and the
800x1216 of the paper's Table 9): the whole model's MACs and time, and those of the part the VT replaces
(ResNet's layer4 vs the VT stage; FPN vs VT-FPN neck), each part timed on its own input (the map the model
feeds it). Token side = the token relations (the transformers, or graph convolutions, on the L tokens),
counted per module and timed on their own tokens; the tokens-only linear maps inside tokenizers and
projectors (value maps, W_T->R, W_K) are constant too but counted with their module, so the token shares
are lower bounds. MACs per image in the paper's form (``vt_timm.tools.macs``, meta device); times are
medians of fp32 inference (``torch.inference_mode``), baseline and VT timed alternately round by round.

    python benchmarks/resolution.py [--depths 18 50] [-b 1] [--threads 2] [--rounds 5] [--macs-only]
                                    [--markdown] [--plot PATH]
"""
import argparse
import os
import sys
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vt_timm  # noqa: E402,F401  registers the models
from benchmarks.vt_stage import Run, time_alternately  # noqa: E402
from vt_timm.layers import TokenGraphConv, TokenTransformer  # noqa: E402
from vt_timm.models.vt_fpn import HEADS, create_segmentation_model  # noqa: E402
from vt_timm.tools.files import replacing  # noqa: E402
from vt_timm.tools.macs import STAGE5, count_macs, format_table  # noqa: E402
from vt_timm.tools.segmentation_macs import PAPER_TABLES  # noqa: E402

Size = Tuple[int, int]
SIZES: Tuple[Size, ...] = ((224, 224), (320, 320), (448, 448), (640, 640), PAPER_TABLES['Table 9, COCO-stuff'].img_size)
SEG_BACKBONE = 'resnet50'
SEG_CLASSES = PAPER_TABLES['Table 9, COCO-stuff'].num_classes
SIDES = ('base', 'vt')


@dataclass(frozen=True)
class Pair:
    """A baseline and its VT counterpart: their builders (taking ``device=``) and the part the VT replaces."""
    name: str
    builders: Tuple[Callable[..., nn.Module], Callable[..., nn.Module]]
    parts: Tuple[str, str]

    @property
    def part_name(self) -> str:
        return self.parts[0] if self.parts[0] == self.parts[1] else ' / '.join(self.parts)


@dataclass(frozen=True)
class Cost:
    """One model at one size: MACs per image (whole, replaced part, token relations) and, if timed, ms."""
    macs: float
    part_macs: float
    token_macs: float
    ms: Optional[float] = None
    part_ms: Optional[float] = None
    token_ms: Optional[float] = None


@dataclass(frozen=True)
class Result:
    pair: Pair
    size: Size
    costs: Tuple[Cost, Cost]  # baseline, VT


def classification_pair(depth: int) -> Pair:
    return Pair(f'resnet{depth} / vt_resnet{depth}',
                (partial(timm.create_model, f'resnet{depth}'), partial(timm.create_model, f'vt_resnet{depth}')),
                (STAGE5['ResNet'], STAGE5['VTResNet']))


def segmentation_pair(backbone: str = SEG_BACKBONE, num_classes: int = SEG_CLASSES) -> Pair:
    return Pair(f'{backbone} {" / ".join(HEADS)}',
                tuple(partial(create_segmentation_model, backbone, head, num_classes) for head in HEADS),
                ('neck', 'neck'))


def token_relations(model: nn.Module) -> List[str]:
    """Names of the modules that work on the tokens alone: the token relations."""
    return [name for name, m in model.named_modules() if isinstance(m, (TokenTransformer, TokenGraphConv))]


def count_cost(model: nn.Module, part: str, size: Size) -> Cost:
    """MACs of one image through ``model`` (meta device is enough), of its ``part`` and of its token relations."""
    total, per_module = count_macs(model, size)
    prefix = type(model).__name__
    token = sum(per_module.get(f'{prefix}.{name}', 0.) for name in token_relations(model))
    return Cost(total, per_module[f'{prefix}.{part}'], token)


def module_inputs(model: nn.Module, modules: Sequence[nn.Module], x: torch.Tensor) -> List[tuple]:
    """The positional inputs each of ``modules`` receives in one forward of ``model`` on ``x``."""
    inputs: Dict[nn.Module, tuple] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args)) for m in modules]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [inputs[m] for m in modules]


def model_runs(model: nn.Module, part: str, x: torch.Tensor) -> Dict[str, Run]:
    """Callables of the whole model on ``x``, its part and (where it has them) its token relations, each on the
    input the model feeds it."""
    relations = [model.get_submodule(name) for name in token_relations(model)]
    module = getattr(model, part)
    part_args, *relation_args = module_inputs(model, [module, *relations], x)
    runs = {'model': lambda: model(x), 'part': lambda: module(*part_args)}
    if relations:
        runs['tokens'] = lambda: [r(*args) for r, args in zip(relations, relation_args)]
    return runs


def time_models(models: Sequence[nn.Module], parts: Sequence[str], size: Size, batch_size: int,
                rounds: int) -> Dict[str, float]:
    """Median ms of the baseline's and the VT's runs (``model_runs``, keyed 'base model', 'vt part', ...) on a
    random batch at ``size``, all timed alternately."""
    x = torch.randn(batch_size, 3, *size)
    with torch.inference_mode():
        runs = {f'{side} {k}': run for side, model, part in zip(SIDES, models, parts)
                for k, run in model_runs(model, part, x).items()}
        return time_alternately(runs, rounds)


def measure(pairs: Sequence[Pair], sizes: Sequence[Size], batch_size: int = 1,
            rounds: Optional[int] = None) -> List[Result]:
    """MACs of every pair at every size, and their times unless ``rounds`` is None."""
    results = []
    for pair in pairs:
        meta = [build(device='meta').eval() for build in pair.builders]
        torch.manual_seed(0)
        models = [build().eval() for build in pair.builders] if rounds is not None else []
        for size in sizes:
            costs = tuple(count_cost(model, part, size) for model, part in zip(meta, pair.parts))
            if models:
                ms = time_models(models, pair.parts, size, batch_size, rounds)
                costs = tuple(replace(c, ms=ms[f'{side} model'], part_ms=ms[f'{side} part'],
                                      token_ms=ms.get(f'{side} tokens')) for side, c in zip(SIDES, costs))
            results.append(Result(pair, size, costs))
    return results


def _size(size: Size) -> str:
    return f'{size[0]}x{size[1]}'


def _vs(base: float, vt: float, scale: float, digits: int) -> List[str]:
    return [f'{base / scale:.{digits}f}', f'{vt / scale:.{digits}f}', f'{base / vt:.2f}x']


def _share(part: float, whole: float) -> str:
    return f'{100 * part / whole:.1f}%'


def _timed(results: Sequence[Result]) -> bool:
    return results[0].costs[0].ms is not None


def model_table(results: Sequence[Result]) -> List[List[str]]:
    """Whole models per pair and size: GMACs and ms, baseline vs VT, and the token relations' share of the VT."""
    timed = _timed(results)
    rows = [['pair', 'input', 'Mpx', 'GMACs base', 'GMACs VT', 'MAC ratio',
             *(['ms base', 'ms VT', 'time ratio'] if timed else []), 'token MMACs', 'token share of VT']]
    for r in results:
        base, vt = r.costs
        rows.append([r.pair.name, _size(r.size), f'{r.size[0] * r.size[1] / 1e6:.3f}', *_vs(base.macs, vt.macs, 1e9, 3),
                     *(_vs(base.ms, vt.ms, 1, 1) if timed else []),
                     f'{vt.token_macs / 1e6:.1f}', _share(vt.token_macs, vt.macs)])
    return rows


def part_table(results: Sequence[Result]) -> List[List[str]]:
    """The replaced part per pair and size (layer4 vs VT stage, FPN vs VT-FPN neck), and its token side."""
    timed = _timed(results)
    rows = [['pair', 'part', 'input', 'GMACs base', 'GMACs VT', 'MAC ratio',
             *(['ms base', 'ms VT', 'time ratio'] if timed else []), 'token MMACs', 'token share of VT part',
             *(['token ms', 'token time share'] if timed else [])]]
    for r in results:
        base, vt = r.costs
        rows.append([r.pair.name, r.pair.part_name, _size(r.size), *_vs(base.part_macs, vt.part_macs, 1e9, 3),
                     *(_vs(base.part_ms, vt.part_ms, 1, 2) if timed else []),
                     f'{vt.token_macs / 1e6:.1f}', _share(vt.token_macs, vt.part_macs),
                     *([f'{vt.token_ms:.2f}', _share(vt.token_ms, vt.part_ms)] if timed else [])])
    return rows


def token_summary(results: Sequence[Result]) -> List[str]:
    """Per pair, the VT's token-relation MMACs across the sizes: one figure if they are all equal."""
    lines = []
    for pair in dict.fromkeys(r.pair for r in results):
        mmacs = [f'{r.costs[1].token_macs / 1e6:.1f}' for r in results if r.pair == pair]
        sizes = ', '.join(_size(r.size) for r in results if r.pair == pair)
        same = len(set(mmacs)) == 1
        lines.append(f'{pair.name}: token-relation MMACs {mmacs[0] if same else " / ".join(mmacs)} at {sizes}'
                     f'{" (constant)" if same else ""}')
    return lines


def plot(results: Sequence[Result], path: str) -> None:
    """MAC ratio and (if timed) time ratio, baseline / VT, against megapixels: whole model solid, part dashed."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = [('MACs', 'macs', 'part_macs')] + ([('time', 'ms', 'part_ms')] if _timed(results) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, whole, part) in zip(axes[0], panels):
        for i, pair in enumerate(dict.fromkeys(r.pair for r in results)):
            rows = [r for r in results if r.pair == pair]
            mpx = [r.size[0] * r.size[1] / 1e6 for r in rows]
            for key, style, label in ((whole, '-o', pair.name), (part, '--s', f'{pair.name}: {pair.part_name}')):
                ratios = [getattr(r.costs[0], key) / getattr(r.costs[1], key) for r in rows]
                ax.plot(mpx, ratios, style, color=f'C{i}', label=label)
        ax.axhline(1, color='grey', lw=.8)
        ax.set(xlabel='input (megapixels)', ylabel='baseline / VT', title=f'{title}, baseline / VT')
        ax.grid(alpha=.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def parse_size(text: str) -> Size:
    """'224' (square) or '800x1216' (H x W)."""
    h, _, w = text.partition('x')
    return int(h), int(w or h)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--depths', type=int, nargs='+', default=[18, 50], choices=(18, 34, 50, 101))
    parser.add_argument('--sizes', type=parse_size, nargs='+', default=list(SIZES), help="'224' or '800x1216'")
    parser.add_argument('-b', '--batch-size', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=5, help='timed calls per run (median)')
    parser.add_argument('--macs-only', '--no-time', action='store_true', help='MACs only (meta device, no timing)')
    parser.add_argument('--markdown', action='store_true')
    parser.add_argument('--plot', metavar='PATH', help='write the ratios against megapixels as a PNG')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = [*map(classification_pair, args.depths), segmentation_pair()]
    results = measure(pairs, args.sizes, args.batch_size, None if args.macs_only else args.rounds)
    timing = '' if args.macs_only else (f'; ms per batch of {args.batch_size}, fp32 inference, {args.threads} threads, '
                                        f'median of {args.rounds}')
    print(f'MACs per image (paper form){timing}; segmentation: {SEG_CLASSES} classes; '
          f'torch {torch.__version__}, timm {timm.__version__}\n')
    print(format_table(model_table(results), args.markdown))
    print('\nthe part the VT replaces, on its own input; token side = the token relations\n')
    print(format_table(part_table(results), args.markdown))
    print('\n' + '\n'.join(token_summary(results)))
    if args.plot:
        plot(results, args.plot)
        print(f'\nplot: {args.plot}')


if __name__ == '__main__':
    main()
