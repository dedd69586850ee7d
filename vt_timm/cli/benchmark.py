#!/usr/bin/env python3
"""Throughput, step time, memory, MACs and params of timm models (the VT-ResNets included).

    python benchmark.py --model vt_resnet18 --bench both -b 16 --img-size 224
    python benchmark.py --compare --model 'vt_resnet*' --threads 2 -b 16
    python benchmark.py --compare --model-list vt_resnet18,vt_resnet50 --device cuda --amp --channels-last --torchcompile

Flags have the names, defaults and meanings of timm's benchmark.py; the training step also honours the
optimizer, clipping and label-smoothing flags that timm's script parses (timm's own train step leaves
them out). ``--model`` takes timm's wildcard filters; ``--model-list`` a .txt file of names, one a line
(timm), or names separated by commas. Each measurement is the median over ``--num-bench-iter`` timed
iterations after ``--num-warm-iter`` warm-up ones. On an error timm deems worth retrying (e.g. out of
memory) a bench is rerun at timm's next smaller batch size unless ``--no-retry``. ``--compare`` pairs
every VT-ResNet-N with timm's ResNet-N and times the two alternately at the VT-ResNet's input size,
one iteration each, in one process, so both see the same machine load and their ratio is stable on a noisy machine; it reports
the VT/ResNet throughput ratio next to the ResNet/VT MAC ratio (the VT stage is as efficient per MAC
as the convolutions it replaces when the first is at least the second), and beside them the same two
ratios for the stage the VT replaces (ResNet's layer4 / the VT stage): its MACs in the paper's form and its
time inside each timed step (hooks on the stage: its forward, and in training its backward), so the
whole-model and per-stage figures come from one run (an eager model only: ``--torchscript``,
``--torchcompile`` and ``--aot-autograd`` run no module hooks, and ``--grad-checkpointing`` reruns forwards
in backward; these columns are left out there).

Training memory: on CUDA the allocator's peak over a step; on CPU, where no allocator keeps
statistics, the bytes a training step holds when its forward pass ends, counted exactly: weights,
gradients and optimizer state plus every tensor autograd saves for the backward pass (transient
workspace not included). Inference memory on CPU is the weights alone.
"""
import argparse
import logging
import os
import statistics
import time
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.data import resolve_data_config
from timm.layers import set_fast_norm
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.utils import (
    ParseKwargs, check_batch_size_retry, decay_batch_step, dispatch_clip_grad, reparameterize_model, set_jit_fuser,
)

import vt_timm  # noqa: F401  registers the VT-ResNets
from vt_timm.cli.args import (
    add_amp_arguments, add_compile_arguments, amp_dtype, check_compilers, check_results_file,
)
from vt_timm.tools.checkpoints import is_model_name
from vt_timm.tools.files import RESULTS_FORMATS, write_results
from vt_timm.tools.macs import STAGE5, Profile, format_table, profile_model

_logger = logging.getLogger('benchmark')

BENCHES = {'both': ('infer', 'train'), 'infer': ('infer',), 'inference': ('infer',), 'train': ('train',)}
# --precision: (autocast dtype or None, model and input dtype), as timm's benchmark.py resolves it
PRECISIONS = {
    'float32': (None, torch.float32), 'float16': (None, torch.float16), 'bfloat16': (None, torch.bfloat16),
    'amp': (torch.float16, torch.float32), 'amp_bfloat16': (torch.bfloat16, torch.float32),
}
CLIP_MODES = ('norm', 'value', 'agc')  # timm.utils.dispatch_clip_grad
LR = 1e-4  # the training step's learning rate (timm's benchmark.py has no flag for it)


