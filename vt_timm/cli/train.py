"""Train any timm model (the VT-ResNets included) with timm's library.

    python train.py -c vt_resnet18_default --data-dir /data/imagenet
    torchrun --nproc_per_node=8 train.py -c vt_resnet50_advanced --data-dir /data/imagenet

Every flag of timm's train.py is here with its name, default and meaning (those that cannot apply are
refused when set); ``-c FILE.yaml`` sets any of them by dest name, and the ``args.yaml`` a run writes can
be fed back. Data, augmentation, mixup, losses, optimizer, scheduler, distillation task, EMA and
checkpointing are timm's; this script wires them together and adds CPU (gloo) distributed training, a
teacher loaded from a local checkpoint and runs that resume bit-identically from any epoch.
"""
import argparse
import contextlib
import errno
import importlib
from importlib.util import find_spec
import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import yaml
from timm.data import AugMixDataset, FastCollateMixup, Mixup, create_loader, resolve_data_config
from timm.layers import convert_splitbn_model, convert_sync_batchnorm, set_fast_norm
from timm.models import load_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import (
    ClassificationTask, FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask,
    create_classification_loss, evaluation_sample_limit, load_task_ema_checkpoint, resume_task_checkpoint,
)
from timm.utils import (
    NativeScaler, ParseKwargs, dispatch_clip_grad, distribute_bn, get_outdir, init_distributed_device, is_primary,
    random_seed, set_jit_fuser, setup_default_logging,
)

import vt_timm  # noqa: F401  registers the VT-ResNets
from vt_timm.tools.checkpoints import model_settings, read_checkpoint, state_dict_mismatch, state_dict_of
from vt_timm.tools.data import create_dataset, input_img_mode
from vt_timm.tools.evaluate import evaluate
from vt_timm.tools.files import replacing
from vt_timm.tools.interrupts import IgnoringStopSignals, stop_signals
from vt_timm.tools.plot import plot_summary
from vt_timm.tools.saving import AtomicCheckpointSaver, append_summary, checkpoint_epoch, trim_summary
from vt_timm.cli.args import (
    add_amp_arguments, add_dataset_source_arguments, add_unsupported_argument, amp_dtype, check_compilers,
    check_inputs, check_mean_std, check_model_dtype, create_autocast, create_config_parser, parse_args_with_config,
)

_logger = logging.getLogger('train')

config_parser = create_config_parser('YAML file whose keys are the dest names of the flags below, or the name of a '
                                     'packaged recipe (e.g. vt_resnet18_advanced, quickstart_fashion_mnist)')


NAFLEX = 'NaFlex variable-resolution loading is for patch-embedding NaFlexViT models; not built into this train.py'


