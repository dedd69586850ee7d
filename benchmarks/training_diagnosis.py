#!/usr/bin/env python3
"""Why does a model train the way it does? Per-part gradients and updates, token diversity and
attention sharpness, at initialisation and during a training run of the parity protocol.

    python benchmarks/training_diagnosis.py --models resnet18 vt_resnet18 --recipe adamw --out docs/training_diagnosis.md

For each model: the loss curve (mean of every 10 updates) and, at the logged updates, per part of the
network (stem, layer1-3 or 4, the VT lift, each VT module's tokenizer / attention / FFN / projector,
the classifier) the gradient norm and the relative update |dW| / |W| of the optimiser step; per VT
module, measured on the training batch in train mode: the tokenizer's attention (mean pairwise cosine
of the L maps, entropy / ln(HW)), the effective rank of the gathered tokens (of L), and the entropy of
the transformer's and projector's attention over the L tokens (/ ln L). Uses ``vt_timm.tools.parity``'s data,
recipes and training loop, so its runs are the parity benchmark's runs.
"""
import argparse
import math
import sys
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vt_timm.tools.parity import RECIPES, TrainCallbacks, diversity_stats, load_fashion_mnist, train_run  # noqa: E402
from vt_timm.tools.visualize import capture_vt_modules  # noqa: E402


def part_of(name: str) -> str:
    """The part of a (VT-)ResNet a parameter belongs to, e.g. 'layer3', 'vt.blocks.0.attention'."""
    parts = name.split('.')
    if parts[0] == 'vt':
        if parts[1] != 'blocks':
            return f'vt.{parts[1]}'
        prefix, module = '.'.join(parts[:3]), parts[3]
        if module == 'relation':
            module = 'ffn' if parts[4].startswith('ffn') else 'attention'
        return f'{prefix}.{module}'
    if parts[0].startswith('layer'):
        return parts[0]
    return 'fc' if parts[0] in ('fc', 'head') else 'stem'


def _entropy_ratio(weights: torch.Tensor) -> float:
    """Mean entropy of the rows of (..., L) attention weights, / ln L."""
    weights = weights.double()
    return (-torch.special.xlogy(weights, weights).sum(-1) / math.log(weights.shape[-1])).mean().item()


class Diagnosis(TrainCallbacks):
    """Records gradient/update norms per part and attention statistics at the logged updates."""

    def __init__(self, log_steps: Sequence[int]):
        self.log_steps = set(log_steps)
        self.records: Dict[int, Dict[str, Dict[str, float]]] = OrderedDict()
        self.active = False
        self.before: Dict[str, torch.Tensor] = {}
        self.capturing = ExitStack()

    def model_created(self, model: nn.Module) -> None:
        self.parts: Dict[str, List] = OrderedDict()
        for name, p in model.named_parameters():
            self.parts.setdefault(part_of(name), []).append((name, p))

    def before_forward(self, step: int, model: nn.Module) -> None:
        self.active = step in self.log_steps
        if self.active:
            self.records[step] = OrderedDict()
            self.captures = self.capturing.enter_context(capture_vt_modules(model))

    @torch.no_grad()
    def _record_tokens(self, step: int) -> None:
        """Token statistics of the training batch just seen (train mode), per VT module."""
        self.capturing.close()
        for i, capture in enumerate(self.captures):
            module = self.records[step].setdefault(f'module {i}', {})
            module.update(diversity_stats(capture.logits, capture.tokens))
            if capture.relation_weights is not None:
                module['relation entropy'] = _entropy_ratio(capture.relation_weights)
            if capture.projector_weights is not None:
                module['projector entropy'] = _entropy_ratio(capture.projector_weights)

    def after_backward(self, step: int, model: nn.Module, loss: torch.Tensor) -> None:
        if not self.active:
            return
        self._record_tokens(step)
        self.records[step]['loss'] = {'loss': loss.item()}
        for part, params in self.parts.items():
            grads = [p.grad.double().pow(2).sum() for _, p in params if p.grad is not None]
            self.records[step].setdefault(part, {})['grad'] = math.sqrt(sum(grads).item()) if grads else 0.
        self.before = {name: p.detach().clone() for params in self.parts.values() for name, p in params}

    @torch.no_grad()
    def after_update(self, step: int, model: nn.Module) -> None:
        if not self.active:
            return
        for part, params in self.parts.items():
            delta = sum((p.double() - self.before[name].double()).pow(2).sum() for name, p in params)
            norm = sum(self.before[name].double().pow(2).sum() for name, _ in params)
            self.records[step][part]['update'] = math.sqrt(delta.item() / max(norm.item(), 1e-30))
        self.before = {}


