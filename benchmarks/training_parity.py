#!/usr/bin/env python3
"""Training parity: does VT-ResNet-18 train at least as well as ResNet-18 under each recipe?

Real Fashion-MNIST at 112 px (the stride-16 map is 7x7), the same images, batch order and seeds for
both models, the three optimiser families of the paper's recipes (``vt_timm.tools.parity.RECIPES``: Nesterov
SGD, AdamW, TF RMSProp with warm-up), several seeds each. Prints and writes a Markdown report: final
train loss, train and held-out top-1 (mean, spread), MACs, and per VT module after training how
distinct the tokens are (mean pairwise cosine of the L attention maps, entropy / ln(HW)).

    python benchmarks/training_parity.py --out docs/training_parity.md

A benchmark, not a test: about 3 minutes per run on a 2-core CPU (18 runs by default). Finished runs
are cached as JSON under --runs, so an interrupted benchmark resumes where it stopped.
"""
import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vt_timm.tools.parity import RECIPES, RunResult, cached_train_run, load_fashion_mnist  # noqa: E402
from vt_timm.tools.macs import profile_model  # noqa: E402

TARGET_COSINE = 0.5


def _stats(values: List[float]) -> Dict[str, float]:
    return dict(mean=statistics.mean(values), spread=max(values) - min(values), values=values)


def _cell(stats: Dict[str, float], fmt: str = '.1f') -> str:
    per_seed = ' / '.join(format(v, fmt) for v in stats['values'])
    return f'{stats["mean"]:{fmt}} ({per_seed})'


def report(results: Dict[str, Dict[str, List[RunResult]]], macs: Dict[str, float], args: argparse.Namespace) -> str:
    reference, candidate = args.models
    lines = [
        '```',
        f'python benchmarks/training_parity.py {" ".join(args.argv)}'.rstrip(),
        '```',
        '',
        f'Real Fashion-MNIST (Debian dataset-fashion-mnist): {args.train_samples} training and {args.test_samples} '
        f'held-out test images, the same for every run; grey, {args.img_size} px (stride-16 map '
        f'{(args.img_size + 15) // 16}x{(args.img_size + 15) // 16}); batch {args.batch_size}, {args.epochs} epochs; '
        f'seeds {args.seeds} (initialisation and batch order, the same for both models); torch {torch.__version__}, '
        f'CPU. Train loss and train top-1: mean over the last 20 updates (train mode); held-out top-1: eval mode. '
        f'Per cell: mean over seeds (per seed). Spread = max - min over seeds.',
        '',
    ]
    verdicts = []
    for recipe, by_model in results.items():
        r = RECIPES[recipe]
        lines += [f'### {recipe}: {r.note}; lr {r.lr:g} at batch {args.batch_size}, cosine, '
                  f'{r.warmup_frac:.0%} linear warm-up', '',
                  '| model | train loss | train top-1 % | held-out top-1 % | MMACs @' + str(args.img_size) + ' |',
                  '|---|---|---|---|---|']
        stats = {}
        for model, runs in by_model.items():
            stats[model] = {k: _stats([getattr(run, k) for run in runs]) for k in ('train_loss', 'train_top1', 'test_top1')}
            s = stats[model]
            lines.append(f'| {model} | {_cell(s["train_loss"], ".3f")} | {_cell(s["train_top1"])} | '
                         f'{_cell(s["test_top1"])} | {macs[model]:.0f} |')
        ref, cand = stats[reference], stats[candidate]
        spread = max(ref['test_top1']['spread'], cand['test_top1']['spread'])
        loss_ok = cand['train_loss']['mean'] <= ref['train_loss']['mean']
        test_ok = cand['test_top1']['mean'] >= ref['test_top1']['mean'] - spread
        diversity = [run.diversity for run in by_model[candidate]]
        modules = len(diversity[0])
        cosines = [statistics.mean(d[i]['cosine'] for d in diversity) for i in range(modules)]
        entropies = [statistics.mean(d[i]['entropy'] for d in diversity) for i in range(modules)]
        eranks = [statistics.mean(d[i]['erank'] for d in diversity) for i in range(modules)]
        cos_ok = all(c < TARGET_COSINE for c in cosines)
        lines += ['', f'{candidate} tokens after training (held-out images, mean over seeds): ' + '; '.join(
            f'module {i}: cosine {c:.2f}, entropy {e:.2f} ln(HW), effective rank {k:.1f} of {16}'
            for i, (c, e, k) in enumerate(zip(cosines, entropies, eranks))) + '.', '']
        lines.append(
            f'Targets: train loss {cand["train_loss"]["mean"]:.3f} <= {ref["train_loss"]["mean"]:.3f}: '
            f'**{"met" if loss_ok else "not met"}**; held-out {cand["test_top1"]["mean"]:.1f} >= '
            f'{ref["test_top1"]["mean"]:.1f} - {spread:.1f}: **{"met" if test_ok else "not met"}**; '
            f'every module\'s cosine < {TARGET_COSINE}: **{"met" if cos_ok else "not met"}**.')
        lines.append('')
        verdicts.append((recipe, loss_ok, test_ok, cos_ok))
    lines += ['| recipe | train loss target | held-out target | distinct tokens |', '|---|---|---|---|']
    lines += [f'| {recipe} | {"met" if a else "not met"} | {"met" if b else "not met"} | {"met" if c else "not met"} |'
              for recipe, a, b, c in verdicts]
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs=2, default=['resnet18', 'vt_resnet18'], metavar=('REFERENCE', 'CANDIDATE'))
    parser.add_argument('--recipes', nargs='+', default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--train-samples', type=int, default=2500)
    parser.add_argument('--test-samples', type=int, default=1000)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=50)
    parser.add_argument('--img-size', type=int, default=112)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', default=str(ROOT / 'output' / 'training_parity'), help='cache of finished runs')
    parser.add_argument('--out', default='', help='write the Markdown report here')
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.img_size < 112:
        raise SystemExit(f'--img-size {args.img_size}: the stride-16 map must be at least 7x7 (>= 112 px)')
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(args.train_samples, args.test_samples, args.img_size)
    macs = {m: profile_model(m, img_size=args.img_size, num_classes=10, in_chans=1).macs / 1e6 for m in args.models}
    results = {recipe: {m: [cached_train_run(m, recipe, seed, data, args.runs, args.epochs, args.batch_size)
                              for seed in args.seeds] for m in args.models}
               for recipe in args.recipes}
    text = report(results, macs, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == '__main__':
    main()
