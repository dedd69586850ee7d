#!/usr/bin/env python3
"""Evaluate a timm model (the VT-ResNets included): loss, top-1 and top-5 on a dataset split.

    python validate.py --model vt_resnet18 --checkpoint output/run/model_best.pth.tar --data-dir /data/imagenet
    python validate.py --model hf-hub:org/name --pretrained --data-dir /data/imagenet --results-file r.json
    python validate.py -c output/run/args.yaml --checkpoint output/run/model_best.pth.tar

Flags have the names, defaults and meanings of timm's validate.py; the few that cannot apply here are
parsed and refused when set. Weights load with ``weights_only=True`` (train.py checkpoints, plain state
dicts) or from safetensors. ``-c`` takes a train.py recipe or the ``args.yaml`` of a run and evaluates
with its model and data settings (training-only keys are ignored). Unlike timm's script, a model
without ``--checkpoint`` is not silently switched to ``--pretrained``, and ``--model`` names one model
(no wildcards, checkpoint folders or ``all``).
"""
import argparse
import json
import logging
import time
from typing import Dict, List, Optional, Sequence

import torch
from timm.data import RealLabelsImagenet, create_loader, resolve_data_config
from timm.layers import apply_test_time_pool, set_fast_norm
from timm.task import ClassificationEvaluator
from timm.utils import (
    ParseKwargs, check_batch_size_retry, decay_batch_step, random_seed, reparameterize_model, set_jit_fuser,
    setup_default_logging,
)

import vt_timm  # noqa: F401  registers the VT-ResNets
from vt_timm.tools.data import create_dataset, input_img_mode
from vt_timm.cli.args import (
    MODEL_DTYPES, add_amp_arguments, add_compile_arguments, add_dataset_source_arguments, add_unsupported_argument,
    check_compilers, check_inputs, check_mean_std, check_model_dtype, check_results_file, create_autocast,
    create_config_parser, parse_args_with_config,
)
from vt_timm.tools.checkpoints import create_model_from_checkpoint
from vt_timm.tools.evaluate import evaluate
from vt_timm.tools.files import RESULTS_FORMATS, write_results

_logger = logging.getLogger('validate')

config_parser = create_config_parser('train.py recipe or run args.yaml whose model and data settings to use')
# train.py dest names that validate.py (like timm's) spells differently
TRAIN_TO_VALIDATE_DESTS = {'val_split': 'split', 'val_num_samples': 'num_samples'}
CROP_MODES = ('center', 'squash', 'border')  # timm's eval transforms (any other value would mean center)
NAFLEX = 'NaFlex variable-resolution loading is for patch-embedding NaFlexViT models; not built into this validate.py'


