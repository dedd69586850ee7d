"""Where visual tokens look (the paper's Fig. 6-7): per-token spatial attention maps of any VT model.

    vt-visualize --model vt_resnet18 --image photo.jpg --out tokens.png
    vt-visualize -c output/quickstart/args.yaml --checkpoint output/quickstart/model_best.pth.tar \\
        --image shoe.png --out tokens.png --module all --img-size 128

For every VT module (``VTBlock``, found by type) the tokenizer's spatial attention
``A = SOFTMAX_HW(logits)`` gives one H x W probability map per token: which pixels the token
averages. The second row is the paper's ``A^_{.,l} = sum_l' W_{l,l'} A_{.,l'}`` with W the
relation's L x L attention (averaged over heads): which pixels token l reads once the transformer
has mixed the tokens. A relation without L x L attention gets no second row. The command writes a
PNG (image, then one overlaid heat map per token, rows per module) and prints the attention
entropy ``-sum A log A`` of every token against the uniform ``ln(HW)``.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..layers import VTBlock
from .checkpoints import architecture_name, is_model_name, load_weights
from .files import replacing
from .images import load_image

__all__ = [
    'ModuleAttention', 'TokenAttention', 'ModuleCapture', 'vt_blocks', 'capture_vt_modules', 'forward_eval',
    'create_vt_model', 'load_weights', 'resolve_image_config', 'load_image', 'token_attention_maps', 'attention_entropy', 'entropy_table', 'plot_token_attention',
]

ImageInput = Union[str, Path, Image.Image, torch.Tensor]


@dataclass
class ModuleAttention:
    """Token attention of one VT module.

    Attributes:
        index: position among the model's VT modules (0 = first).
        name: the module's name in the model, e.g. ``vt.blocks.0``.
        tokenizer: class name of its tokenizer; relation: of its relation (transformer).
        attention: (L, H, W) tokenizer attention A; each token's map is a distribution over the H x W map.
        weights: (L, L) relation attention W (rows sum to 1, mean over heads), or None.
        propagated: (L, H, W) ``W @ A``, or None where the relation has no L x L attention.
        note: why ``propagated`` is None.
    """
    index: int
    name: str
    tokenizer: str
    relation: str
    attention: torch.Tensor
    weights: Optional[torch.Tensor] = None
    propagated: Optional[torch.Tensor] = None
    note: str = ''


@dataclass
class TokenAttention:
    """Token attention of one image: the model input, a displayable copy and the per-module maps."""
    input: torch.Tensor  # (C, H, W) as the model saw it (preprocessed)
    display: np.ndarray  # (H, W, 3) in [0, 1]: the input, de-normalised
    data_config: Dict[str, Any]
    modules: List[ModuleAttention] = field(default_factory=list)


def vt_blocks(model: nn.Module) -> List[Tuple[str, VTBlock]]:
    """The model's VT modules in forward order, found by type (any name, any nesting)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, VTBlock)]


@dataclass
class ModuleCapture:
    """What one VT module computed in the latest forward pass under ``capture_vt_modules`` (detached).

    Attributes:
        logits: (N, L, HW) the tokenizer's pre-softmax spatial attention.
        map_size: (H, W) of the feature map the tokenizer read.
        tokens: (N, L, C_T) the tokens the tokenizer gathered (before the relation).
        relation_weights: (N, heads, L, L) the relation's attention over tokens, or None (no such weights).
        projector_weights: (N * heads, HW, L) the projector's attention over tokens, or None.
    """
    logits: Optional[torch.Tensor] = None
    map_size: Tuple[int, int] = (0, 0)
    tokens: Optional[torch.Tensor] = None
    relation_weights: Optional[torch.Tensor] = None
    projector_weights: Optional[torch.Tensor] = None


@contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    """Run part of ``module`` a second time without side effects: its buffers (BN statistics) are restored."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        for buffer, value in saved:
            buffer.copy_(value)


@torch.no_grad()
def _capture_input(capture: ModuleCapture, field_name: str, module: nn.Module, args, kwargs) -> None:
    """Forward pre-hook: recompute the module's attention from its own inputs and keep it."""
    with _buffers_restored(module):
        if field_name == 'logits':
            x = args[0] if args else kwargs['x']
            capture.map_size = tuple(x.shape[-2:])
            capture.logits = module.spatial_logits(*args, **kwargs).detach()
        else:
            setattr(capture, field_name, module.attention_weights(*args, **kwargs).detach())


