"""MACs and parameters of VT-ResNets and ResNets next to the paper's Tables 1, 2 and 8, and of the
ablation variants (first tokenizer, recurrent tokenizer, token relation, L, projector) of VT-R18/34
next to its Tables 3-7.

MACs are multiply-adds counted the way the paper (and fvcore) does: convolutions, linear layers and
matmul/bmm/attention, nothing else. ``torch.utils.flop_counter`` counts 2 FLOPs per MAC, so its
total is halved; it gives 1814.1 MMACs for timm's ResNet-18 at 224 px, the paper's 1.814 G. The
clustering tokenizer's K-means is counted as what it runs: two matmuls per Lloyd step (pixel-centroid
similarities, HW x C x L, and the one-hot member sums, L x HW x C; argmax and normalisations are not
multiply-adds and are not counted); the pooling tokenizer's bilinear resize as its two separable
weight matmuls.

The counts are in the paper's form: the equations as written (every module's ``fused_attn`` off while
counting, ``reference_paths``). The inference fast paths re-associate some products exactly and execute
fewer MACs (the projector never builds its HW x d query); ``executed=True`` counts those.

    vt-macs [--img-size 224] [--markdown]
"""
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import vt_timm  # noqa: F401  registers the models

DEPTHS = (18, 34, 50, 101)

# (MMACs, M params) per table; Table 2 has no R50/R101 rows
PAPER_TABLE2: Dict[str, Tuple[float, float]] = {
    'resnet18': (1814, 11.7), 'vt_resnet18': (1579, 11.6),
    'resnet34': (3664, 21.8), 'vt_resnet34': (3299, 21.8),
}
PAPER_TABLE8: Dict[str, Tuple[float, float]] = {
    'resnet18': (1814, 11.7), 'vt_resnet18': (1569, 11.7),
    'resnet34': (3664, 21.8), 'vt_resnet34': (3236, 19.2),
    'resnet50': (4089, 25.5), 'vt_resnet50': (3412, 21.4),
    'resnet101': (7802, 44.4), 'vt_resnet101': (7129, 41.5),
}
# Table 1, ResNet / VT-ResNet: (total MACs, stage-5 MACs, total params)
PAPER_TABLE1: Dict[int, Tuple[float, float, float]] = {
    18: (1.14, 2.4, 0.91), 34: (1.16, 5.0, 1.21), 50: (1.20, 6.1, 1.19), 101: (1.09, 6.9, 1.19),
}
# the module that is stage 5: ResNet's layer4, VT-ResNet's VT stage (incl. its 1x1 lift)
STAGE5 = {'ResNet': 'layer4', 'VTResNet': 'vt'}


@dataclass
class Ablation:
    """One row of the paper's Tables 3-7: the model kwargs that build it and the paper's
    (MMACs, M params) for VT-R18 and VT-R34."""
    table: str
    variant: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    paper: Dict[int, Tuple[float, float]] = field(default_factory=dict)


PAPER_DEFAULT = {18: PAPER_TABLE2['vt_resnet18'], 34: PAPER_TABLE2['vt_resnet34']}
PAPER_ABLATIONS: List[Ablation] = [
    Ablation('T3', 'first tokenizer: pooling', dict(first_tokenizer='pooling'), {18: (1550, 11.0), 34: (3246, 20.6)}),
    Ablation('T3', 'first tokenizer: clustering', dict(first_tokenizer='clustering'),
             {18: (1580, 11.6), 34: (3230, 21.8)}),
    Ablation('T3', 'first tokenizer: filter', {}, PAPER_DEFAULT),
    Ablation('T4', 'without recurrent tokenizer', dict(tokenizer='filter'), {18: (1564, 11.1), 34: (3369, 20.7)}),
    Ablation('T5', 'relation: none', dict(relation='none'), {18: (1528, 8.5), 34: (3222, 17.1)}),
    Ablation('T5', 'relation: graph conv', dict(relation='graphconv'), {18: (1528, 8.5), 34: (3223, 17.1)}),
    Ablation('T5', 'relation: transformer', {}, PAPER_DEFAULT),
    Ablation('T6', 'L = 32 tokens', dict(num_tokens=32), {18: (1711, 11.6), 34: (3514, 21.8)}),
    Ablation('T6', 'L = 64 tokens', dict(num_tokens=64), {18: (1979, 11.6), 34: (3951, 21.8)}),
    Ablation('T7', 'without projector', dict(projector=False), {18: (1497, 9.3), 34: (3158, 17.3)}),
]
ABLATION_DEPTHS = (18, 34)


