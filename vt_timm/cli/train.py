#!/usr/bin/env python3
"""Train any timm model (the VT-ResNets included) with timm's library.

    python train.py -c vt_resnet18_default --data-dir /data/imagenet
    torchrun --nproc_per_node=8 train.py -c vt_resnet50_advanced --data-dir /data/imagenet

Flags have the names and meanings of timm's train.py; ``-c FILE.yaml`` sets any of them by dest
name, and the ``args.yaml`` a run writes can be fed back. Data, augmentation, optimizer, scheduler,
loss/distillation task, EMA and checkpointing are timm's; this script wires them together and adds
CPU (gloo) distributed training and a teacher loaded from a local checkpoint.
"""
import argparse
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import timm
import torch
import yaml
from timm.data import create_loader, resolve_data_config
from timm.layers import convert_sync_batchnorm
from timm.models import load_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import (
    ClassificationTask, LogitDistillationTask, evaluation_sample_limit, load_task_ema_checkpoint,
    resume_task_checkpoint,
)
from timm.utils import (
    CheckpointSaver, NativeScaler, ParseKwargs, distribute_bn, get_outdir, init_distributed_device, is_primary,
    random_seed, setup_default_logging, update_summary,
)

import vt_timm  # noqa: F401  registers the VT-ResNets
from vt_timm.tools.data import create_dataset
from vt_timm.tools.evaluate import evaluate
from vt_timm.tools.plot import plot_summary
from vt_timm.cli.args import (
    add_amp_arguments, add_compile_arguments, amp_dtype, check_inputs, create_autocast, create_config_parser,
    parse_args_with_config,
)

_logger = logging.getLogger('train')

config_parser = create_config_parser('YAML file whose keys are the dest names of the flags below, or the name of a '
                                     'packaged recipe (e.g. vt_resnet18_advanced, quickstart_fashion_mnist)')