def _capture_tokens(capture: ModuleCapture, module: nn.Module, args, output: torch.Tensor) -> None:
    capture.tokens = output.detach()


@contextmanager
def capture_vt_modules(model: nn.Module, modules: Optional[Sequence[int]] = None) -> Iterator[List[ModuleCapture]]:
    """Record what the VT modules attend to in every forward pass inside the ``with`` block.

    Yields one ``ModuleCapture`` per selected VT module (``modules``: indices into ``vt_blocks(model)``,
    None = all), filled by each forward pass. Hooks recompute the tokenizer's ``spatial_logits`` and
    the relation's / projector's ``attention_weights`` from the modules' own inputs, with the BN
    statistics restored afterwards, so a captured pass (train or eval mode) leaves the model exactly as
    an uncaptured one would. The hooks are removed on exit.
    """
    blocks = vt_blocks(model)
    selected = list(range(len(blocks))) if modules is None else list(modules)
    captures = [ModuleCapture() for _ in selected]
    handles = []
    try:
        for i, capture in zip(selected, captures):
            name, block = blocks[i]
            tokenizer = getattr(block, 'tokenizer', None)
            if tokenizer is None or not hasattr(tokenizer, 'spatial_logits'):
                raise ValueError(f'{name}: its tokenizer {type(tokenizer).__name__} has no spatial_logits(x, tokens)')
            handles.append(tokenizer.register_forward_pre_hook(
                partial(_capture_input, capture, 'logits'), with_kwargs=True))
            handles.append(tokenizer.register_forward_hook(partial(_capture_tokens, capture)))
            for field_name, part in (('relation_weights', block.relation),
                                     ('projector_weights', getattr(block, 'projector', None))):
                if part is not None and hasattr(part, 'attention_weights'):
                    handles.append(part.register_forward_pre_hook(
                        partial(_capture_input, capture, field_name), with_kwargs=True))
        yield captures
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def forward_eval(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``model(batch)`` in eval mode without gradients; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return model(batch)
    finally:
        model.train(was_training)


def create_vt_model(
        model_name: str,
        checkpoint: Optional[Union[str, Path]] = None,
        use_ema: bool = False,
        **model_kwargs: Any,
) -> nn.Module:
    """``timm.create_model(model_name, **model_kwargs)`` (VT variants included), weights from
    ``checkpoint`` if given, in eval mode. Raises ValueError for an unknown or non-VT model."""
    import timm

    if not is_model_name(model_name):
        raise ValueError(f'model {model_name}: unknown model (VT models: {", ".join(timm.list_models("vt_*"))})')
    model = timm.create_model(model_name, **model_kwargs)
    if not vt_blocks(model):
        raise ValueError(f'model {model_name} has no VT modules (vt_timm.layers.VTBlock): token attention '
                         f'needs a VT model, e.g. {", ".join(timm.list_models("vt_*"))}')
    if checkpoint:
        load_weights(model, checkpoint, use_ema=use_ema)
    return model.eval()


def resolve_image_config(
        model: nn.Module,
        img_size: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        crop_pct: Optional[float] = None,
        interpolation: Optional[str] = None,
) -> Dict[str, Any]:
    """timm's ``resolve_data_config`` for ``model``, with the channel count made the model's own.

    timm keeps the pretrained cfg's 3-channel input size and mean/std for a model built with
    ``in_chans=1``; here the input gets the model's channels, and a 3-value mean/std becomes its
    average for a 1-channel model (a grey image's statistics).
    """
    from timm.data import resolve_data_config

    cfg_chans = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3,))[0]
    in_chans = getattr(model, 'in_chans', None) or cfg_chans
    args = dict(in_chans=in_chans, img_size=img_size, mean=mean, std=std, crop_pct=crop_pct,
                interpolation=interpolation)
    config = resolve_data_config({k: v for k, v in args.items() if v}, model=model)
    config['input_size'] = (in_chans, *config['input_size'][1:])
    for key in ('mean', 'std'):
        values = tuple(config[key])
        if len(values) != in_chans:
            values = (sum(values) / len(values),) * in_chans if in_chans == 1 else (values * in_chans)[:in_chans]
        config[key] = values
    return config