def create_parser() -> argparse.ArgumentParser:
    """Every flag of timm's train.py, with timm's names, defaults and meanings (tests/test_timm_flags.py holds
    them against the list read off timm's script); those that cannot apply here are refused when set."""
    parser = argparse.ArgumentParser(description='Train a timm model (VT-ResNets included)')
    parser.add_argument('data', nargs='?', metavar='DIR', const=None, help='path to dataset (deprecated: --data-dir)')

    group = parser.add_argument_group('Dataset')
    group.add_argument('--data-dir', metavar='DIR', help='path to dataset root')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='dataset type + name ("<type>/<name>"), e.g. torch/fashion_mnist; '
                            'empty for an ImageFolder/ImageTar under --data-dir')
    group.add_argument('--train-split', metavar='NAME', default='train')
    group.add_argument('--val-split', metavar='NAME', default='validation')
    group.add_argument('--train-num-samples', type=int, default=None, metavar='N',
                       help='train on a fixed random subset of N samples of the train split')
    group.add_argument('--val-num-samples', type=int, default=None, metavar='N',
                       help='validate on a fixed random subset of N samples of the val split')
    add_dataset_source_arguments(group)

    group = parser.add_argument_group('Model')
    group.add_argument('--model', default='vt_resnet18', type=str, metavar='MODEL')
    group.add_argument('--pretrained', action='store_true', default=False, help='start from pretrained weights')
    group.add_argument('--pretrained-path', default=None, type=str, metavar='PATH',
                       help='pretrained weights from this file, the classifier adapted to --num-classes')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='load these model weights before training')
    group.add_argument('--resume', default='', type=str, metavar='PATH', help='resume model and training state')
    group.add_argument('--no-resume-opt', action='store_true', default=False, help='do not restore the optimizer')
    group.add_argument('--num-classes', type=int, default=None, metavar='N')
    group.add_argument('--gp', default=None, type=str, metavar='POOL',
                       help='global pool type (e.g. avg, max, avgmax); default: the model\'s')
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='square image size')
    group.add_argument('--in-chans', type=int, default=None, metavar='N', help='image channels')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N',
                       help='input dimensions (C H W), overrides --img-size')
    group.add_argument('--crop-pct', default=None, type=float, metavar='PCT', help='validation center-crop fraction')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    group.add_argument('--channels-last', action='store_true', default=False)
    group.add_argument('--fuser', default='', type=str, help="TorchScript fuser: '', te, old, nvfuser")
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N')
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='recompute activations in backward (model.set_grad_checkpointing)')
    group.add_argument('--fast-norm', default=False, action='store_true', help="timm's fast norm layers")
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    group.add_argument('--head-init-scale', default=None, type=float, help='scale the classifier\'s initial weights')
    group.add_argument('--head-init-bias', default=None, type=float, help='initial classifier bias')
    group.add_argument('--torchcompile-mode', type=str, default=None, metavar='MODE',
                       help='torch.compile mode, e.g. max-autotune (default: None)')
    group.add_argument('--torchscript', action='store_true', default=False, help='torch.jit.script the model')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor', metavar='BACKEND',
                       help='torch.compile the model with this backend (default: inductor)')

    group = parser.add_argument_group('Device and distributed')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str)
    add_amp_arguments(group)
    group.add_argument('--model-dtype', default=None, type=str,
                       help='model and input dtype without AMP: float32, bfloat16, float16')
    group.add_argument('--no-ddp-bb', action='store_true', default=False, help='DDP without buffer broadcast')
    group.add_argument('--synchronize-step', action='store_true', default=False,
                       help='synchronise the accelerator after each update (no-op on the CPU)')
    group.add_argument('--local_rank', default=0, type=int, help='set by legacy launchers; torchrun sets LOCAL_RANK')
    group.add_argument('--device-modules', default=None, type=str, nargs='+',
                       help='python modules to import first (e.g. device back-ends or model plugins)')

    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER', help="timm optimizer (sgd is Nesterov)")
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M')
    group.add_argument('--weight-decay', type=float, default=2e-5)
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM', help='gradient clipping threshold')
    group.add_argument('--clip-mode', type=str, default='norm', help='gradient clipping: norm, value or agc')
    group.add_argument('--layer-decay', type=float, default=None, help='layer-wise learning-rate decay')
    group.add_argument('--layer-decay-min-scale', type=float, default=0, help='floor of the layer-wise lr scale')
    group.add_argument('--layer-decay-no-opt-scale', type=float, default=None,
                       help='layer-wise lr scale below which a group is not optimised')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra optimizer arguments')

    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER')
    group.add_argument('--sched-on-updates', action='store_true', default=False, help='step the schedule per update')
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='learning rate; default: lr-base scaled by global batch / lr-base-size')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR', help='learning rate per lr-base-size images')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV', help='batch size of --lr-base')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help='linear or sqrt batch scaling of --lr-base (default: sqrt for ada*/lamb, else linear)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct',
                       help='learning rate noise on/off epoch fractions')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT', help='noise limit')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV', help='noise std-dev')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT', help='cycle length multiplier')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT', help='lr decay per cycle')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N', help='number of cycles')
    group.add_argument('--lr-k-decay', type=float, default=1.0, help='k of the cosine/poly k-decay')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR')
    group.add_argument('--epochs', type=int, default=300, metavar='N')
    group.add_argument('--epoch-repeats', type=float, default=0., metavar='N',
                       help='epoch repeat multiplier of iterable datasets')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N',
                       help='start at this epoch (overrides a resumed one)')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help='epochs of the multistep schedule\'s decays')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='warm-up epochs come before the decay schedule instead of inside it')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N', help='epochs at min-lr after the cycle')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N', help='plateau scheduler patience')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE')

    group = parser.add_argument_group('Augmentation and regularization')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='no training augmentation (resize and center crop as in evaluation)')
    group.add_argument('--train-crop-mode', type=str, default=None, help='training random crop mode, e.g. rrc, rkrc')
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT', help='RRC scale range')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='RRC aspect ratio range')
    group.add_argument('--hflip', type=float, default=0.5)
    group.add_argument('--vflip', type=float, default=0.)
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT')
    group.add_argument('--color-jitter-prob', type=float, default=None, metavar='PCT')
    group.add_argument('--grayscale-prob', type=float, default=None, metavar='PCT')
    group.add_argument('--gaussian-blur-prob', type=float, default=None, metavar='PCT')
    group.add_argument('--aa', type=str, default=None, metavar='NAME', help='AutoAugment policy, e.g. original')
    group.add_argument('--aug-repeats', type=float, default=0, help='repeated augmentation count (distributed)')
    group.add_argument('--aug-splits', type=int, default=0, help='AugMix augmentation splits (0 or >1)')
    group.add_argument('--jsd-loss', action='store_true', default=False, help='Jensen-Shannon loss over --aug-splits')
    group.add_argument('--bce-loss', action='store_true', default=False, help='binary cross-entropy loss')
    group.add_argument('--bce-sum', action='store_true', default=False, help='BCE summed over classes')
    group.add_argument('--bce-target-thresh', type=float, default=None, help='binarise BCE soft targets above this')
    group.add_argument('--bce-pos-weight', type=float, default=None, help='BCE positive-sample weight')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT', help='random erase probability')
    group.add_argument('--remode', type=str, default='pixel', help='random erase mode')
    group.add_argument('--recount', type=int, default=1, help='random erase count')
    group.add_argument('--resplit', action='store_true', default=False, help='no random erase on the first split')
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (active when > 0)')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (active when > 0)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None, help='cutmix box ratio min/max')
    group.add_argument('--mixup-prob', type=float, default=1.0, help='probability of mixup or cutmix per batch')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5, help='probability of cutmix when both on')
    group.add_argument('--mixup-mode', type=str, default='batch', help='batch, pair or elem')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N', help='turn mixup off at this epoch')
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    group.add_argument('--train-interpolation', type=str, default='random', help='training resize interpolation')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout before the classifier')
    add_unsupported_argument(group, '--drop-connect', type=float, default=None, metavar='PCT',
                             reason="timm's train.py declares it and never uses it; use --drop-path")
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='stochastic depth rate')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT', help='DropBlock rate')

    group = parser.add_argument_group('Batch norm, EMA')
    group.add_argument('--bn-momentum', type=float, default=None, help='BatchNorm momentum of every BN layer')
    group.add_argument('--bn-eps', type=float, default=None, help='BatchNorm epsilon of every BN layer')
    group.add_argument('--sync-bn', action='store_true', default=False, help='synchronised BatchNorm (CUDA)')
    group.add_argument('--dist-bn', type=str, default='reduce', help='BN stats across processes: broadcast|reduce|""')
    group.add_argument('--split-bn', action='store_true', default=False, help='BatchNorm per augmentation split')
    group.add_argument('--model-ema', action='store_true', default=False, help='keep an EMA of the weights')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='keep the EMA on the CPU (and do not validate it)')
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true', default=False, help='EMA decay warm-up')

    group = parser.add_argument_group('Runtime')
    group.add_argument('--seed', type=int, default=42)
    group.add_argument('--worker-seeding', type=str, default='all', help='loader worker seeding: all or part')
    group.add_argument('--log-interval', type=int, default=50, metavar='N', help='updates between progress lines')
    group.add_argument('--val-interval', type=int, default=1, metavar='N',
                       help='validate (and checkpoint) every N epochs and after the last')
    group.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                       help='updates between recovery checkpoints (0: none)')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='checkpoints to keep')
    group.add_argument('--skip-nonfinite-loss', action='store_true', default=False,
                       help='skip (and count) an update whose loss is nan or inf instead of stopping the run')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data loading processes')
    group.add_argument('--save-images', action='store_true', default=False,
                       help='write the batch of every progress line as an image')
    group.add_argument('--pin-mem', action='store_true', default=False, help='pin loader memory')
    group.add_argument('--no-prefetcher', action='store_true', default=False,
                       help="no timm prefetcher (normalisation on the device)")
    group.add_argument('--output', default='output', type=str, metavar='DIR', help='root of the run folders')
    group.add_argument('--experiment', default='', type=str, metavar='NAME', help='run folder name')
    group.add_argument('--eval-metric', default='top1', type=str, help='metric that ranks checkpoints')
    add_unsupported_argument(group, '--tta', type=int, default=0, metavar='N',
                             reason="timm's train.py averages groups of N outputs but its evaluation loader makes "
                                    "no test-time copies; use validate.py --test-pool")
    group.add_argument('--use-multi-epochs-loader', action='store_true', default=False,
                       help='one loader (and worker pool) for all epochs')
    group.add_argument('--log-wandb', action='store_true', default=False, help='log to Weights & Biases (wandb)')
    group.add_argument('--wandb-project', default=None, type=str, help='wandb project')
    group.add_argument('--wandb-tags', default=[], type=str, nargs='+', help='wandb tags')
    group.add_argument('--wandb-resume-id', default='', type=str, help='wandb run id to resume (with --resume)')

    group = parser.add_argument_group('Scheduled training resolutions (timm\'s variable-size batch sampler)')
    group.add_argument('--train-img-sizes', type=int, nargs='+', default=None, help='training image sizes')
    group.add_argument('--train-batch-sizes', type=int, nargs='+', default=None, help='batch size per image size')
    group.add_argument('--train-size-probs', type=float, nargs='+', default=None, help='probability per size')
    group.add_argument('--train-size-schedule', type=str, default='constant', choices=['constant', 'progressive'])
    group.add_argument('--train-size-schedule-spread', type=float, default=0.65)
    group.add_argument('--train-size-random-mix', type=float, default=0.1)
    group.add_argument('--train-batches-per-epoch', '--train-steps-per-epoch', type=int, default=None,
                       help='batches per epoch of the scheduled sampler')
    group.add_argument('--variable-batch-loss-scale', type=str, default='none', choices=['none', 'sqrt', 'linear'],
                       help='scale each batch\'s loss by its size relative to the mean')

    group = parser.add_argument_group('NaFlex (not for CNNs)')
    add_unsupported_argument(group, '--naflex-loader', action='store_true', default=False, reason=NAFLEX)
    add_unsupported_argument(group, '--naflex-train-seq-lens', type=int, nargs='+',
                             default=[128, 256, 576, 784, 1024], reason=NAFLEX)
    add_unsupported_argument(group, '--naflex-max-seq-len', type=int, default=576, reason=NAFLEX)
    add_unsupported_argument(group, '--naflex-patch-sizes', type=int, nargs='+', default=None, reason=NAFLEX)
    add_unsupported_argument(group, '--naflex-patch-size-probs', type=float, nargs='+', default=None, reason=NAFLEX)
    add_unsupported_argument(group, '--naflex-loss-scale', default='linear', type=str,
                             choices=['none', 'sqrt', 'linear'], reason=NAFLEX)
    add_unsupported_argument(group, '--naflex-patchify-channels-first', action='store_true', default=False,
                             reason=NAFLEX)

    group = parser.add_argument_group('Distillation (timm.task)')
    group.add_argument('--kd-model-name', default=None, type=str, help='teacher: timm name, hf-hub:..., local-dir:...')
    group.add_argument('--kd-checkpoint', default='', type=str, metavar='PATH',
                       help='teacher weights from a local file (safetensors or a train.py checkpoint)')
    group.add_argument('--kd-distill-type', default='logit', type=str, choices=['logit', 'feature', 'token'])
    group.add_argument('--kd-loss-type', default='kl', type=str, help='logit distillation loss: kl or mse')
    group.add_argument('--distill-loss-weight', default=None, type=float)
    group.add_argument('--task-loss-weight', default=None, type=float)
    group.add_argument('--kd-temperature', default=4.0, type=float)
    group.add_argument('--kd-student-feature-dim', default=None, type=int, help='feature distillation: student dim')
    group.add_argument('--kd-teacher-feature-dim', default=None, type=int, help='feature distillation: teacher dim')
    group.add_argument('--kd-token-distill-type', default='soft', type=str, choices=['soft', 'hard'])
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Defaults from ``-c FILE.yaml`` (dest names), then the command line; returns (args, args as YAML)."""
    args, _ = parse_args_with_config(config_parser, create_parser, argv)
    return args, yaml.safe_dump(vars(args), default_flow_style=False)


def check_args(args: argparse.Namespace) -> None:
    """Fail before any work on flag combinations timm's train.py refuses or inputs that do not exist."""
    if args.data and not args.data_dir:
        args.data_dir = args.data  # timm's deprecated positional DIR
    check_model_dtype(args)
    check_compilers(args)
    if args.aug_splits == 1 or args.aug_splits < 0:
        raise SystemExit(f'--aug-splits {args.aug_splits}: 0 (off) or at least 2')
    if args.split_bn and args.aug_splits < 2 and not args.resplit:
        raise SystemExit('--split-bn needs --aug-splits >= 2 or --resplit')
    if args.jsd_loss and args.aug_splits < 2:
        raise SystemExit('--jsd-loss needs --aug-splits >= 2 (the loss compares the splits)')
    if args.jsd_loss and args.bce_loss:
        raise SystemExit('--jsd-loss and --bce-loss: choose one loss')
    if mixup_active(args) and args.aug_splits and not args.no_prefetcher:
        raise SystemExit('--mixup/--cutmix with --aug-splits need --no-prefetcher (timm\'s collate mixup '
                         'cannot de-interleave splits)')
    if args.lr_base_scale not in ('', 'linear', 'sqrt'):
        raise SystemExit(f'--lr-base-scale {args.lr_base_scale}: expected linear or sqrt (or empty)')
    if args.variable_batch_loss_scale != 'none' and args.train_img_sizes is None:
        raise SystemExit('--variable-batch-loss-scale needs --train-img-sizes (scheduled batch sizes)')
    if args.log_wandb and find_spec('wandb') is None:
        raise SystemExit('--log-wandb: the wandb package is not installed (pip install wandb)')
    if args.wandb_resume_id and not args.resume:
        raise SystemExit('--wandb-resume-id needs --resume (the run to continue)')
    if args.kd_checkpoint and not args.kd_model_name:
        raise SystemExit('--kd-checkpoint needs --kd-model-name (the teacher architecture)')
    check_inputs(args, ('resume', 'initial_checkpoint', 'pretrained_path', 'kd_checkpoint', 'class_map'))


