#!/usr/bin/env python3
"""Evaluate a timm model (the VT-ResNets included): loss, top-1 and top-5 on a dataset split.

    python validate.py --model vt_resnet18 --checkpoint output/run/model_best.pth.tar --data-dir /data/imagenet
    python validate.py --model hf-hub:org/name --pretrained --data-dir /data/imagenet --results-file r.json
    python validate.py -c output/run/args.yaml --checkpoint output/run/model_best.pth.tar

Flags have the names and meanings of timm's validate.py. Weights load with ``weights_only=True``
(train.py checkpoints, plain state dicts) or from safetensors. ``-c`` takes a train.py recipe or
the ``args.yaml`` of a run and evaluates with its model and data settings (training-only keys are
ignored).
"""
import argparse
import logging
from typing import Dict, Optional, Sequence

import torch
from timm.data import create_loader, resolve_data_config
from timm.utils import ParseKwargs, setup_default_logging

import vt_timm  # noqa: F401  registers the VT-ResNets
from vt_timm.tools.data import create_dataset
from vt_timm.cli.args import (
    add_amp_arguments, add_compile_arguments, check_inputs, check_results_file, create_autocast, create_config_parser,
    parse_args_with_config,
)
from vt_timm.tools.checkpoints import create_model_from_checkpoint
from vt_timm.tools.evaluate import evaluate
from vt_timm.tools.files import RESULTS_FORMATS, write_results

_logger = logging.getLogger('validate')

config_parser = create_config_parser('train.py recipe or run args.yaml whose model and data settings to use')
# train.py dest names that validate.py (like timm's) spells differently
TRAIN_TO_VALIDATE_DESTS = {'val_split': 'split', 'val_num_samples': 'num_samples'}


def create_parser() -> argparse.ArgumentParser:
    """The evaluation flags: names and meanings of timm's validate.py."""
    parser = argparse.ArgumentParser(description='Evaluate a timm model (VT-ResNets included)',
                                     parents=[config_parser])
    parser.add_argument('--data-dir', metavar='DIR', help='path to dataset root')
    parser.add_argument('--dataset', metavar='NAME', default='', help='e.g. torch/fashion_mnist; empty: ImageFolder')
    parser.add_argument('--split', metavar='NAME', default='validation')
    parser.add_argument('--class-map', default='', type=str, metavar='FILE',
                        help='class name per line (line number = class index) for folder datasets')
    parser.add_argument('--num-samples', type=int, default=None, metavar='N',
                        help='evaluate a fixed random subset of N samples (as train.py --val-num-samples)')
    parser.add_argument('--seed', type=int, default=42, help='seed of that subset (train.py --seed)')
    parser.add_argument('--model', '-m', default='vt_resnet18', metavar='NAME')
    parser.add_argument('--checkpoint', default='', type=str, metavar='PATH', help='weights to evaluate')
    parser.add_argument('--use-ema', action='store_true', default=False, help='evaluate the checkpoint\'s EMA weights')
    parser.add_argument('--pretrained', action='store_true', default=False, help='use the published weights')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--in-chans', type=int, default=None)
    parser.add_argument('--img-size', default=None, type=int, metavar='N')
    parser.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    parser.add_argument('--crop-pct', default=None, type=float, metavar='PCT')
    parser.add_argument('--mean', type=float, nargs='+', default=None)
    parser.add_argument('--std', type=float, nargs='+', default=None)
    parser.add_argument('--interpolation', default='', type=str)
    parser.add_argument('-b', '--batch-size', default=256, type=int, metavar='N')
    parser.add_argument('-j', '--workers', default=4, type=int, metavar='N')
    add_amp_arguments(parser)
    parser.add_argument('--channels-last', action='store_true', default=False)
    add_compile_arguments(parser)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    parser.add_argument('--results-file', default='', type=str, metavar='FILE', help='write the results here')
    parser.add_argument('--results-format', default='csv', choices=RESULTS_FORMATS, help='default: csv')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Defaults from ``-c FILE.yaml`` (the keys validate.py shares with train.py), then the command line."""
    args, _ = parse_args_with_config(
        config_parser, create_parser, argv, strict=False, rename=TRAIN_TO_VALIDATE_DESTS, ignore=('config',))
    return args


def check_args(args: argparse.Namespace) -> None:
    """Fail before any work on inputs that do not exist or a results file that cannot be written."""
    check_inputs(args, ('checkpoint', 'class_map'))
    check_results_file(args.results_file, args.results_format)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    setup_default_logging()
    args = parse_args(argv)
    check_args(args)
    device = torch.device(args.device)

    in_chans = args.input_size[0] if args.input_size else args.in_chans
    model = create_model_from_checkpoint(
        args.model, args.checkpoint, args.use_ema, args.num_classes, in_chans, args.model_kwargs, args.pretrained)
    model = model.to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config(vars(args), model=model)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)

    dataset = create_dataset(
        args.dataset, args.data_dir, args.split, num_samples=args.num_samples, seed=args.seed, class_map=args.class_map)
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        crop_pct=data_config['crop_pct'], num_workers=args.workers, use_prefetcher=device.type == 'cuda',
        device=device)
    metrics = evaluate(model, loader, device, autocast=create_autocast(args, device.type),
                       channels_last=args.channels_last)
    results = dict(
        model=args.model, checkpoint=args.checkpoint, use_ema=args.use_ema, samples=len(dataset),
        top1=round(metrics['top1'], 4), top5=round(metrics['top5'], 4), loss=round(metrics['loss'], 6),
        img_size=data_config['input_size'][-1], crop_pct=data_config['crop_pct'],
        interpolation=data_config['interpolation'])
    _logger.info(' '.join(f'{k}={v}' for k, v in results.items()))
    if args.results_file:
        write_results(args.results_file, results, args.results_format)
    return results


if __name__ == '__main__':
    main()