@dataclass
class Profile:
    name: str
    macs: float  # multiply-adds, the paper's form
    params: int
    stage5_macs: float
    executed_macs: Optional[float] = None  # multiply-adds the inference fast paths execute (if counted)
    executed_stage5_macs: Optional[float] = None


@contextmanager
def reference_paths(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with every fast path off (each ``fused_attn`` False) inside the block, restored after: it
    computes the equations as written, the form whose MACs the paper's tables count."""
    switched = [m for m in model.modules() if getattr(m, 'fused_attn', False)]
    for m in switched:
        m.fused_attn = False
    try:
        yield model
    finally:
        for m in switched:
            m.fused_attn = True


def count_call_macs(run: Callable[[], Any], grad: bool = False) -> Tuple[float, Dict[str, float]]:
    """Multiply-adds of one call of ``run`` (without autograd unless ``grad``, so that a training step's
    backward counts too): (total, per-module totals keyed by the counter's ``ClassName.child`` names)."""
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(grad):
        run()
    per_module = {name: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() / 2, per_module


def count_macs(model: nn.Module, img_size: Union[int, Tuple[int, int]] = 224,
               in_chans: Optional[int] = None, executed: bool = False) -> Tuple[float, Dict[str, float]]:
    """Multiply-adds of one image (``img_size`` square or (H, W); ``in_chans`` by default the model's, else 3)
    through ``model``, on the model's device (``meta`` costs nothing): (total, per-module totals). In the
    paper's form (``reference_paths``), or as the model executes them with ``executed``."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    in_chans = in_chans or getattr(model, 'in_chans', 3)
    device = next(model.parameters()).device
    with nullcontext() if executed else reference_paths(model):
        return count_call_macs(lambda: model(torch.zeros(1, in_chans, *size, device=device)))


def profile_model(name: str, img_size: int = 224, executed: bool = False, **kwargs) -> Profile:
    """MACs (total and stage 5) in the paper's form, with ``executed`` also as the inference fast paths execute
    them, and parameters of a timm model at ``img_size``."""
    model = timm.create_model(name, device='meta', **kwargs).eval()
    macs, per_module = count_macs(model, img_size)
    cls_name = type(model).__name__
    stage5 = f'{cls_name}.{STAGE5.get(cls_name, "")}'
    profile = Profile(name=name, macs=macs, params=sum(p.numel() for p in model.parameters()),
                      stage5_macs=per_module.get(stage5, 0.))
    if executed:
        profile.executed_macs, executed_per_module = count_macs(model, img_size, executed=True)
        profile.executed_stage5_macs = executed_per_module.get(stage5, 0.)
    return profile


def deviation(value: float, reference: Optional[float]) -> str:
    return f'{100 * (value / reference - 1):+.1f}%' if reference else '-'


def _paper(table: Dict[str, Tuple[float, float]], name: str, idx: int) -> str:
    return f'{table[name][idx]:g}' if name in table else '-'


def _dev(table: Dict[str, Tuple[float, float]], name: str, idx: int, value: float) -> str:
    return deviation(value, table[name][idx]) if name in table else '-'


def model_table(profiles: Sequence[Profile]) -> List[List[str]]:
    rows = [['model', 'MMACs', 'T2', 'dev', 'T8', 'dev', 'M params', 'T2', 'dev', 'T8', 'dev']]
    for p in profiles:
        mmacs, mparams = p.macs / 1e6, p.params / 1e6
        rows.append([
            p.name, f'{mmacs:.1f}',
            _paper(PAPER_TABLE2, p.name, 0), _dev(PAPER_TABLE2, p.name, 0, mmacs),
            _paper(PAPER_TABLE8, p.name, 0), _dev(PAPER_TABLE8, p.name, 0, mmacs),
            f'{mparams:.2f}',
            _paper(PAPER_TABLE2, p.name, 1), _dev(PAPER_TABLE2, p.name, 1, mparams),
            _paper(PAPER_TABLE8, p.name, 1), _dev(PAPER_TABLE8, p.name, 1, mparams),
        ])
    return rows


def ratio_table(profiles: Dict[str, Profile]) -> List[List[str]]:
    rows = [['depth', 'MACs ratio', 'paper', 'stage-5 MACs ratio', 'paper', 'params ratio', 'paper']]
    for depth in DEPTHS:
        resnet, vt = profiles.get(f'resnet{depth}'), profiles.get(f'vt_resnet{depth}')
        if resnet is None or vt is None:
            continue
        paper = PAPER_TABLE1[depth]
        rows.append([
            str(depth),
            f'{resnet.macs / vt.macs:.2f}x', f'{paper[0]:.2f}x',
            f'{resnet.stage5_macs / vt.stage5_macs:.2f}x', f'{paper[1]:.1f}x',
            f'{resnet.params / vt.params:.2f}x', f'{paper[2]:.2f}x',
        ])
    return rows


def executed_table(profiles: Sequence[Profile]) -> List[List[str]]:
    """Per model (profiled with ``executed``): MACs in the paper's form next to those the inference fast paths
    execute, total and stage 5."""
    rows = [['model', 'MMACs (paper form)', 'MMACs executed', 'saved', 'stage-5 MMACs (paper form)',
             'stage-5 MMACs executed', 'saved']]
    for p in profiles:
        rows.append([
            p.name, f'{p.macs / 1e6:.1f}', f'{p.executed_macs / 1e6:.1f}', deviation(p.executed_macs, p.macs),
            f'{p.stage5_macs / 1e6:.1f}', f'{p.executed_stage5_macs / 1e6:.1f}',
            deviation(p.executed_stage5_macs, p.stage5_macs),
        ])
    return rows


def _kwargs_str(kwargs: Dict[str, Any]) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) or '(default)'


def ablation_table(img_size: int = 224) -> List[List[str]]:
    """Every Table 3-7 row for VT-R18 and VT-R34: ours next to the paper's, and the change from the
    default model (ours) / from the paper's Table 2 row (paper)."""
    rows = [['model', 'table', 'variant', 'model kwargs', 'MMACs', 'paper', 'dev', 'Δ', 'paper Δ',
             'M params', 'paper', 'dev', 'Δ', 'paper Δ']]
    for depth in ABLATION_DEPTHS:
        name = f'vt_resnet{depth}'
        default = profile_model(name, img_size)
        base_macs, base_params = default.macs / 1e6, default.params / 1e6
        paper_base_macs, paper_base_params = PAPER_DEFAULT[depth]
        for ablation in PAPER_ABLATIONS:
            p = profile_model(name, img_size, **ablation.kwargs) if ablation.kwargs else default
            mmacs, mparams = p.macs / 1e6, p.params / 1e6
            paper_macs, paper_params = ablation.paper[depth]
            rows.append([
                name, ablation.table, ablation.variant, _kwargs_str(ablation.kwargs),
                f'{mmacs:.1f}', f'{paper_macs:g}', deviation(mmacs, paper_macs),
                f'{mmacs - base_macs:+.1f}', f'{paper_macs - paper_base_macs:+g}',
                f'{mparams:.2f}', f'{paper_params:g}', deviation(mparams, paper_params),
                f'{mparams - base_params:+.2f}', f'{paper_params - paper_base_params:+.1f}',
            ])
    return rows


def format_table(rows: List[List[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ['| ' + ' | '.join(r) + ' |' for r in rows]
        lines.insert(1, '|' + '---|' * len(rows[0]))
        return '\n'.join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)