def create_parser() -> argparse.ArgumentParser:
    """The benchmark flags: names, defaults and meanings of timm's benchmark.py, plus --compare and --threads."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    group = parser.add_argument_group('Benchmark')
    group.add_argument('--model-list', metavar='NAME', default='',
                       help='a .txt file of model names, one a line, or names separated by commas')
    group.add_argument('--bench', default='both', choices=tuple(BENCHES), help='default: both')
    group.add_argument('--detail', action='store_true', default=False,
                       help='time the training step\'s forward, backward and optimizer step apart')
    group.add_argument('--no-retry', action='store_true', default=False,
                       help='on an error, do not decay the batch size and retry')
    group.add_argument('--compare', action='store_true', help='VT-ResNet-N vs ResNet-N, timed alternately')
    group.add_argument('--results-file', default='', type=str, help='write the result rows here')
    group.add_argument('--results-format', default='csv', choices=RESULTS_FORMATS, help='default: csv')
    group.add_argument('--num-warm-iter', default=10, type=int)
    group.add_argument('--num-bench-iter', default=40, type=int)
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str)
    group.add_argument('--threads', type=int, default=None, help='CPU threads (torch.set_num_threads)')

    group = parser.add_argument_group('Model and input')
    group.add_argument('--model', '-m', default='vt_resnet18', metavar='NAME', help='a name or a wildcard filter')
    group.add_argument('-b', '--batch-size', default=256, type=int, metavar='N')
    group.add_argument('--img-size', default=None, type=int, metavar='N', help='model default if None')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N', help='model default if None')
    group.add_argument('--use-train-size', action='store_true', default=False,
                       help="the model's train input size even where its cfg names a test size")
    group.add_argument('--num-classes', type=int, default=None)
    group.add_argument('--gp', default=None, type=str, metavar='POOL', help='global pool type (model default if None)')
    group.add_argument('--channels-last', action='store_true', default=False)
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='gradient checkpointing through the model\'s blocks/stages (training)')
    add_amp_arguments(group)
    group.add_argument('--precision', default='float32', type=str,
                       help=f'{", ".join(PRECISIONS)} (--amp overrides it)')
    group.add_argument('--fuser', default='', type=str, help="TorchScript fuser: '', te, old, nvfuser")
    group.add_argument('--fast-norm', default=False, action='store_true', help="timm's experimental fast norm")
    group.add_argument('--reparam', default=False, action='store_true',
                       help='reparameterize the model (timm.utils.reparameterize_model)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    group.add_argument('--torchscript', action='store_true', default=False, help='torch.jit.script the model')
    add_compile_arguments(group)
    group.add_argument('--aot-autograd', default=False, action='store_true',
                       help="functorch's memory_efficient_fusion (AOT Autograd) of the model")

    group = parser.add_argument_group('Training step')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER', help='timm optimizer name')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON', help='optimizer default if None')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA',
                       help='optimizer default if None')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M')
    group.add_argument('--weight-decay', type=float, default=0.0001)
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM', help='no clipping if None')
    group.add_argument('--clip-mode', type=str, default='norm', help=f'{", ".join(CLIP_MODES)}')
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing of the loss')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout rate')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='drop path rate')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT', help='drop block rate')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (benchmark.py, like timm's, takes no -c), checked before any work: ``--amp``
    sets ``--precision`` to amp (float16) or amp_bfloat16, as in timm's script."""
    args = create_parser().parse_args(argv)
    amp_dtype(args.amp_dtype)
    if args.amp:
        args.precision = 'amp' if args.amp_dtype == 'float16' else f'amp_{args.amp_dtype}'
    if args.precision not in PRECISIONS:
        raise SystemExit(f'--precision {args.precision}: expected one of {", ".join(PRECISIONS)}')
    check_compilers(args)
    if args.clip_mode not in CLIP_MODES:
        raise SystemExit(f'--clip-mode {args.clip_mode}: expected one of {", ".join(CLIP_MODES)}')
    check_results_file(args.results_file, args.results_format)
    return args


def create_model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """``timm.create_model`` kwargs of the flags (None values are left to the model's defaults)."""
    return dict(num_classes=args.num_classes, global_pool=args.gp, drop_rate=args.drop, drop_path_rate=args.drop_path,
                drop_block_rate=args.drop_block, in_chans=args.input_size[0] if args.input_size else None,
                **args.model_kwargs)


class StageTimer:
    """Wall time one submodule takes inside a model's step: its forward (pre-hook to hook) and, when gradients
    flow, its backward (full backward pre-hook to full backward hook), summed per step."""

    def __init__(self, module: torch.nn.Module, now: Callable[[], float]):
        self.now = now
        self.step_times: List[float] = []
        self._started = 0.
        self._step = 0.
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)
        module.register_full_backward_pre_hook(self._start)
        module.register_full_backward_hook(self._stop)

    def _start(self, *_) -> None:
        self._started = self.now()

    def _stop(self, *_) -> None:
        self._step += self.now() - self._started

    def begin_step(self) -> None:
        self._step = 0.

    def end_step(self) -> None:
        self.step_times.append(self._step)