def create_parser() -> argparse.ArgumentParser:
    """The evaluation flags: names, defaults and meanings of timm's validate.py."""
    parser = argparse.ArgumentParser(description='Evaluate a timm model (VT-ResNets included)',
                                     parents=[config_parser])
    group = parser.add_argument_group('Dataset')
    group.add_argument('data', nargs='?', metavar='DIR', const=None, help='dataset root (*deprecated*, --data-dir)')
    group.add_argument('--data-dir', metavar='DIR', help='path to dataset root')
    group.add_argument('--dataset', metavar='NAME', default='', help='e.g. torch/fashion_mnist; empty: ImageFolder')
    group.add_argument('--split', metavar='NAME', default='validation')
    group.add_argument('--num-samples', type=int, default=None, metavar='N',
                       help='evaluate a fixed random subset of N samples (as train.py --val-num-samples)')
    add_dataset_source_arguments(group)
    group.add_argument('--seed', type=int, default=42, metavar='S',
                       help='random seed (timm.utils.random_seed), also of the --num-samples subset')
    group.add_argument('--real-labels', default='', type=str, metavar='FILENAME',
                       help='ImageNet "real" labels JSON (timm.data.RealLabelsImagenet) replacing top-1/top-5')
    group.add_argument('--valid-labels', default='', type=str, metavar='FILENAME',
                       help='class indices, one a line: score only these logits (a partial label space)')

    group = parser.add_argument_group('Model')
    group.add_argument('--model', '-m', default='vt_resnet18', metavar='NAME')
    group.add_argument('--checkpoint', default='', type=str, metavar='PATH', help='weights to evaluate')
    group.add_argument('--use-ema', action='store_true', default=False, help="evaluate the checkpoint's EMA weights")
    group.add_argument('--pretrained', action='store_true', default=False, help='use the published weights')
    group.add_argument('--num-classes', type=int, default=None)
    group.add_argument('--in-chans', type=int, default=None, metavar='N')
    group.add_argument('--gp', default=None, type=str, metavar='POOL', help='global pool type (model default if None)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    group.add_argument('--reparam', default=False, action='store_true',
                       help='reparameterize the model (timm.utils.reparameterize_model)')
    group.add_argument('--test-pool', action='store_true', default=False,
                       help="test-time pooling above the model's input size (timm.layers.apply_test_time_pool)")

    group = parser.add_argument_group('Preprocessing')
    group.add_argument('--img-size', default=None, type=int, metavar='N')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    group.add_argument('--use-train-size', action='store_true', default=False,
                       help="the model's train input size even where its cfg names a test size")
    group.add_argument('--crop-pct', default=None, type=float, metavar='N')
    group.add_argument('--crop-mode', default=None, type=str, metavar='N',
                       help=f'{", ".join(CROP_MODES)} (model default if None)')
    group.add_argument('--crop-border-pixels', type=int, default=None, help='crop pixels from the image border')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME')
    add_unsupported_argument(group, '--tf-preprocessing', action='store_true', default=False,
                             reason="needs TensorFlow (timm's TfPreprocessTransform), which vt_timm does not depend on")

    group = parser.add_argument_group('Runtime')
    group.add_argument('-b', '--batch-size', default=256, type=int, metavar='N')
    group.add_argument('-j', '--workers', default=4, type=int, metavar='N')
    group.add_argument('--log-freq', default=10, type=int, metavar='N', help='log running metrics every N batches')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str)
    group.add_argument('--num-gpu', type=int, default=1, help='GPUs for torch.nn.DataParallel (CUDA only)')
    group.add_argument('--no-prefetcher', action='store_true', default=False,
                       help="no timm prefetcher (normalisation in the loader's workers, not on the device)")
    group.add_argument('--pin-mem', action='store_true', default=False, help='pin CPU memory in the DataLoader')
    group.add_argument('--channels-last', action='store_true', default=False)
    add_amp_arguments(group)
    group.add_argument('--model-dtype', default=None, type=str,
                       help=f'model and input dtype without AMP: {", ".join(MODEL_DTYPES)} (default: float32)')
    group.add_argument('--fuser', default='', type=str, help="TorchScript fuser: '', te, old, nvfuser")
    group.add_argument('--fast-norm', default=False, action='store_true', help="timm's experimental fast norm")
    group.add_argument('--torchscript', default=False, action='store_true', help='torch.jit.script the model')
    add_compile_arguments(group)
    group.add_argument('--aot-autograd', default=False, action='store_true',
                       help="functorch's memory_efficient_fusion (AOT Autograd) of the model")
    group.add_argument('--retry', default=False, action='store_true',
                       help='on an error worth retrying (e.g. out of memory), decay the batch size and retry')

    group = parser.add_argument_group('Results')
    group.add_argument('--results-file', default='', type=str, metavar='FILENAME', help='write the results here')
    group.add_argument('--results-format', default='csv', choices=RESULTS_FORMATS, help='default: csv')
    add_unsupported_argument(group, '--metrics-avg', type=str, default=None, choices=['micro', 'macro', 'weighted'],
                             reason='timm computes precision/recall/F1 with scikit-learn, which vt_timm does not '
                                    'depend on')

    group = parser.add_argument_group('NaFlex (not for CNNs)')
    add_unsupported_argument(group, '--naflex-loader', action='store_true', default=False, reason=NAFLEX)
    add_unsupported_argument(group, '--naflex-max-seq-len', type=int, default=576, reason=NAFLEX)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Defaults from ``-c FILE.yaml`` (the keys validate.py shares with train.py), then the command line.
    The deprecated positional DIR, where given, wins over ``--data-dir`` (as in timm's script)."""
    args, _ = parse_args_with_config(
        config_parser, create_parser, argv, strict=False, rename=TRAIN_TO_VALIDATE_DESTS, ignore=('config',))
    if args.data:
        _logger.warning('the positional DIR is deprecated: use --data-dir')
        args.data_dir = args.data
    return args


def check_args(args: argparse.Namespace) -> None:
    """Fail before any work on inputs that do not exist, flags that contradict each other or values timm's
    functions would reject (or silently take for another)."""
    check_inputs(args, ('checkpoint', 'class_map', 'real_labels', 'valid_labels'))
    check_results_file(args.results_file, args.results_format)
    check_model_dtype(args)
    check_compilers(args)
    if args.crop_mode is not None and args.crop_mode not in CROP_MODES:
        raise SystemExit(f'--crop-mode {args.crop_mode}: expected one of {", ".join(CROP_MODES)}')
    if args.log_freq < 1:
        raise SystemExit(f'--log-freq {args.log_freq}: at least 1')
    device = torch.device(args.device)
    if args.num_gpu > 1 and (device.type != 'cuda' or torch.cuda.device_count() < args.num_gpu):
        raise SystemExit(f'--num-gpu {args.num_gpu}: torch.nn.DataParallel needs {args.num_gpu} CUDA devices '
                         f'(--device {args.device}, {torch.cuda.device_count()} CUDA devices)')
    if args.num_gpu < 1:
        raise SystemExit(f'--num-gpu {args.num_gpu}: at least 1')
    if args.real_labels and args.num_samples is not None:
        raise SystemExit('--real-labels with --num-samples: the real labels cover the whole split, in its order')


def read_valid_labels(path: str, num_classes: int) -> List[int]:
    """The class indices in ``path`` (one a line), each a logit of the model's ``num_classes``."""
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    try:
        labels = [int(line) for line in lines]
    except ValueError as e:
        raise SystemExit(f'--valid-labels {path}: expected one class index a line ({e})') from None
    if not labels or not all(0 <= i < num_classes for i in labels):
        raise SystemExit(f'--valid-labels {path}: expected class indices in [0, {num_classes}) (the model has '
                         f'{num_classes} classes), got {labels[:8]}')
    return labels


def read_real_labels(path: str, dataset: torch.utils.data.Dataset) -> RealLabelsImagenet:
    """timm's ``RealLabelsImagenet`` for ``dataset``'s files (ImageNet validation names, in dataset order)."""
    if not hasattr(dataset, 'filenames'):
        raise SystemExit(f'--real-labels {path}: needs a folder dataset, whose file names key the labels '
                         f'(got {type(dataset).__name__})')
    filenames = dataset.filenames(basename=True)
    with open(path) as f:
        num_labels = len(json.load(f))
    if num_labels != len(filenames):
        raise SystemExit(f'--real-labels {path}: {num_labels} label lists for {len(filenames)} images')
    real_labels = RealLabelsImagenet(filenames, real_json=path)
    unknown = [f for f in filenames if f not in real_labels.real_labels]
    if unknown:
        raise SystemExit(f'--real-labels {path}: images must be named ILSVRC2012_val_<8 digits>.JPEG in order, '
                         f'got {unknown[:3]}')
    return real_labels


def dataset_class_names(dataset: torch.utils.data.Dataset) -> Optional[List[str]]:
    """The class names of ``dataset`` in label order, where its reader lists them: timm's folder and tar readers
    (their ``class_to_idx``, a ``--class-map`` included), torchvision's ``classes``; None for other readers."""
    dataset = getattr(dataset, 'dataset', dataset)  # a --num-samples subset
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    if class_to_idx:
        names = [''] * (max(class_to_idx.values()) + 1)
        for name, index in class_to_idx.items():
            names[index] = str(name)
        return names
    classes = getattr(dataset, 'classes', None)
    return [str(c) for c in classes] if isinstance(classes, (list, tuple)) and classes else None


def check_dataset_classes(dataset: torch.utils.data.Dataset, args: argparse.Namespace, num_scored: int) -> None:
    """The dataset's labels index the ``num_scored`` logits scored (the model's, or the ``--valid-labels``). A
    model with more classes than the dataset is fine (as in timm: e.g. a class-mapped subset of ImageNet); one
    with fewer would fail on the first label past its logits, so it exits here naming both counts."""
    names = dataset_class_names(dataset)
    if names is not None and len(names) > num_scored:
        scored = f'--valid-labels {args.valid_labels} score' if args.valid_labels else 'the model has'
        raise SystemExit(
            f'--data-dir {args.data_dir}: {len(names)} classes ({", ".join(names[:5])}{", ..." * (len(names) > 5)}), '
            f'but {scored} {num_scored}: labels from {num_scored} on have no logit. Evaluate with '
            f'--num-classes {len(names)} (and weights for {len(names)} classes), or map the folders to the '
            f"model's classes with --class-map")


class ValidationEvaluator(ClassificationEvaluator):
    """timm's evaluator scoring only the ``valid_labels`` logits (all if None), feeding ``real_labels``
    (timm's ``RealLabelsImagenet``) and logging running metrics every ``log_freq`` batches."""

    def __init__(self, device: torch.device, valid_labels: Optional[List[int]] = None,
                 real_labels: Optional[RealLabelsImagenet] = None, log_freq: int = 10, num_batches: int = 0):
        super().__init__(device)
        self.valid_labels, self.real_labels = valid_labels, real_labels
        self.log_freq, self.num_batches = log_freq, num_batches
        self.batch_idx, self.start = 0, time.perf_counter()

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if self.valid_labels is not None:
            output = output[:, self.valid_labels]
        super().update(output, target)
        if self.real_labels is not None:
            self.real_labels.add_result(output)
        if self.batch_idx % self.log_freq == 0:
            m = self.summary()
            rate = self.num_samples / (time.perf_counter() - self.start)
            _logger.info(f'Test: [{self.batch_idx:>4d}/{self.num_batches}]  {rate:>7.2f} img/s  Loss: {m["loss"]:>7.4f}'
                         f'  Acc@1: {m["top1"]:>7.3f}  Acc@5: {m["top5"]:>7.3f}')
        self.batch_idx += 1


def validate(args: argparse.Namespace) -> Dict:
    """One evaluation of ``args.model`` at ``args.batch_size`` (timm's ``validate``)."""
    device = torch.device(args.device)
    model_dtype = check_model_dtype(args)
    random_seed(args.seed)
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()

    in_chans = args.in_chans if args.in_chans is not None else args.input_size[0] if args.input_size else None
    model_kwargs = {'global_pool': args.gp, 'scriptable': args.torchscript, **args.model_kwargs}
    try:
        model = create_model_from_checkpoint(
            args.model, args.checkpoint, args.use_ema, args.num_classes, in_chans, model_kwargs, args.pretrained)
    except ValueError as e:  # a model keyword out of range
        raise SystemExit(f'--model {args.model}: {e}') from e
    num_classes = model.num_classes
    if args.reparam:
        model = reparameterize_model(model)
    param_count = sum(p.numel() for p in model.parameters())
    data_config = resolve_data_config(vars(args), model=model, use_test_size=not args.use_train_size)
    channels = data_config['input_size'][0]
    check_mean_std(data_config, args.no_prefetcher, args.model)
    test_time_pool = False
    if args.test_pool:
        model, test_time_pool = apply_test_time_pool(model, data_config)
        if test_time_pool and not model.original_pool:
            raise SystemExit(f'--test-pool: {args.model} names no pool_size in its pretrained cfg (test-time '
                             'pooling averages a CNN feature map of that size)')
    model = model.to(device=device, dtype=model_dtype).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.torchscript:
        model = torch.jit.script(model)
    elif args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    elif args.aot_autograd:
        from functorch.compile import memory_efficient_fusion
        model = memory_efficient_fusion(model)
    if args.num_gpu > 1:
        model = torch.nn.DataParallel(model, device_ids=list(range(args.num_gpu)))

    img_mode = input_img_mode(args.input_img_mode, channels)
    try:
        dataset = create_dataset(
            args.dataset, args.data_dir, args.split, num_samples=args.num_samples, seed=args.seed,
            class_map=args.class_map, download=args.dataset_download, input_img_mode=img_mode,
            input_key=args.input_key, target_key=args.target_key, trust_remote_code=args.dataset_trust_remote_code)
    except (RuntimeError, OSError) as e:  # timm: no images found; torchvision: files missing
        raise SystemExit(f'--data-dir {args.data_dir} (--dataset {args.dataset or "<image folder>"}, --split '
                         f'{args.split}): {e}') from e
    if args.aot_autograd and len(dataset) % args.batch_size:
        raise SystemExit(f'--aot-autograd: memory_efficient_fusion compiles for one batch shape, and the last batch '
                         f'would have {len(dataset) % args.batch_size} of {args.batch_size} images: choose a '
                         f'--batch-size that divides the {len(dataset)} images')
    valid_labels = read_valid_labels(args.valid_labels, num_classes) if args.valid_labels else None
    check_dataset_classes(dataset, args, num_classes if valid_labels is None else len(valid_labels))
    real_labels = read_real_labels(args.real_labels, dataset) if args.real_labels else None
    crop_pct = 1.0 if test_time_pool else data_config['crop_pct']
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=False,
        use_prefetcher=not args.no_prefetcher, interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], num_workers=args.workers, crop_pct=crop_pct, crop_mode=data_config['crop_mode'],
        crop_border_pixels=args.crop_border_pixels, pin_memory=args.pin_mem, device=device,
        img_dtype=model_dtype or torch.float32)
    evaluator = ValidationEvaluator(device, valid_labels, real_labels, args.log_freq, len(loader))
    metrics = evaluate(model, loader, device, evaluator, autocast=create_autocast(args, device.type),
                       channels_last=args.channels_last, dtype=model_dtype)
    top1, top5 = ((real_labels.get_accuracy(k=1), real_labels.get_accuracy(k=5)) if real_labels is not None
                  else (metrics['top1'], metrics['top5']))
    return dict(
        model=args.model, checkpoint=args.checkpoint, use_ema=args.use_ema, samples=len(dataset),
        top1=round(top1, 4), top1_err=round(100 - top1, 4), top5=round(top5, 4), top5_err=round(100 - top5, 4),
        loss=round(metrics['loss'], 6), param_count=round(param_count / 1e6, 2),
        img_size=data_config['input_size'][-1], crop_pct=crop_pct, interpolation=data_config['interpolation'])


def validate_with_retry(args: argparse.Namespace) -> Dict:
    """``validate``, and on an error timm deems worth retrying (``check_batch_size_retry``, e.g. out of
    memory) again at timm's next smaller batch size (``decay_batch_step``), per GPU times ``--num-gpu``."""
    batch_size = args.batch_size
    while True:
        args.batch_size = batch_size * args.num_gpu
        if torch.device(args.device).type == 'cuda':
            torch.cuda.empty_cache()
        try:
            return validate(args)
        except RuntimeError as e:
            batch_size = decay_batch_step(batch_size)
            if not check_batch_size_retry(str(e)) or not batch_size:
                raise
            _logger.warning(f'"{e}" while validating: retrying at batch size {batch_size}')


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Parse, check, validate (``--retry``: ``validate_with_retry``), log and write the results; returns them."""
    setup_default_logging()
    args = parse_args(argv)
    check_args(args)
    results = validate_with_retry(args) if args.retry else validate(args)
    _logger.info(' '.join(f'{k}={v}' for k, v in results.items()))
    if args.results_file:
        write_results(args.results_file, results, args.results_format)
    return results


if __name__ == '__main__':
    main()
