#!/usr/bin/env python3
"""Table 2 of Visual Transformers (Wu et al., arXiv:2006.03677) in miniature, on real data.

ResNet-18, VT-ResNet-18 and the R18 ablation rows of Tables 3, 5 and 7 (pooling first tokenizer,
no token relation, no projector) trained with the training-parity protocol (``vt_timm.tools.parity``: the
same fixed subset of real Fashion-MNIST at 112 px for every run, so the stride-16 map is 7x7, the
same batches and seeds for every model, one of the paper's optimiser recipes, the paper's default
Nesterov SGD unless --recipe says otherwise), several seeds each; writes train loss, train and
held-out top-1 (mean, spread), MACs, params and the paper's figures.

    python benchmarks/mini_table2.py --out docs/mini_table2.md

A benchmark, not a test: about 3-8 minutes per run on a 2-core CPU. Finished runs are cached as JSON
under --runs, shared with benchmarks/training_parity.py (its ResNet-18 and VT-ResNet-18 runs are reused).
"""
import argparse
import statistics
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vt_timm.tools.parity import RECIPES, cached_train_run, load_fashion_mnist  # noqa: E402
from vt_timm.tools.macs import format_table, profile_model  # noqa: E402

# row name -> (timm model, --model-kwargs); the paper's R18 rows: Table 2, 3, 5, 7 (top-1, MMACs, M params)
ROWS = {
    'ResNet-18': ('resnet18', {}),
    'VT-ResNet-18': ('vt_resnet18', {}),
    'VT-R18, pooling tokenizer (T3)': ('vt_resnet18', {'first_tokenizer': 'pooling'}),
    'VT-R18, no relation (T5)': ('vt_resnet18', {'relation': 'none'}),
    'VT-R18, no projector (T7)': ('vt_resnet18', {'projector': False}),
}
PAPER = {
    'ResNet-18': (69.9, 1814, 11.7),
    'VT-ResNet-18': (72.0, 1579, 11.6),
    'VT-R18, pooling tokenizer (T3)': (70.6, 1550, 11.0),
    'VT-R18, no relation (T5)': (68.8, 1528, 8.5),
    'VT-R18, no projector (T7)': (70.9, 1497, 9.3),
}


def _mean_spread(values: List[float], fmt: str) -> str:
    return f'{statistics.mean(values):{fmt}} ({max(values) - min(values):{fmt}})'


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--recipe', default='sgd', choices=list(RECIPES), help="default: the paper's (Table 2)")
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--train-samples', type=int, default=2500)
    parser.add_argument('--test-samples', type=int, default=1000)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=50)
    parser.add_argument('--img-size', type=int, default=112, help='112 px: stride-16 map 7x7')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', default=str(ROOT / 'output' / 'training_parity'), help='cache of finished runs')
    parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS), metavar='ROW',
                        help='table rows to run (default: all)')
    parser.add_argument('--out', default='', help='write the Markdown report here')
    args = parser.parse_args(argv)
    if args.img_size < 112:
        raise SystemExit(f'--img-size {args.img_size}: the stride-16 map must be at least 7x7 (>= 112 px)')
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(args.train_samples, args.test_samples, args.img_size)

    rows: List[List[str]] = [[
        'model', 'train loss (spread)', 'train top-1 %', 'held-out top-1 %', 'per seed (held-out)',
        'module 0 / 1 map cosine', f'MMACs @{args.img_size}', 'MMACs @224', 'paper MMACs', 'M params',
        'paper M params', 'paper ImageNet top-1']]
    for name in args.rows:
        model, model_kwargs = ROWS[name]
        runs = [cached_train_run(model, args.recipe, seed, data, args.runs, args.epochs, args.batch_size, model_kwargs)
                for seed in args.seeds]
        cosines = ' / '.join(f'{statistics.mean(run.diversity[i]["cosine"] for run in runs):.2f}'
                             for i in range(len(runs[0].diversity))) or '-'
        small = profile_model(model, args.img_size, num_classes=10, in_chans=1, **model_kwargs)
        full = profile_model(model, 224, **model_kwargs)
        paper_top1, paper_macs, paper_params = PAPER[name]
        rows.append([
            name, _mean_spread([r.train_loss for r in runs], '.3f'), _mean_spread([r.train_top1 for r in runs], '.1f'),
            _mean_spread([r.test_top1 for r in runs], '.1f'), ' / '.join(f'{r.test_top1:.1f}' for r in runs), cosines,
            f'{small.macs / 1e6:.0f}', f'{full.macs / 1e6:.0f}', f'{paper_macs}', f'{full.params / 1e6:.2f}',
            f'{paper_params}', f'{paper_top1}'])
        print(format_table(rows), flush=True)
    recipe = RECIPES[args.recipe]
    setup = (f'The training-parity protocol (vt_timm.tools.parity): real Fashion-MNIST (Debian dataset-fashion-mnist), '
             f'the same {args.train_samples} training and {args.test_samples} held-out test images for every run; '
             f'grey, {args.img_size} px (stride-16 map {(args.img_size + 15) // 16}x{(args.img_size + 15) // 16}); '
             f'recipe {args.recipe} ({recipe.note}; lr {recipe.lr:g} at batch {args.batch_size}, cosine); '
             f'{args.epochs} epochs; seeds {args.seeds}; torch {torch.__version__}, CPU. Train loss and top-1: mean of '
             f'the last 20 updates (train mode); held-out top-1: eval mode; mean over seeds (spread = max - min). Map '
             f'cosine: mean pairwise cosine of the 16 token attention maps per VT module, held-out images. '
             f'MMACs @{args.img_size} are for the 10-class grey models trained here; MMACs/params @224 for the '
             f'1000-class ImageNet models.')
    print(setup)
    command = 'python benchmarks/mini_table2.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    text = f'```\n{command.rstrip()}\n```\n\n{setup}\n\n{format_table(rows, markdown=True)}\n'
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == '__main__':
    main()