def create_parser() -> argparse.ArgumentParser:
    """The training flags: names, meanings and (mostly) defaults of timm's train.py."""
    parser = argparse.ArgumentParser(description='Train a timm model (VT-ResNets included)')
    group = parser.add_argument_group('Dataset')
    group.add_argument('--data-dir', metavar='DIR', help='path to dataset root')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='dataset type + name ("<type>/<name>"), e.g. torch/fashion_mnist; '
                            'empty for an ImageFolder/ImageTar under --data-dir')
    group.add_argument('--train-split', metavar='NAME', default='train')
    group.add_argument('--val-split', metavar='NAME', default='validation')
    group.add_argument('--class-map', default='', type=str, metavar='FILE',
                       help='class name per line (line number = class index) for folder datasets')
    group.add_argument('--train-num-samples', type=int, default=None, metavar='N',
                       help='train on a fixed random subset of N samples of the train split')
    group.add_argument('--val-num-samples', type=int, default=None, metavar='N',
                       help='validate on a fixed random subset of N samples of the val split')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data loading processes')

    group = parser.add_argument_group('Model')
    group.add_argument('--model', default='vt_resnet18', type=str, metavar='MODEL')
    group.add_argument('--pretrained', action='store_true', default=False, help='start from pretrained weights')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='load these model weights before training')
    group.add_argument('--resume', default='', type=str, metavar='PATH', help='resume model and training state')
    group.add_argument('--no-resume-opt', action='store_true', default=False, help='do not restore the optimizer')
    group.add_argument('--num-classes', type=int, default=None, metavar='N')
    group.add_argument('--in-chans', type=int, default=None, metavar='N', help='image channels')
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='square image size')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N',
                       help='input dimensions (C H W), overrides --img-size')
    group.add_argument('--crop-pct', default=None, type=float, metavar='PCT', help='validation center-crop fraction')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N')
    group.add_argument('--channels-last', action='store_true', default=False)
    add_compile_arguments(group)
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)

    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER', help="timm optimizer (sgd is Nesterov)")
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M')
    group.add_argument('--weight-decay', type=float, default=2e-5)
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM', help='clip gradient norm')

    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER')
    group.add_argument('--sched-on-updates', action='store_true', default=False, help='step the schedule per update')
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='learning rate; default: lr-base x global batch / 256')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR', help='learning rate per 256 images')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR')
    group.add_argument('--epochs', type=int, default=300, metavar='N')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='warm-up epochs come before the decay schedule instead of inside it')

    group = parser.add_argument_group('Augmentation and regularization')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='no training augmentation (resize and center crop as in evaluation)')
    group.add_argument('--hflip', type=float, default=0.5)
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT')
    group.add_argument('--aa', type=str, default=None, metavar='NAME', help='AutoAugment policy, e.g. original')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT', help='random erase probability')
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (unsupported here: must be 0)')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (unsupported here: must be 0)')
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout before the classifier')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='stochastic depth rate')

    group = parser.add_argument_group('Batch norm, EMA, distillation')
    group.add_argument('--sync-bn', action='store_true', default=False, help='synchronised BatchNorm')
    group.add_argument('--dist-bn', type=str, default='reduce', help='BN stats across processes: broadcast|reduce|""')
    group.add_argument('--model-ema', action='store_true', default=False, help='keep an EMA of the weights')
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--kd-model-name', default=None, type=str, help='teacher: timm name, hf-hub:..., local-dir:...')
    group.add_argument('--kd-checkpoint', default='', type=str, metavar='PATH',
                       help='teacher weights from a local file (safetensors or a train.py checkpoint)')
    group.add_argument('--kd-distill-type', default='logit', type=str, help='only "logit" is supported')
    group.add_argument('--distill-loss-weight', default=None, type=float)
    group.add_argument('--task-loss-weight', default=1.0, type=float)
    group.add_argument('--kd-temperature', default=1.0, type=float)

    group = parser.add_argument_group('Runtime')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str)
    add_amp_arguments(group)
    group.add_argument('--seed', type=int, default=42)
    group.add_argument('--log-interval', type=int, default=50, metavar='N', help='updates between progress lines')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='checkpoints to keep')
    group.add_argument('--eval-metric', default='top1', type=str, help='metric that ranks checkpoints')
    group.add_argument('--output', default='output', type=str, metavar='DIR', help='root of the run folders')
    group.add_argument('--experiment', default='', type=str, metavar='NAME', help='run folder name')

    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Defaults from ``-c FILE.yaml`` (dest names), then the command line; returns (args, args as YAML)."""
    args, _ = parse_args_with_config(config_parser, create_parser, argv)
    return args, yaml.safe_dump(vars(args), default_flow_style=False)


def check_args(args: argparse.Namespace) -> None:
    """Fail before any work on flags this script cannot honour or inputs that do not exist."""
    if args.mixup or args.cutmix:
        raise SystemExit('--mixup/--cutmix are not supported by this train.py (the paper\'s recipes use neither)')
    if args.kd_distill_type != 'logit':
        raise SystemExit(f'--kd-distill-type {args.kd_distill_type!r}: only "logit" distillation is supported')
    if args.kd_checkpoint and not args.kd_model_name:
        raise SystemExit('--kd-checkpoint needs --kd-model-name (the teacher architecture)')
    check_inputs(args, ('resume', 'initial_checkpoint', 'kd_checkpoint', 'class_map'))


def create_task(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """timm's classification task, or logit distillation from the teacher when one is named."""
    criterion_kwargs = dict(smoothing=args.smoothing)
    if not args.kd_model_name:
        return ClassificationTask(model, criterion_kwargs=criterion_kwargs, device=device)
    return LogitDistillationTask(
        model,
        args.kd_model_name,
        criterion_kwargs=criterion_kwargs,
        teacher_pretrained_path=args.kd_checkpoint or None,
        distill_loss_weight=args.distill_loss_weight,
        task_loss_weight=args.task_loss_weight,
        temperature=args.kd_temperature,
        device=device,
    )