class Bench:
    """One model's timed step (inference or training) on a fixed random batch."""

    def __init__(self, name: str, kind: str, args: argparse.Namespace):
        self.name, self.kind, self.args = name, kind, args
        self.device = torch.device(args.device)
        autocast_dtype, dtype = PRECISIONS[args.precision]
        try:
            model = timm.create_model(name, scriptable=args.torchscript, **create_model_kwargs(args))
        except TypeError as e:  # e.g. a model without drop_block_rate
            raise SystemExit(f'{name} with --drop/--drop-path/--drop-block/--gp/--model-kwargs: {e}') from e
        if args.reparam:
            model = reparameterize_model(model)
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = model.to(device=self.device, dtype=dtype, memory_format=memory_format).train(kind == 'train')
        if kind == 'train' and args.grad_checkpointing:
            self.model.set_grad_checkpointing()
        self.input_size = resolve_data_config(vars(args), model=self.model,
                                              use_test_size=not args.use_train_size)['input_size']
        self.input = torch.randn(args.batch_size, *self.input_size, device=self.device,
                                 dtype=dtype).contiguous(memory_format=memory_format)
        self.target = torch.randint(0, self.model.num_classes, (args.batch_size,), device=self.device)
        if args.torchscript:
            self.forward = torch.jit.script(self.model)
        elif args.torchcompile:
            self.forward = torch.compile(self.model, backend=args.torchcompile, mode=args.torchcompile_mode)
        elif args.aot_autograd:
            from functorch.compile import memory_efficient_fusion
            self.forward = memory_efficient_fusion(self.model)
        else:
            self.forward = self.model
        stage = STAGE5.get(type(self.model).__name__)
        recomputes = kind == 'train' and args.grad_checkpointing  # a recomputed forward would count twice
        self.stage_timer = StageTimer(self.model.get_submodule(stage), self._now) \
            if args.compare and stage and self.forward is self.model and not recomputes else None
        self.optimizer = create_optimizer_v2(
            self.model, **optimizer_kwargs(argparse.Namespace(**vars(args), lr=LR))) if kind == 'train' else None
        self.loss_fn = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing else torch.nn.CrossEntropyLoss()
        self.autocast = partial(torch.autocast, self.device.type, dtype=autocast_dtype) if autocast_dtype \
            else nullcontext
        self.times: List[float] = []
        self.phases: List[Tuple[float, float, float]] = []  # --detail: forward, backward, optimizer
        self.peak_bytes = 0

    def step(self, marks: Optional[List[float]] = None) -> None:
        """One step; ``marks`` (--detail) gets the synchronised times the forward pass and the loss and backward
        pass end (timm's split)."""
        if self.kind == 'infer':
            with torch.no_grad(), self.autocast():
                self.forward(self.input)
            return
        with self.autocast():
            output = self.forward(self.input)
            if marks is not None:
                marks.append(self._now())
            loss = self.loss_fn(output[0] if isinstance(output, tuple) else output, self.target)
        loss.backward()
        if marks is not None:
            marks.append(self._now())
        if self.args.clip_grad is not None:
            dispatch_clip_grad(self.model.parameters(), value=self.args.clip_grad, mode=self.args.clip_mode)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _now(self) -> float:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def timed_step(self) -> None:
        marks: Optional[List[float]] = [] if self.args.detail and self.kind == 'train' else None
        if self.stage_timer is not None:
            self.stage_timer.begin_step()
        start = self._now()
        self.step(marks)
        end = self._now()
        self.times.append(end - start)
        if self.stage_timer is not None:
            self.stage_timer.end_step()
        if marks is not None:
            self.phases.append((marks[0] - start, marks[1] - marks[0], end - marks[1]))

    def measure_memory(self) -> None:
        """Peak bytes of one step (see the module docstring for how, per device)."""
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        tensor_bytes = lambda t: t.untyped_storage().nbytes() if isinstance(t, torch.Tensor) else 0  # noqa: E731
        state = sum(tensor_bytes(p) * (2 if self.kind == 'train' else 1) for p in self.model.parameters())
        if self.optimizer is not None:
            self.step()  # creates the optimizer state
            state += sum(tensor_bytes(v) for s in self.optimizer.state.values() for v in s.values())
        weights = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        saved: Dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            pointer = t.untyped_storage().data_ptr()
            if pointer not in weights:  # weights are counted above; shared storages once
                saved[pointer] = tensor_bytes(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.step()
        self.peak_bytes = state + sum(saved.values())

    def result(self) -> Dict[str, float]:
        step = statistics.median(self.times)
        result = {'step_ms': 1e3 * step, 'img_per_sec': self.args.batch_size / step, 'peak_mb': self.peak_bytes / 2**20}
        if self.stage_timer is not None:
            result['stage_ms'] = 1e3 * statistics.median(self.stage_timer.step_times)
        if self.phases:
            result.update({f'{phase}_ms': 1e3 * statistics.median(times)
                           for phase, times in zip(('fwd', 'bwd', 'opt'), zip(*self.phases))})
        return result


def run_benches(names: Sequence[str], kind: str, args: argparse.Namespace) -> List[Bench]:
    """Time the models' steps interleaved: warm up each, then one timed step of each per round. All take
    the first model's input size (--compare: the ResNet is timed at its VT-ResNet's size)."""
    benches = [Bench(names[0], kind, args)]
    same_size = argparse.Namespace(**{**vars(args), 'input_size': benches[0].input_size})
    benches += [Bench(name, kind, same_size) for name in names[1:]]
    for bench in benches:
        for _ in range(args.num_warm_iter):
            bench.step()
        bench.measure_memory()
    for _ in range(args.num_bench_iter):
        for bench in benches:
            bench.timed_step()
    return benches


def run_with_retry(names: Sequence[str], kind: str, args: argparse.Namespace) -> List[Bench]:
    """``run_benches`` at ``--batch-size``, and on an error timm deems worth retrying
    (``check_batch_size_retry``, e.g. out of memory) at timm's next smaller ones (``decay_batch_step``)
    unless ``--no-retry``."""
    batch_size = args.batch_size
    while True:
        if torch.device(args.device).type == 'cuda':
            torch.cuda.empty_cache()
        try:
            return run_benches(names, kind, argparse.Namespace(**{**vars(args), 'batch_size': batch_size}))
        except RuntimeError as e:
            batch_size = decay_batch_step(batch_size)
            if args.no_retry or not check_batch_size_retry(str(e)) or not batch_size:
                raise
            _logger.warning(f'"{e}" while benchmarking {", ".join(names)}: retrying at batch size {batch_size}')


def model_names(args: argparse.Namespace) -> List[str]:
    """The models of ``--model-list`` (file or comma-separated names), else of ``--model`` (a name or
    timm's wildcard filter, ``timm.list_models``)."""
    if args.model_list and os.path.isfile(args.model_list):
        with open(args.model_list) as f:
            names = [line.strip() for line in f if line.strip()]
    elif args.model_list:
        if args.model_list.endswith('.txt'):
            raise SystemExit(f'--model-list {args.model_list}: no such file')
        names = [n.strip() for n in args.model_list.split(',') if n.strip()]
    else:
        names = [args.model] if is_model_name(args.model) else timm.list_models(args.model)
    unknown = [n for n in names if not is_model_name(n)]
    if unknown or not names:
        raise SystemExit(f'unknown models {unknown or [args.model]} (see timm.list_models())')
    if args.compare:
        not_vt = [n for n in names if not n.startswith('vt_resnet')]
        if not_vt:
            raise SystemExit(f'--compare pairs vt_resnetN with resnetN; got {not_vt}')
    return names


def stage_ratios(vt: Dict[str, float], resnet: Dict[str, float], vt_profile: Profile,
                 resnet_profile: Profile) -> Dict[str, float]:
    """layer4 / VT stage: time inside the step (where timed) and MACs in the paper's form."""
    if 'stage_ms' not in vt:
        return {}
    return dict(stage_time_ratio=round(resnet['stage_ms'] / vt['stage_ms'], 3),
                stage_mac_ratio=round(resnet_profile.stage5_macs / vt_profile.stage5_macs, 3))


def benchmark(args: argparse.Namespace) -> List[Dict]:
    """One result row per model and bench (and, with --compare, per VT/ResNet pair)."""
    rows = []
    for name in model_names(args):
        group = [name, name.replace('vt_', '')] if args.compare else [name]
        for kind in BENCHES[args.bench]:
            benches = run_with_retry(group, kind, args)
            results = {b.name: b.result() for b in benches}
            profiles = {b.name: profile_model(b.name, b.input_size[1:], **create_model_kwargs(args)) for b in benches}
            for b in benches:
                rows.append(dict(model=b.name, bench=kind, batch_size=b.args.batch_size, img_size=b.input_size[-1],
                                 gmacs=round(profiles[b.name].macs / 1e9, 3),
                                 mparams=round(profiles[b.name].params / 1e6, 2),
                                 **{k: round(v, 2) for k, v in results[b.name].items()}))
            if args.compare:
                vt, resnet = results[name], results[group[1]]
                rows.append(dict(model=f'{name} / {group[1]}', bench=kind,
                                 throughput_ratio=round(vt['img_per_sec'] / resnet['img_per_sec'], 3),
                                 mac_ratio=round(profiles[group[1]].macs / profiles[name].macs, 3),
                                 memory_ratio=round(vt['peak_mb'] / resnet['peak_mb'], 3),
                                 **stage_ratios(vt, resnet, profiles[name], profiles[group[1]])))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    """Parse, set timm's global switches (--fuser, --fast-norm), benchmark, print the table and write the rows."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()
    rows = benchmark(args)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print(format_table([keys] + [[str(row.get(k, '')) for k in keys] for row in rows], markdown=True))
    print(f'device {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}, timm '
          f'{timm.__version__}, precision {args.precision}, channels_last {args.channels_last}, '
          f'torchscript {args.torchscript}, compile {args.torchcompile}, aot_autograd {args.aot_autograd}')
    if args.results_file:
        write_results(args.results_file, rows, args.results_format)
    return rows


if __name__ == '__main__':
    main()
