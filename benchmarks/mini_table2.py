#!/usr/bin/env python3
"""Table 2 of Visual Transformers (Wu et al., arXiv:2006.03677) in miniature, on real data.

ResNet-18, VT-ResNet-18 and the R18 ablation rows of Tables 3, 5 and 7 (pooling first tokenizer,
no token relation, no projector) trained with one identical recipe — the quickstart recipe
(configs/quickstart_fashion_mnist.yaml: SGD, the paper's lr per image, cosine, label smoothing)
on a fixed random subset of real Fashion-MNIST — at a resolution where the stage-4 (stride-16)
map is at least 7x7, for several seeds; writes top-1 (mean ± half the spread), MACs and params.

    python benchmarks/mini_table2.py --out docs/mini_table2.md

A benchmark, not a test: it takes tens of minutes on a 2-core CPU (use --device cuda on a GPU).
Each run is train.py in its own process; runs land under --runs, named by their settings, and a
finished run is reused rather than retrained (so --rows can run part of the table first).
"""
import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vt_timm.plot import read_summary  # noqa: E402
from vt_timm.profile import format_table, profile_model  # noqa: E402

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


def train_run(model: str, model_kwargs: Dict, seed: int, args: argparse.Namespace) -> float:
    """Final validation top-1 of one train.py run of the quickstart recipe (reused if already finished)."""
    kwargs = [f'{k}={v}' for k, v in model_kwargs.items()]
    experiment = '-'.join([model, *kwargs, f'{args.img_size}px', f'{args.train_samples}x{args.epochs}', f's{seed}'])
    summary = Path(args.runs) / experiment / 'summary.csv'
    if summary.is_file() and len(read_summary(summary)['eval_top1']) == args.epochs:
        return read_summary(summary)['eval_top1'][-1]
    command = [
        sys.executable, str(ROOT / 'train.py'), '-c', str(ROOT / 'configs' / 'quickstart_fashion_mnist.yaml'),
        '--model', model, '--img-size', str(args.img_size), '--seed', str(seed), '--epochs', str(args.epochs),
        '--train-num-samples', str(args.train_samples), '--val-num-samples', str(args.val_samples),
        '--data-dir', args.data_dir, '--output', args.runs, '--experiment', experiment, '--device', args.device,
        '--log-interval', '50', *(['--model-kwargs', *kwargs] if kwargs else [])]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return read_summary(summary)['eval_top1'][-1]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--img-size', type=int, default=112, help='112 px: stride-16 map 7x7')
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--train-samples', type=int, default=4000)
    parser.add_argument('--val-samples', type=int, default=1000)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--data-dir', default=str(ROOT / 'data'))
    parser.add_argument('--runs', default=str(ROOT / 'output' / 'mini_table2'))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS), metavar='ROW',
                        help='table rows to run (default: all)')
    parser.add_argument('--out', default='', help='write the markdown report here')
    args = parser.parse_args(argv)
    if args.img_size < 112:
        raise SystemExit(f'--img-size {args.img_size}: the stride-16 map must be at least 7x7 (>= 112 px)')

    rows: List[List[str]] = [['model', f'top-1 % ({len(args.seeds)} seeds)', 'per seed', f'MMACs @{args.img_size}',
                              'MMACs @224', 'paper MMACs', 'M params', 'paper M params', 'paper ImageNet top-1']]
    for name in args.rows:
        model, model_kwargs = ROWS[name]
        top1 = [train_run(model, model_kwargs, seed, args) for seed in args.seeds]
        small = profile_model(model, args.img_size, num_classes=10, in_chans=1, **model_kwargs)
        full = profile_model(model, 224, **model_kwargs)
        spread = (max(top1) - min(top1)) / 2
        paper_top1, paper_macs, paper_params = PAPER[name]
        rows.append([name, f'{statistics.mean(top1):.1f} ± {spread:.1f}', ' / '.join(f'{t:.1f}' for t in top1),
                     f'{small.macs / 1e6:.0f}', f'{full.macs / 1e6:.0f}', f'{paper_macs}', f'{full.params / 1e6:.2f}',
                     f'{paper_params}', f'{paper_top1}'])
        print(format_table(rows), flush=True)
    setup = (f'Real Fashion-MNIST (Debian dataset-fashion-mnist): a random {args.train_samples}-image training '
             f'subset and {args.val_samples} test images, both drawn with the run\'s seed; grey, {args.img_size} px; '
             f'{args.epochs} epochs of the quickstart recipe; seeds {args.seeds}; device {args.device}; torch '
             f'{torch.__version__}. "±" is half the spread between seeds. MMACs @{args.img_size} are for the '
             f'10-class grey models trained here; MMACs/params @224 for the 1000-class ImageNet models.')
    print(setup)
    if args.out:
        command = 'python benchmarks/mini_table2.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(f'```\n{command}\n```\n\n{setup}\n\n{format_table(rows, markdown=True)}\n')


if __name__ == '__main__':
    main()