def create_loaders(args: argparse.Namespace, data_config: Dict, device: torch.device):
    common = dict(
        input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
        interpolation=data_config['interpolation'], num_workers=args.workers, distributed=args.distributed,
        use_prefetcher=device.type == 'cuda', device=device, pin_memory=device.type == 'cuda',
        persistent_workers=False,  # fresh workers each epoch, seeded from that epoch's seed (see main)
    )
    train_set = create_dataset(
        args.dataset, args.data_dir, args.train_split, is_training=True, num_samples=args.train_num_samples,
        seed=args.seed, class_map=args.class_map)
    val_set = create_dataset(
        args.dataset, args.data_dir, args.val_split, is_training=False, num_samples=args.val_num_samples,
        seed=args.seed, class_map=args.class_map)
    train_loader = create_loader(
        train_set, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, hflip=args.hflip,
        color_jitter=args.color_jitter, auto_augment=args.aa, re_prob=args.reprob, **common)
    val_loader = create_loader(
        val_set, batch_size=args.validation_batch_size or args.batch_size, is_training=False,
        crop_pct=data_config['crop_pct'], **common)
    return train_loader, val_loader


def train_one_epoch(
        epoch: int, task, loader, optimizer, scheduler, args: argparse.Namespace, device: torch.device,
        autocast, loss_scaler: Optional[NativeScaler], num_updates: int,
) -> Tuple[Dict[str, float], int]:
    """One pass over ``loader``; returns the epoch's mean losses and the new update count."""
    task.train()
    updates_per_epoch = (len(loader) + args.grad_accum_steps - 1) // args.grad_accum_steps
    sums: Dict[str, float] = {}
    seen = update_idx = 0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for batch_idx, (input, target) in enumerate(loader):
        input, target = input.to(device), target.to(device)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        last_accum = (batch_idx + 1) % args.grad_accum_steps == 0 or batch_idx + 1 == len(loader)
        with (nullcontext() if last_accum else task.no_sync()), autocast():
            result = task(input, target)
        loss = result['loss'] / args.grad_accum_steps
        if loss_scaler is not None:
            loss_scaler(loss, optimizer, clip_grad=args.clip_grad, parameters=task.get_clip_parameters(),
                        need_update=last_accum)
        else:
            loss.backward()
            if last_accum:
                if args.clip_grad:
                    torch.nn.utils.clip_grad_norm_(task.get_clip_parameters(), args.clip_grad)
                optimizer.step()
        for key, value in result.items():
            if key.endswith('loss'):
                sums[key] = sums.get(key, 0.) + value.item() * input.shape[0]
        seen += input.shape[0]
        if not last_accum:
            continue
        optimizer.zero_grad(set_to_none=True)
        num_updates += 1
        update_idx += 1
        task.update_ema(step=num_updates)
        scheduler.step_update(num_updates=num_updates)
        if is_primary(args) and (update_idx % args.log_interval == 0 or update_idx == updates_per_epoch):
            now = time.perf_counter()
            rate = seen * args.world_size / (now - start)
            eta = (now - start) / update_idx * (updates_per_epoch - update_idx)
            losses = '  '.join(f'{k} {v / seen:.4f}' for k, v in sums.items())
            _logger.info(
                f'epoch {epoch} [{update_idx}/{updates_per_epoch}]  {losses}  '
                f'lr {optimizer.param_groups[0]["lr"]:.3e}  {rate:.1f} img/s  eta {eta:.0f}s')
    totals = torch.tensor([seen, *sums.values()], dtype=torch.float64, device=device)
    if args.distributed:
        torch.distributed.all_reduce(totals)  # epoch means over the samples of every process
    seen, *loss_sums = totals.tolist()
    return {k: v / max(seen, 1) for k, v in zip(sums, loss_sums)}, num_updates


