#!/usr/bin/env python3
"""Throughput, step time, memory, MACs and params of timm models (the VT-ResNets included).

    python benchmark.py --model vt_resnet18 --bench both -b 16 --img-size 224
    python benchmark.py --compare --model-list vt_resnet18 vt_resnet34 vt_resnet50 vt_resnet101 --threads 2
    python benchmark.py --compare --device cuda --amp --channels-last -b 256 --torchcompile

Flags follow timm's benchmark.py. Each measurement is the median over ``--num-bench-iter`` timed
iterations after ``--num-warm-iter`` warm-up ones. ``--compare`` pairs every VT-ResNet-N with timm's
ResNet-N and times the two alternately, one iteration each, in one process, so both see the same
machine load and their ratio is stable on a noisy machine; it reports the VT/ResNet throughput
ratio next to the ResNet/VT MAC ratio (the VT stage is as efficient per MAC as the convolutions
it replaces when the first is at least the second).

Training memory: on CUDA the allocator's peak over a step; on CPU, where no allocator keeps
statistics, the bytes a training step holds when its forward pass ends, counted exactly: weights,
gradients and optimizer state plus every tensor autograd saves for the backward pass (transient
workspace not included). Inference memory on CPU is the weights alone.
"""
import argparse
import statistics
import time
from typing import Dict, List, Optional, Sequence

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ParseKwargs

import vt_timm  # noqa: F401  registers the VT-ResNets
from vt_timm.cli.args import add_amp_arguments, add_compile_arguments, check_results_file, create_autocast
from vt_timm.tools.checkpoints import is_model_name
from vt_timm.tools.files import write_results
from vt_timm.tools.macs import format_table, profile_model

BENCHES = ('infer', 'train')


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', '-m', default='vt_resnet18', metavar='NAME')
    parser.add_argument('--model-list', nargs='+', default=None, metavar='NAME',
                        help='several models (names, or one .txt file with a name per line)')
    parser.add_argument('--bench', default='both', choices=('infer', 'train', 'both'))
    parser.add_argument('--compare', action='store_true', help='VT-ResNet-N vs ResNet-N, timed alternately')
    parser.add_argument('-b', '--batch-size', type=int, default=16, metavar='N')
    parser.add_argument('--img-size', type=int, default=224, metavar='N')
    parser.add_argument('--num-warm-iter', type=int, default=3)
    parser.add_argument('--num-bench-iter', type=int, default=15)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (torch.set_num_threads)')
    add_amp_arguments(parser)
    parser.add_argument('--channels-last', action='store_true')
    add_compile_arguments(parser)
    parser.add_argument('--opt', default='sgd', help='optimizer of the training step')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    parser.add_argument('--results-file', default='', help='write results as .csv or .json')
    return parser


class Bench:
    """One model's timed step (inference or training) on a fixed random batch."""

    def __init__(self, name: str, kind: str, args: argparse.Namespace):
        self.name, self.kind, self.args = name, kind, args
        self.device = torch.device(args.device)
        self.model = timm.create_model(name, **args.model_kwargs).to(self.device)
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=memory_format).train(kind == 'train')
        self.input = torch.randn(args.batch_size, self.model.in_chans, args.img_size, args.img_size,
                                 device=self.device).contiguous(memory_format=memory_format)
        self.target = torch.randint(0, self.model.num_classes, (args.batch_size,), device=self.device)
        self.forward = torch.compile(self.model, backend=args.torchcompile, mode=args.torchcompile_mode) \
            if args.torchcompile else self.model
        self.optimizer = create_optimizer_v2(self.model, args.opt, lr=1e-4) if kind == 'train' else None
        self.autocast = create_autocast(args, self.device.type)
        self.times: List[float] = []
        self.peak_bytes = 0

    def step(self) -> None:
        if self.kind == 'infer':
            with torch.no_grad(), self.autocast():
                self.forward(self.input)
            return
        with self.autocast():
            loss = torch.nn.functional.cross_entropy(self.forward(self.input), self.target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def timed_step(self) -> None:
        self._sync()
        start = time.perf_counter()
        self.step()
        self._sync()
        self.times.append(time.perf_counter() - start)

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
        return {'step_ms': 1e3 * step, 'img_per_sec': self.args.batch_size / step, 'peak_mb': self.peak_bytes / 2**20}


def run_benches(names: Sequence[str], kind: str, args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    """Time the models' steps interleaved: warm up each, then one timed step of each per round."""
    benches = [Bench(name, kind, args) for name in names]
    for bench in benches:
        for _ in range(args.num_warm_iter):
            bench.step()
        bench.measure_memory()
    for _ in range(args.num_bench_iter):
        for bench in benches:
            bench.timed_step()
    return {bench.name: bench.result() for bench in benches}


def model_names(args: argparse.Namespace) -> List[str]:
    names = args.model_list or [args.model]
    if len(names) == 1 and names[0].endswith('.txt'):
        with open(names[0]) as f:
            names = [line.strip() for line in f if line.strip()]
    unknown = [n for n in names if not is_model_name(n)]
    if unknown:
        raise SystemExit(f'unknown models {unknown} (see timm.list_models())')
    if args.compare:
        not_vt = [n for n in names if not n.startswith('vt_resnet')]
        if not_vt:
            raise SystemExit(f'--compare pairs vt_resnetN with resnetN; got {not_vt}')
    return names


def benchmark(args: argparse.Namespace) -> List[Dict]:
    """One result row per model and bench (and, with --compare, per VT/ResNet pair)."""
    kinds = BENCHES if args.bench == 'both' else (args.bench,)
    rows = []
    for name in model_names(args):
        group = [name, name.replace('vt_', '')] if args.compare else [name]
        profiles = {n: profile_model(n, args.img_size, **args.model_kwargs) for n in group}
        for kind in kinds:
            results = run_benches(group, kind, args)
            for n in group:
                rows.append(dict(model=n, bench=kind, batch_size=args.batch_size, img_size=args.img_size,
                                 gmacs=round(profiles[n].macs / 1e9, 3), mparams=round(profiles[n].params / 1e6, 2),
                                 **{k: round(v, 2) for k, v in results[n].items()}))
            if args.compare:
                vt, resnet = results[name], results[group[1]]
                rows.append(dict(model=f'{name} / {group[1]}', bench=kind,
                                 throughput_ratio=round(vt['img_per_sec'] / resnet['img_per_sec'], 3),
                                 mac_ratio=round(profiles[group[1]].macs / profiles[name].macs, 3),
                                 memory_ratio=round(vt['peak_mb'] / resnet['peak_mb'], 3)))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    args = create_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_results_file(args.results_file)
    rows = benchmark(args)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print(format_table([keys] + [[str(row.get(k, '')) for k in keys] for row in rows], markdown=True))
    print(f'device {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}, timm '
          f'{timm.__version__}, amp {args.amp}, channels_last {args.channels_last}, compile {args.torchcompile}')
    if args.results_file:
        write_results(args.results_file, rows)
    return rows


if __name__ == '__main__':
    main()