def report(name: str, result, diagnosis: Diagnosis) -> str:
    curve = [sum(result.losses[i:i + 10]) / len(result.losses[i:i + 10]) for i in range(0, len(result.losses), 10)]
    lines = [f'### {name}', '',
             f'Final: train loss {result.train_loss:.3f}, train top-1 {result.train_top1:.1f}%, held-out top-1 '
             f'{result.test_top1:.1f}% ({result.seconds:.0f} s).', '',
             'Loss, mean of every 10 updates: ' + ' '.join(f'{v:.2f}' for v in curve), '']
    steps = list(diagnosis.records)
    parts = list(diagnosis.parts)
    lines += ['| part | ' + ' | '.join(f'update {s}: grad, dW/W' for s in steps) + ' |',
              '|---|' + '---|' * len(steps)]
    for part in parts:
        cells = [f'{diagnosis.records[s][part]["grad"]:.3g}, {diagnosis.records[s][part]["update"]:.3g}' for s in steps]
        lines.append(f'| {part} | ' + ' | '.join(cells) + ' |')
    modules = sorted({k for s in steps for k in diagnosis.records[s] if k.startswith('module')})
    if modules:
        keys = ['cosine', 'entropy', 'erank', 'relation entropy', 'projector entropy']
        lines += ['', '| VT module | ' + ' | '.join(f'update {s}' for s in steps) + ' |', '|---|' + '---|' * len(steps)]
        for module in modules:
            for key in keys:
                if all(key in diagnosis.records[s].get(module, {}) for s in steps):
                    lines.append(f'| {module}: {key} | ' + ' | '.join(
                        f'{diagnosis.records[s][module][key]:.3f}' for s in steps) + ' |')
        diversity = '; '.join(f'module {i}: cosine {d["cosine"]:.2f}, entropy {d["entropy"]:.2f}, erank {d["erank"]:.1f}'
                              for i, d in enumerate(result.diversity))
        lines += ['', f'After training, held-out images in eval mode: {diversity}.']
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['resnet18', 'vt_resnet18'])
    parser.add_argument('--recipe', default='adamw', choices=list(RECIPES))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--train-samples', type=int, default=2500)
    parser.add_argument('--test-samples', type=int, default=1000)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=50)
    parser.add_argument('--img-size', type=int, default=112)
    parser.add_argument('--log-steps', type=int, nargs='+', default=[0, 10, 25, 50, 99])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default='', help='write the Markdown report here')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(args.train_samples, args.test_samples, args.img_size)
    import vt_timm
    sections = [
        '```', 'python benchmarks/training_diagnosis.py ' + ' '.join(sys.argv[1:] if argv is None else argv), '```', '',
        f'vt_timm from {Path(vt_timm.__file__).parent}; recipe {args.recipe} ({RECIPES[args.recipe].note}), seed '
        f'{args.seed}, {args.train_samples} Fashion-MNIST images x {args.epochs} epochs at {args.img_size} px, batch '
        f'{args.batch_size}; torch {torch.__version__}, CPU.', '']
    for model in args.models:
        diagnosis = Diagnosis(args.log_steps)
        result, _ = train_run(model, args.recipe, args.seed, data, epochs=args.epochs, batch_size=args.batch_size,
                              callbacks=diagnosis)
        sections.append(report(model, result, diagnosis))
        print(sections[-1], flush=True)
    text = '\n'.join(sections)
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == '__main__':
    main()