def validate(model: torch.nn.Module, task, loader, args: argparse.Namespace, device: torch.device,
             autocast) -> Dict[str, float]:
    """Loss, top-1 and top-5 of ``model`` over ``loader`` (all processes' samples together, the distributed
    sampler's padding left out) with the task's evaluator."""
    evaluator = task.create_evaluator(max_samples=evaluation_sample_limit(loader))
    return evaluate(model, loader, device, evaluator, autocast, args.channels_last, args.distributed)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    setup_default_logging()
    args, args_text = parse_args(argv)
    check_args(args)
    device = init_distributed_device(args)
    random_seed(args.seed, args.rank)

    in_chans = args.input_size[0] if args.input_size else args.in_chans
    model = timm.create_model(
        args.model,
        pretrained=args.pretrained,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        **({'in_chans': in_chans} if in_chans else {}),
        **args.model_kwargs,
    )
    if args.initial_checkpoint:
        load_checkpoint(model, args.initial_checkpoint)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    data_config = resolve_data_config(vars(args), model=model, verbose=is_primary(args))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        if device.type == 'cuda':
            model = convert_sync_batchnorm(model)
        elif is_primary(args):
            _logger.warning('--sync-bn ignored: PyTorch\'s SyncBatchNorm needs CUDA; on CPU each process normalises '
                            'with its own batch and --dist-bn reduce averages the running statistics every epoch')

    if args.lr is None:
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        args.lr = args.lr_base * global_batch / 256
    task = create_task(model, args, device)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(args))

    autocast = create_autocast(args, device.type)
    loss_scaler = NativeScaler(device=device.type) if args.amp and amp_dtype(args.amp_dtype) == torch.float16 else None

    start_epoch = 0
    if args.resume:
        start_epoch = resume_task_checkpoint(
            task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
            loss_scaler=None if args.no_resume_opt else loss_scaler, log_info=is_primary(args)) or 0
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, device=device)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)
    if args.torchcompile:  # as timm's train.py: the task's train and eval modules, before DDP wraps them
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        task.prepare_distributed(device_ids=[args.local_rank] if device.type == 'cuda' else None)

    train_loader, val_loader = create_loaders(args, data_config, device)
    updates_per_epoch = (len(train_loader) + args.grad_accum_steps - 1) // args.grad_accum_steps
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
    if start_epoch and args.sched_on_updates:
        scheduler.step_update(start_epoch * updates_per_epoch)
    elif start_epoch:
        scheduler.step(start_epoch)

    saver = output_dir = None
    if is_primary(args):
        experiment = args.experiment or f'{time.strftime("%Y%m%d-%H%M%S")}-{args.model}'
        output_dir = Path(get_outdir(args.output, experiment))  # an existing one (a resumed run's) is reused
        (output_dir / 'args.yaml').write_text(args_text)
        saver = CheckpointSaver(
            model=model, optimizer=optimizer, amp_scaler=loss_scaler, checkpoint_dir=str(output_dir),
            recovery_dir=str(output_dir), decreasing='loss' in args.eval_metric,
            max_history=args.checkpoint_hist, task=task)
        _logger.info(f'{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, '
                     f'{num_epochs} epochs of {updates_per_epoch} updates, lr {args.lr:g}, '
                     f'{args.world_size} process(es), output {output_dir}')

    eval_metrics: Dict[str, float] = {}
    num_updates = start_epoch * updates_per_epoch
    for epoch in range(start_epoch, num_epochs):
        # data order, augmentation, dropout and drop-path of an epoch depend on (seed, epoch, rank)
        # only, so a run resumed from the previous epoch's checkpoint replays this epoch exactly
        random_seed(args.seed + epoch, args.rank)
        if args.distributed and hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)
        train_metrics, num_updates = train_one_epoch(
            epoch, task, train_loader, optimizer, scheduler, args, device, autocast, loss_scaler, num_updates)
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
        eval_metrics = validate(task.get_eval_model(), task, val_loader, args, device, autocast)
        if task.has_ema():
            ema_metrics = validate(task.get_eval_model(ema=True), task, val_loader, args, device, autocast)
            eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
        if is_primary(args):
            _logger.info(f'epoch {epoch} validation: ' + '  '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
            update_summary(epoch, train_metrics, eval_metrics, str(output_dir / 'summary.csv'),
                           lr=optimizer.param_groups[0]['lr'])
            plot_summary(output_dir / 'summary.csv')
            saver.save_checkpoint(epoch, metric=eval_metrics[args.eval_metric])
        scheduler.step(epoch + 1, eval_metrics[args.eval_metric])
    return eval_metrics


if __name__ == '__main__':
    main()