def check_sync_bn(args: argparse.Namespace, device: torch.device) -> None:
    """``--sync-bn`` synchronises BatchNorm across processes (one process: nothing to do, as in timm); PyTorch's
    SyncBatchNorm does so on CUDA only."""
    if args.sync_bn and args.distributed and device.type != 'cuda':
        raise SystemExit(f'--sync-bn on {device.type}: PyTorch\'s SyncBatchNorm needs CUDA (on the CPU, '
                         '--dist-bn reduce averages the running statistics every epoch)')


def mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


def mixup_kwargs(args: argparse.Namespace) -> Dict:
    """timm's ``Mixup`` / ``FastCollateMixup`` arguments from the mixup flags (label smoothing included)."""
    return dict(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax, prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
        num_classes=args.num_classes)


def model_factory_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """``timm.create_model`` keywords of the model flags (the weights' source aside)."""
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else None)
    return dict(num_classes=args.num_classes, drop_rate=args.drop, drop_path_rate=args.drop_path,
                drop_block_rate=args.drop_block, global_pool=args.gp, scriptable=args.torchscript,
                **({'in_chans': in_chans} if in_chans else {}), **args.model_kwargs)


def create_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model as timm's train.py builds it: factory keywords from the flags, then the head initialisation,
    BatchNorm overrides, split BN and gradient checkpointing."""
    factory_kwargs = dict(pretrained_cfg_overlay=dict(file=args.pretrained_path, num_classes=-1)) \
        if args.pretrained_path else {}
    model = timm.create_model(args.model, pretrained=args.pretrained or bool(args.pretrained_path),
                              **model_factory_kwargs(args), **factory_kwargs)
    if args.initial_checkpoint:
        load_checkpoint(model, args.initial_checkpoint)
    with torch.no_grad():
        if args.head_init_scale is not None:
            model.get_classifier().weight.mul_(args.head_init_scale)
            model.get_classifier().bias.mul_(args.head_init_scale)
        if args.head_init_bias is not None:
            model.get_classifier().bias.fill_(args.head_init_bias)
    for module in model.modules():  # timm passes these to models that take them; here every BN layer does
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = module.momentum if args.bn_momentum is None else args.bn_momentum
            module.eps = module.eps if args.bn_eps is None else args.bn_eps
    if args.split_bn:  # timm's SplitBatchNorm2d takes 4-D maps: the VT's BatchNorm1d token norms stay shared
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, torch.nn.BatchNorm2d):
                    setattr(parent, name, convert_splitbn_model(child, max(args.aug_splits, 2)))
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


CHECKPOINT_FLAGS = ('resume', 'initial_checkpoint', 'pretrained_path', 'kd_checkpoint')


def flag(dest: str) -> str:
    return '--' + dest.replace('_', '-')


def read_checkpoint_flags(args: argparse.Namespace) -> Dict[str, Any]:
    """The files of ``--resume``, ``--initial-checkpoint``, ``--pretrained-path`` and ``--kd-checkpoint``,
    read safely (tensors memory-mapped) before any work: one that cannot be read, or a ``--resume`` file that
    is not a train.py checkpoint, exits naming the flag, the file and why."""
    files = {}
    for dest in CHECKPOINT_FLAGS:
        if getattr(args, dest):
            try:
                files[dest] = read_checkpoint(getattr(args, dest), mmap=True)
            except (OSError, ValueError) as e:
                raise SystemExit(f'{flag(dest)}: {e}') from e
    resume = files.get('resume')
    if resume is not None and not (isinstance(resume, dict) and {'epoch', 'state_dict'} <= set(resume)):
        raise SystemExit(f'--resume {args.resume}: expected a checkpoint written by train.py (weights, epoch and '
                         'optimizer state); this file holds weights only: start from them with --initial-checkpoint')
    return files


def _cfg_keys(model: torch.nn.Module, field: str) -> Tuple[str, ...]:
    names = (getattr(model, 'pretrained_cfg', None) or {}).get(field) or ()
    return (names,) if isinstance(names, str) else tuple(names)


def check_checkpoints_fit(args: argparse.Namespace, files: Dict[str, Any]) -> None:
    """Each checkpoint file fits what it is loaded into, checked on a weightless (meta) copy of the model and
    teacher: ``--resume`` exactly, ``--initial-checkpoint`` exactly (timm loads it strictly), and
    ``--pretrained-path`` up to the classifier and the first convolution's input channels, which timm adapts.
    A file that does not fit exits naming the flag and the file, saying what differs and what to do."""
    if not files:
        return
    model = timm.create_model(args.model, device='meta', **model_factory_kwargs(args))
    classifier, stem = _cfg_keys(model, 'classifier'), tuple(f'{c}.weight' for c in _cfg_keys(model, 'first_conv'))

    def fail(dest: str, target: torch.nn.Module, mismatch: str, remedy: str = '') -> None:
        raise SystemExit(f'{flag(dest)} {getattr(args, dest)}: does not fit {model_settings(target)}: {mismatch}{remedy}')

    expected = model.state_dict()
    for dest in ('resume', 'initial_checkpoint', 'pretrained_path'):
        if dest not in files:
            continue
        weights = state_dict_of(files[dest], getattr(args, dest))
        if dest == 'pretrained_path':
            mismatch = state_dict_mismatch(expected, weights, ignore=classifier, ignore_shape=stem)
            if mismatch:
                fail(dest, model, mismatch, "; only the classifier may differ (and the first convolution's input "
                                            "channels, which timm adapts)")
            continue
        mismatch = state_dict_mismatch(expected, weights)
        head = f'{classifier[0]}.weight' if classifier else None
        if dest == 'initial_checkpoint' and mismatch and head in weights and \
                not state_dict_mismatch(expected, weights, ignore=classifier):
            raise SystemExit(f'--initial-checkpoint {args.initial_checkpoint}: its classifier has '
                             f'{weights[head].shape[0]} classes, the model {expected[head].shape[0]}: pass '
                             f'--num-classes {weights[head].shape[0]} to keep that head, or load the file with '
                             '--pretrained-path')
        if mismatch:
            fail(dest, model, mismatch, '; resume with the model flags of the run that wrote it'
                 if dest == 'resume' else '')
    if 'kd_checkpoint' in files:
        teacher = timm.create_model(args.kd_model_name, device='meta', num_classes=model.num_classes,
                                    in_chans=getattr(model, 'in_chans', 3))
        mismatch = state_dict_mismatch(teacher.state_dict(), state_dict_of(files['kd_checkpoint'], args.kd_checkpoint),
                                       ignore_shape=tuple(f'{c}.weight' for c in _cfg_keys(teacher, 'first_conv')))
        if mismatch:
            raise SystemExit(f'--kd-checkpoint {args.kd_checkpoint}: does not fit the teacher '
                             f'{model_settings(teacher)}: {mismatch}')


def learning_rate(args: argparse.Namespace) -> float:
    """``--lr``, else timm's rule: ``--lr-base`` scaled by global batch / ``--lr-base-size``, linearly or by its
    square root (``--lr-base-scale``; default sqrt for adaptive ``ada*``/``lamb`` optimizers)."""
    if args.lr is not None:
        return args.lr
    global_batch = args.batch_size * args.world_size * args.grad_accum_steps
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    ratio = global_batch / args.lr_base_size
    return args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)


def create_task(model: torch.nn.Module, args: argparse.Namespace, device: torch.device,
                dtype: Optional[torch.dtype]) -> torch.nn.Module:
    """timm's classification task with timm's loss for the flags (cross-entropy with smoothing, soft targets
    under mixup, BCE, JSD), or distillation from the teacher when one is named (logit, feature or token)."""
    criterion = create_classification_loss(
        loss_type='jsd' if args.jsd_loss else 'bce' if args.bce_loss else None, smoothing=args.smoothing,
        soft_targets=mixup_active(args), pos_weight=args.bce_pos_weight, bce_target_thresh=args.bce_target_thresh,
        bce_sum=args.bce_sum, jsd_splits=args.aug_splits if args.jsd_loss else 0)
    common = dict(criterion=criterion.to(device), device=device, dtype=dtype)
    if not args.kd_model_name:
        return ClassificationTask(model, **common)
    teacher = dict(teacher_pretrained_path=args.kd_checkpoint or None, distill_loss_weight=args.distill_loss_weight,
                   task_loss_weight=args.task_loss_weight)
    if args.kd_distill_type == 'logit':
        return LogitDistillationTask(model, args.kd_model_name, loss_type=args.kd_loss_type,
                                     temperature=args.kd_temperature, **teacher, **common)
    if args.kd_distill_type == 'feature':
        return FeatureDistillationTask(model, args.kd_model_name, student_feature_dim=args.kd_student_feature_dim,
                                       teacher_feature_dim=args.kd_teacher_feature_dim, **teacher, **common)
    return TokenDistillationTask(model, args.kd_model_name, distill_type=args.kd_token_distill_type,
                                 temperature=args.kd_temperature, **teacher, **common)


def create_loaders(args: argparse.Namespace, data_config: Dict, device: torch.device,
                   dtype: Optional[torch.dtype]):
    """timm's training and evaluation loaders for the data flags (images read in ``input_img_mode``)."""
    datasets = {}
    for split, is_training, num_samples in ((args.train_split, True, args.train_num_samples),
                                            (args.val_split, False, args.val_num_samples)):
        datasets[is_training] = create_dataset(
            args.dataset, args.data_dir, split, is_training=is_training, num_samples=num_samples, seed=args.seed,
            class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
            repeats=args.epoch_repeats if is_training else 0,
            input_img_mode=input_img_mode(args.input_img_mode, data_config['input_size'][0]),
            input_key=args.input_key, target_key=args.target_key,
            trust_remote_code=args.dataset_trust_remote_code)
    train_set = datasets[True]
    if args.aug_splits > 1:
        train_set = AugMixDataset(train_set, num_splits=args.aug_splits)
    common = dict(
        input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, distributed=args.distributed, use_prefetcher=not args.no_prefetcher,
        device=device, pin_memory=args.pin_mem, img_dtype=dtype or torch.float32,
        persistent_workers=False,  # fresh workers each epoch, seeded from that epoch's seed (see main)
    )
    collate_fn = FastCollateMixup(**mixup_kwargs(args)) if mixup_active(args) and not args.no_prefetcher else None
    train_loader = create_loader(
        train_set, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, re_split=args.resplit, train_crop_mode=args.train_crop_mode,
        scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        num_aug_splits=args.aug_splits,
        interpolation=data_config['interpolation'] if args.no_aug or not args.train_interpolation
        else args.train_interpolation,
        worker_seeding=args.worker_seeding, collate_fn=collate_fn, use_multi_epochs_loader=args.use_multi_epochs_loader,
        input_size_choices=args.train_img_sizes, batch_size_choices=args.train_batch_sizes,
        batch_choice_weights=args.train_size_probs, batch_choice_seed=args.seed,
        batch_choice_schedule=args.train_size_schedule,
        batch_schedule_epochs=args.epochs if args.train_size_schedule == 'progressive' else None,
        batch_schedule_spread=args.train_size_schedule_spread,
        batch_schedule_random_mix=args.train_size_random_mix, num_batches=args.train_batches_per_epoch,
        **common)
    val_loader = create_loader(
        datasets[False], batch_size=args.validation_batch_size or args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'], **common)
    for loader in (train_loader, val_loader):
        base = getattr(loader, 'loader', loader)  # timm's PrefetchLoader wraps the DataLoader
        base.worker_init_fn = IgnoringStopSignals(base.worker_init_fn)
    return train_loader, val_loader


def set_loader_epoch(loader, epoch: int) -> None:
    """Tell the loader's dataset and (batch) sampler the epoch, where they take it."""
    for part in (loader.dataset, getattr(loader, 'batch_sampler', None), loader.sampler):
        if hasattr(part, 'set_epoch'):
            part.set_epoch(epoch)
            if part is not loader.dataset:
                return


def loss_scale(args: argparse.Namespace, batch_size: int, reference_batch: float) -> float:
    """timm's ``--variable-batch-loss-scale``: a batch's loss weight by its size relative to the mean."""
    if args.variable_batch_loss_scale == 'none':
        return 1.
    ratio = batch_size / reference_batch
    return ratio ** 0.5 if args.variable_batch_loss_scale == 'sqrt' else ratio


class Diverged(Exception):
    """The loss or the validated model is not finite (the message says where)."""


class Stopped(Exception):
    """A stop signal ended the run; ``checkpoint`` is the file to resume from."""

    def __init__(self, signum: int, checkpoint: str):
        super().__init__(f'{signal.Signals(signum).name} stopped the run')
        self.signum, self.checkpoint = signum, checkpoint


def agree(args: argparse.Namespace, device: torch.device, *flags: bool) -> List[bool]:
    """Each flag OR-ed over the processes (one all-reduce), so that every process takes the same branch."""
    if not args.distributed:
        return list(flags)
    values = torch.tensor(flags, dtype=torch.int32, device=device)
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def reseed_after_batch(args: argparse.Namespace, epoch: int, batch_idx: int) -> None:
    """Seed the random generators from (seed, epoch, batch) after each batch: what the next batch draws
    (in-process augmentation, mixup, dropout, drop-path) then does not depend on the batches before it, so a
    run resumed mid-epoch, which reads those batches without training on them, draws the same numbers."""
    seed = int(np.random.SeedSequence([args.seed, epoch, batch_idx + 1]).generate_state(1)[0])
    random_seed(seed, args.rank)


def gather(args: argparse.Namespace, value: Any) -> List[Any]:
    """``value`` of every process, in rank order."""
    if not args.distributed:
        return [value]
    values = [None] * args.world_size
    torch.distributed.all_gather_object(values, value)
    return values


def stop_signal(received: List[int]) -> int:
    return received[0] if received else signal.SIGTERM  # a stop agreed from another process


def train_one_epoch(
        epoch: int, task, loader, optimizer, scheduler, args: argparse.Namespace, device: torch.device,
        autocast, loss_scaler: Optional[NativeScaler], num_updates: int, dtype: Optional[torch.dtype] = None,
        mixup_fn: Optional[Callable] = None, saver: Optional[AtomicCheckpointSaver] = None,
        output_dir: Optional[Path] = None, stop: Sequence[int] = (), position: Optional[Dict[str, Any]] = None,
) -> Tuple[Dict[str, float], int]:
    """One pass over ``loader``; returns the epoch's mean losses and the new update count.

    ``position`` (from a mid-epoch checkpoint) says how many batches of this epoch were already trained: they
    are read but not trained on. A non-finite loss raises ``Diverged`` before its backward pass, or with
    ``--skip-nonfinite-loss`` skips the update (the BatchNorm statistics its forward pass moved restored).
    A stop signal (``stop``, filled by ``stop_signals``) ends the epoch after the current update with a
    recovery checkpoint (``Stopped``); on the last update the epoch ends as usual."""
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if mixup_fn is not None:
            mixup_fn.mixup_enabled = False
        elif getattr(loader, 'mixup_enabled', False):
            loader.mixup_enabled = False
    reference_batch = getattr(getattr(loader, 'batch_sampler', None), 'average_batch_size', args.batch_size)
    task.train()
    updates_per_epoch = (len(loader) + args.grad_accum_steps - 1) // args.grad_accum_steps
    sums: Dict[str, float] = {}
    seen = update_idx = skipped = start_batch = 0
    if position is not None:
        start_batch, update_idx, skipped = position['batches'], position['epoch_updates'], position['skipped']
        sums, seen = dict(position['sums'][args.rank]), position['seen'][args.rank]
    buffers = list(task.get_trainable_module().buffers()) if args.skip_nonfinite_loss else []
    skip_update = False
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for batch_idx, (input, target) in enumerate(loader):
        if batch_idx < start_batch:
            reseed_after_batch(args, epoch, batch_idx)
            continue
        if isinstance(input, (list, tuple)):  # AugMix splits without the prefetcher: split-major, as fast_collate
            input = torch.cat(input)
        input, target = input.to(device=device, dtype=dtype), target.to(device)
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        last_accum = (batch_idx + 1) % args.grad_accum_steps == 0 or batch_idx + 1 == len(loader)
        saved_buffers = [b.clone() for b in buffers]
        with (nullcontext() if last_accum else task.no_sync()), autocast():
            result = task(input, target)
        loss = result['loss'] * loss_scale(args, input.shape[0], reference_batch) / args.grad_accum_steps
        nonfinite, stopping = agree(args, device, not torch.isfinite(loss).item(), bool(stop))
        if nonfinite:
            where = f'epoch {epoch}, update {update_idx + 1}/{updates_per_epoch}'
            if not args.skip_nonfinite_loss:
                value = result['loss'].item()
                raise Diverged(f'{where}: the loss is {value if not math.isfinite(value) else "not finite on another process"}')
            for buffer, saved in zip(buffers, saved_buffers):
                buffer.copy_(saved)
            skip_update = True
        elif not skip_update:
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=task.get_clip_parameters(), need_update=last_accum)
            else:
                loss.backward()
                if last_accum:
                    if args.clip_grad is not None:
                        dispatch_clip_grad(task.get_clip_parameters(), value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
            for key, value in result.items():
                if key.endswith('loss'):
                    sums[key] = sums.get(key, 0.) + value.item() * input.shape[0]
            seen += input.shape[0]
        if last_accum:
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            update_idx += 1
            if skip_update:
                skipped += 1
                if is_primary(args):
                    _logger.warning(f'epoch {epoch}, update {update_idx}/{updates_per_epoch}: the loss is not finite: '
                                    f'update skipped ({skipped} in this epoch)')
            else:
                task.update_ema(step=num_updates)
            skip_update = False
            if args.synchronize_step and device.type != 'cpu':
                torch.accelerator.synchronize(device)
            if is_primary(args) and (update_idx % args.log_interval == 0 or update_idx == updates_per_epoch):
                now = time.perf_counter()
                rate = seen * args.world_size / (now - start)
                eta = (now - start) / update_idx * (updates_per_epoch - update_idx)
                losses = '  '.join(f'{k} {v / max(seen, 1):.4f}' for k, v in sums.items())
                _logger.info(
                    f'epoch {epoch} [{update_idx}/{updates_per_epoch}]  {losses}  '
                    f'lr {optimizer.param_groups[0]["lr"]:.3e}  {rate:.1f} img/s  eta {eta:.0f}s')
                if args.save_images and output_dir is not None:
                    import torchvision.utils
                    torchvision.utils.save_image(input.float(), output_dir / f'train-batch-{batch_idx}.jpg',
                                                 padding=0, normalize=True)
            scheduler.step_update(num_updates=num_updates)
            recovery_due = args.recovery_interval and update_idx % args.recovery_interval == 0
            if update_idx < updates_per_epoch and (stopping or recovery_due):
                here = dict(epoch=epoch, batches=batch_idx + 1, batches_per_epoch=len(loader),
                            epoch_updates=update_idx, skipped=skipped)
                path = save_position(args, saver, here, (epoch, update_idx - 1), num_updates, sums, seen, output_dir)
                if stopping:
                    if is_primary(args):
                        _logger.info(f'{signal.Signals(stop_signal(stop)).name}: stopped at epoch {epoch}, update '
                                     f'{update_idx}/{updates_per_epoch}; saved {path}: continue with --resume {path}')
                    raise Stopped(stop_signal(stop), path)
        reseed_after_batch(args, epoch, batch_idx)
    totals = torch.tensor([seen, *sums.values()], dtype=torch.float64, device=device)
    if args.distributed:
        torch.distributed.all_reduce(totals)  # epoch means over the samples of every process
    seen, *loss_sums = totals.tolist()
    metrics = {k: v / max(seen, 1) for k, v in zip(sums, loss_sums)}
    if args.skip_nonfinite_loss:
        metrics['skipped_updates'] = skipped  # every process skips the same updates (agree)
    return metrics, num_updates


def save_position(args: argparse.Namespace, saver: Optional[AtomicCheckpointSaver], here: Dict[str, Any],
                  done: Tuple[int, int], num_updates: int, sums: Dict[str, float], seen: int,
                  output_dir: Optional[Path]) -> str:
    """A recovery checkpoint (rank 0 writes it; named by timm's rule after ``done``, the epoch and update
    index just completed) recording ``here``, where training goes on, and every process's running loss sums,
    so that ``--resume`` continues from there bit for bit; returns its path ('' on other processes)."""
    sums_seen = gather(args, (sums, seen))
    path = ''
    if saver is not None:
        saver.position = dict(here, num_updates=num_updates, world_size=args.world_size,
                              sums=[s for s, _ in sums_seen], seen=[n for _, n in sums_seen])
        with run_files(here['epoch'], output_dir):
            path = saver.save_recovery(*done)
        saver.position = None
    if args.distributed:
        torch.distributed.barrier()  # no process stops before the checkpoint is written
    return path


@contextlib.contextmanager
def run_files(epoch: int, output_dir: Path) -> Iterator[None]:
    """Writing the run's files: an OSError (a full disk, a quota, a failing disk) exits naming the folder,
    listing the checkpoints there (complete: every file is written aside and renamed) and how to go on."""
    try:
        yield
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        why = f'the disk is full ({e.strerror}: {e.filename})' if full else f'{e.strerror or e} ({e.filename})'
        kept = ', '.join(sorted(p.name for p in output_dir.glob('*.pth.tar'))) or 'none yet'
        last = output_dir / 'last.pth.tar'
        then = f'continue with --resume {last}' if last.exists() else 'start the run again'
        raise SystemExit(f'epoch {epoch}: writing into {output_dir} failed: {why}; the checkpoints there are '
                         f'complete and untouched ({kept}): {"free space" if full else "fix that"}, then {then}') from e


def last_good(output_dir: Optional[Path]) -> str:
    """Where a diverged run can be resumed from, for its error message."""
    remedy = 'a lower --lr, --clip-grad or --skip-nonfinite-loss'
    last = output_dir / 'last.pth.tar' if output_dir is not None else None
    epoch = checkpoint_epoch(last) if last is not None and last.exists() else None
    if epoch is None:
        return f'no checkpoint had been written yet: start again with {remedy}'
    return f'{last} (epoch {epoch}) is the last good checkpoint, untouched; resume from it with {remedy}'


def is_finite_model(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


def validate(model: torch.nn.Module, task, loader, args: argparse.Namespace, device: torch.device,
             autocast, dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """Loss, top-1 and top-5 of ``model`` over ``loader`` (all processes' samples together, the distributed
    sampler's padding left out) with the task's evaluator."""
    evaluator = task.create_evaluator(max_samples=evaluation_sample_limit(loader))
    return evaluate(model, loader, device, evaluator, autocast, args.channels_last, args.distributed, dtype)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    setup_default_logging()
    args, args_text = parse_args(argv)
    for module in args.device_modules or ():
        importlib.import_module(module)
    check_args(args)
    files = read_checkpoint_flags(args)
    check_checkpoints_fit(args, files)
    device = init_distributed_device(args)
    check_sync_bn(args, device)
    random_seed(args.seed, args.rank)
    dtype = check_model_dtype(args)
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()

    model = create_model(args)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    data_config = resolve_data_config(vars(args), model=model, verbose=is_primary(args))
    check_mean_std(data_config, args.no_prefetcher, args.model)
    model.to(device=device, dtype=dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        model = convert_sync_batchnorm(model)
    if args.torchscript:
        model = torch.jit.script(model)

    args.lr = learning_rate(args)
    task = create_task(model, args, device, dtype)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(args), **args.opt_kwargs)

    autocast = create_autocast(args, device.type)
    loss_scaler = NativeScaler(device=device.type) if args.amp and amp_dtype(args.amp_dtype) == torch.float16 else None

    start_epoch, position = resume(args, task, optimizer, loss_scaler, files['resume']) if args.resume else (0, None)
    if args.start_epoch is not None:
        start_epoch, position = args.start_epoch, None  # as in timm: overrides the resumed epoch
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device=torch.device('cpu') if args.model_ema_force_cpu else device)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)
    if args.torchcompile:  # as timm's train.py: the task's train and eval modules, before DDP wraps them
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        task.prepare_distributed(device_ids=[args.local_rank] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb)

    train_loader, val_loader = create_loaders(args, data_config, device, dtype)
    if position is not None and position['batches_per_epoch'] != len(train_loader):
        raise SystemExit(f'--resume {args.resume}: written mid-epoch with {position["batches_per_epoch"]} batches per '
                         f'epoch, this run has {len(train_loader)}: resume with the data and batch flags of the run '
                         'that wrote it')
    mixup_fn = Mixup(**mixup_kwargs(args)) if mixup_active(args) and args.no_prefetcher else None
    updates_per_epoch = (len(train_loader) + args.grad_accum_steps - 1) // args.grad_accum_steps
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
    num_updates = position['num_updates'] if position is not None else start_epoch * updates_per_epoch
    if args.sched_on_updates and num_updates:
        scheduler.step_update(num_updates)
    elif start_epoch:
        scheduler.step(start_epoch)

    saver = output_dir = None
    if is_primary(args):
        experiment = args.experiment or f'{time.strftime("%Y%m%d-%H%M%S")}-{args.model}'
        output_dir = Path(get_outdir(args.output, experiment))  # an existing one (a resumed run's) is reused
        with replacing(output_dir / 'args.yaml') as tmp:
            tmp.write_text(args_text)
        saver = AtomicCheckpointSaver(
            model=model, optimizer=optimizer, amp_scaler=loss_scaler, checkpoint_dir=str(output_dir),
            recovery_dir=str(output_dir), decreasing='loss' in args.eval_metric,
            max_history=args.checkpoint_hist, task=task)
        if args.resume and Path(args.resume).resolve().parent == output_dir.resolve():
            saver.load_state_dict_from_checkpoint(args.resume)  # keep ranking and evicting as before
        dropped = trim_summary(output_dir / 'summary.csv', start_epoch)
        if dropped:  # a run killed before it saved them, or an earlier run in this folder
            _logger.info(f'summary.csv: dropped the rows of {dropped} epoch(s) from {start_epoch} on (not in the '
                         'checkpoint this run starts from); they are written again')
        if args.log_wandb:
            import wandb
            wandb.init(project=args.wandb_project, name=experiment, config=vars(args), tags=args.wandb_tags,
                       resume='must' if args.wandb_resume_id else None, id=args.wandb_resume_id or None)
        _logger.info(f'{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, '
                     f'{num_epochs} epochs of {updates_per_epoch} updates, lr {args.lr:g}, '
                     f'{args.world_size} process(es), output {output_dir}')

    eval_metrics: Dict[str, float] = {}
    with stop_signals(force_on_repeat=not args.distributed) as stop:
        try:
            for epoch in range(start_epoch, num_epochs):
                # data order, augmentation, dropout and drop-path of an epoch depend on (seed, epoch, rank)
                # only (and within it on the batch: reseed_after_batch), so a resumed run replays it exactly
                random_seed(args.seed + epoch, args.rank)
                set_loader_epoch(train_loader, epoch)
                train_metrics, num_updates = train_one_epoch(
                    epoch, task, train_loader, optimizer, scheduler, args, device, autocast, loss_scaler,
                    num_updates, dtype, mixup_fn, saver, output_dir, stop,
                    position if position is not None and position['epoch'] == epoch else None)
                if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                    distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
                validated = (epoch + 1) % args.val_interval == 0 or epoch + 1 == num_epochs  # timm's rule
                if validated:
                    eval_metrics = validate_and_save(epoch, model, task, val_loader, train_metrics, optimizer, args,
                                                     device, autocast, dtype, saver, output_dir)
                scheduler.step(epoch + 1, eval_metrics[args.eval_metric] if validated else None)
                if agree(args, device, bool(stop))[0] and epoch + 1 < num_epochs:
                    path = str(output_dir / 'last.pth.tar') if validated and output_dir is not None else ''
                    if not validated:  # the epoch's end as a recovery checkpoint: go on from the next one
                        here = dict(epoch=epoch + 1, batches=0, batches_per_epoch=len(train_loader),
                                    epoch_updates=0, skipped=0)
                        path = save_position(args, saver, here, (epoch, updates_per_epoch - 1), num_updates, {}, 0,
                                             output_dir)
                    if is_primary(args):
                        _logger.info(f'{signal.Signals(stop_signal(stop)).name}: stopped at the end of epoch '
                                     f'{epoch}; saved {path}: continue with --resume {path}')
                    raise Stopped(stop_signal(stop), path)
        except Stopped as e:
            raise SystemExit(128 + e.signum) from None
        except Diverged as e:
            raise SystemExit(f'{e}; nothing was saved from it: {last_good(output_dir)}' if is_primary(args)
                             else str(e)) from None
    return eval_metrics


def resume(args: argparse.Namespace, task, optimizer: torch.optim.Optimizer, loss_scaler: Optional[NativeScaler],
           checkpoint: Dict[str, Any]) -> Tuple[int, Optional[Dict[str, Any]]]:
    """timm's ``resume_task_checkpoint``, keeping this command line's optimizer settings (``--lr``,
    ``--weight-decay``, ...: timm's would keep the checkpoint's; the same flags resume bit-identically).
    Returns the epoch to start at and, for a mid-epoch checkpoint, its position in that epoch."""
    settings = [{k: v for k, v in group.items() if k != 'params'} for group in optimizer.param_groups]
    start_epoch = resume_task_checkpoint(
        task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
        loss_scaler=None if args.no_resume_opt else loss_scaler, log_info=is_primary(args)) or 0
    for group, flags in zip(optimizer.param_groups, settings):
        group.update(flags, initial_lr=flags['lr'])
    position = (checkpoint.get('saver') or {}).get('position')
    if position is None:
        return start_epoch, None
    if position['world_size'] != args.world_size:
        raise SystemExit(f'--resume {args.resume}: written mid-epoch by {position["world_size"]} process(es), this '
                         f'run has {args.world_size}: resume with as many (or from an epoch checkpoint, last.pth.tar)')
    return position['epoch'], position


def validate_and_save(epoch: int, model: torch.nn.Module, task, loader, train_metrics: Dict[str, float],
                      optimizer: torch.optim.Optimizer, args: argparse.Namespace, device: torch.device, autocast,
                      dtype: Optional[torch.dtype], saver: Optional[AtomicCheckpointSaver],
                      output_dir: Optional[Path]) -> Dict[str, float]:
    """Validate the model (and its EMA), then on rank 0 write the summary row, the curves and the checkpoint;
    a model that validates to nan or holds non-finite weights raises ``Diverged`` before anything is written."""
    eval_metrics = validate(task.get_eval_model(), task, loader, args, device, autocast, dtype)
    if task.has_ema() and not args.model_ema_force_cpu:
        ema_metrics = validate(task.get_eval_model(ema=True), task, loader, args, device, autocast, dtype)
        eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
    if not all(math.isfinite(v) for v in eval_metrics.values()) or not is_finite_model(model):
        raise Diverged(f'epoch {epoch}: validation gave ' + ', '.join(f'{k} {v:.4g}' for k, v in eval_metrics.items())
                       + ' (the model diverged)')
    if is_primary(args):
        _logger.info(f'epoch {epoch} validation: ' + '  '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
        with run_files(epoch, output_dir):
            append_summary(output_dir / 'summary.csv', epoch, train_metrics, eval_metrics,
                           lr=optimizer.param_groups[0]['lr'], log_wandb=args.log_wandb)
            plot_summary(output_dir / 'summary.csv')
            saver.save_checkpoint(epoch, metric=eval_metrics[args.eval_metric])
    return eval_metrics


if __name__ == '__main__':
    main()