def _display_image(input: torch.Tensor, config: Dict[str, Any]) -> np.ndarray:
    """(C, H, W) normalised input -> (H, W, 3) in [0, 1]; grey (first channel) beyond 1 or 3 channels."""
    mean = torch.tensor(config['mean'], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(config['std'], dtype=torch.float32).view(-1, 1, 1)
    image = (input.float().cpu() * std + mean).clamp(0, 1)
    if image.shape[0] != 3:
        image = image[:1].expand(3, -1, -1)
    return image.permute(1, 2, 0).numpy()


def _parse_modules(modules: Optional[Union[int, str, Sequence[int]]], count: int) -> List[int]:
    if modules is None or modules == 'all':
        return list(range(count))
    indices = [modules] if isinstance(modules, int) else list(modules)
    bad = [i for i in indices if not isinstance(i, int) or not -count <= i < count]
    if bad:
        raise ValueError(f'module {bad[0]}: the model has {count} VT modules (0..{count - 1}, or all)')
    return sorted({i % count for i in indices})


@torch.no_grad()
def token_attention_maps(
        model: Union[str, nn.Module],
        image: ImageInput,
        checkpoint: Optional[Union[str, Path]] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        modules: Optional[Union[int, str, Sequence[int]]] = None,
        img_size: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        crop_pct: Optional[float] = None,
        use_ema: bool = False,
) -> TokenAttention:
    """Per VT module: the tokenizer's attention A (L, H, W) and the propagated attention W @ A.

    Args:
        model: a timm model name (built with ``model_kwargs``, weights from ``checkpoint``) or a
            model object (``checkpoint``, if given, is loaded into it). Any model with VT modules.
        image: an image file (any size/format PIL reads), a PIL image, or an already preprocessed
            tensor (C, H, W) / (1, C, H, W).
        modules: VT module index, list of indices, or None / 'all'.
        img_size, mean, std, crop_pct: overrides of timm's data config for the model.

    ``capture_vt_modules`` records one eval-mode forward pass; the model's train/eval mode is restored.
    """
    from timm.data import create_transform

    if isinstance(model, str):
        model = create_vt_model(model, checkpoint, use_ema=use_ema, **(model_kwargs or {}))
    elif checkpoint:
        load_weights(model, checkpoint, use_ema=use_ema)
    blocks = vt_blocks(model)
    if not blocks:
        raise ValueError(f'{architecture_name(model)} has no VT modules (vt_timm.layers.VTBlock): nothing to visualise')
    selected = _parse_modules(modules, len(blocks))

    config = resolve_image_config(model, img_size=img_size, mean=mean, std=std, crop_pct=crop_pct)
    if isinstance(image, torch.Tensor):
        input = image[0] if image.ndim == 4 else image
        if input.ndim != 3 or image.ndim == 4 and image.shape[0] != 1:
            raise ValueError(f'image tensor: expected (C, H, W) or (1, C, H, W), got {tuple(image.shape)}')
    else:
        if not isinstance(image, Image.Image):
            image = load_image(image, config['input_size'][0])
        input = create_transform(**config)(image)
    param = next(model.parameters(), None)
    batch = input[None].to(device=param.device if param is not None else 'cpu',
                           dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)

    with capture_vt_modules(model, selected) as captures:
        forward_eval(model, batch)
    results = []
    for i, capture in zip(selected, captures):
        name, block = blocks[i]
        relation_name = type(block.relation).__name__
        if capture.logits is None:
            raise RuntimeError(f'{name}: its tokenizer did not run in the forward pass')
        attention = capture.logits[0].float().softmax(dim=-1).reshape(-1, *capture.map_size).cpu()
        result = ModuleAttention(i, name, type(block.tokenizer).__name__, relation_name, attention)
        if capture.relation_weights is not None:
            weights = capture.relation_weights[0].float().mean(dim=0).cpu()  # mean over heads: rows still sum to 1
            result.weights = weights
            result.propagated = (weights @ attention.flatten(1)).reshape(attention.shape)
        else:
            result.note = f'relation {relation_name} has no L x L attention: no propagated row'
        results.append(result)
    return TokenAttention(input.cpu(), _display_image(input, config), config, results)


def attention_entropy(maps: torch.Tensor) -> torch.Tensor:
    """``-sum_p A_p log A_p`` of each map in (L, H, W) (or (L, HW)) -> (L,), in nats (0 log 0 = 0)."""
    p = maps.flatten(1).double()
    return -torch.special.xlogy(p, p).sum(dim=1)


def entropy_table(result: TokenAttention) -> str:
    """A Markdown table per module: each token's attention entropy H, the uniform ln(HW) and H / ln(HW)."""
    lines = []
    for m in result.modules:
        L, H, W = m.attention.shape
        uniform = math.log(H * W)
        columns = [('A', attention_entropy(m.attention))]
        if m.propagated is not None:
            columns.append(('W A', attention_entropy(m.propagated)))
        lines.append(f'module {m.index} ({m.name}: {m.tokenizer}, {m.relation}), {L} tokens on a {H}x{W} map, '
                     f'uniform ln(HW) = {uniform:.3f}' + (f'; {m.note}' if m.note else ''))
        lines.append('| token | ' + ' | '.join(f'H({c}) | H({c})/ln(HW)' for c, _ in columns) + ' |')
        lines.append('|---|' + '---|---|' * len(columns))
        for token in range(L):
            cells = ' | '.join(f'{e[token].item():.3f} | {e[token].item() / uniform:.3f}' for _, e in columns)
            lines.append(f'| {token} | {cells} |')
        cells = ' | '.join(f'{e.mean().item():.3f} | {e.mean().item() / uniform:.3f}' for _, e in columns)
        lines.append(f'| mean | {cells} |')
        lines.append('')
    return '\n'.join(lines)


def plot_token_attention(
        result: TokenAttention,
        out_png: Union[str, Path],
        cell_px: int = 96,
        colors: Optional[int] = None,
) -> Path:
    """Write the token attention figure as a PNG of exactly ``(1 + L) * cell_px`` x ``rows * cell_px`` pixels.

    One row per VT module with the tokenizer attention A, followed by a row with the propagated
    attention W A where the relation has one. Column 0 is the input image; column 1 + l overlays
    token l's map (bilinearly upsampled to the cell) on the grey image in jet colours from 0 to the
    map's maximum or twice the uniform 1/HW, whichever is larger (so a uniform map is a flat
    blue-green, not a saturated red), labelled ``l: H/ln(HW)``. ``colors`` quantises the PNG to that
    many colours (smaller files). Written to a temporary file and renamed.
    """
    from matplotlib import colormaps
    from PIL import ImageDraw, ImageFont

    out = Path(out_png)
    if not out.parent.is_dir():
        raise FileNotFoundError(f'out {out}: no such directory {out.parent}')
    rows = []
    for m in result.modules:
        rows.append((f'module {m.index}: A', m.attention))
        if m.propagated is not None:
            rows.append((f'module {m.index}: W A', m.propagated))
    num_tokens = max(maps.shape[0] for _, maps in rows)
    image = Image.fromarray((result.display * 255).round().astype(np.uint8)).resize(
        (cell_px, cell_px), Image.Resampling.BILINEAR, reducing_gap=None)
    photo = np.asarray(image, dtype=np.float32) / 255
    grey = photo.mean(axis=2, keepdims=True)
    jet = colormaps['jet']
    canvas = np.ones((len(rows) * cell_px, (1 + num_tokens) * cell_px, 3), dtype=np.float32)
    labels = []
    for r, (label, maps) in enumerate(rows):
        top = r * cell_px
        canvas[top:top + cell_px, :cell_px] = photo
        labels.append(((2, top + 1), label))
        up = F.interpolate(maps[:, None].float(), size=(cell_px, cell_px), mode='bilinear', align_corners=False)[:, 0]
        uniform = 1 / (maps.shape[1] * maps.shape[2])  # the density of uniform attention
        entropy = attention_entropy(maps) / -math.log(uniform)
        for token in range(maps.shape[0]):
            heat = up[token].numpy()
            heat = jet(heat / max(float(heat.max()), 2 * uniform))[..., :3]
            left = (1 + token) * cell_px
            canvas[top:top + cell_px, left:left + cell_px] = .5 * grey + .5 * heat
            labels.append(((left + 2, top + 1), f'{token}: {entropy[token].item():.2f}'))
    canvas[:, ::cell_px] = 1  # 1-px white lines between the cells
    canvas[::cell_px] = 1
    png = Image.fromarray((canvas.clip(0, 1) * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(png)
    font = ImageFont.load_default(size=max(8, cell_px // 8))
    for xy, text in labels:
        box = draw.textbbox(xy, text, font=font)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
        draw.text(xy, text, fill=(255, 255, 255), font=font)
    if colors:
        png = png.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with replacing(out) as tmp:
        png.save(tmp, format='PNG', optimize=True)
    return out
