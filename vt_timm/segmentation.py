"""Semantic segmentation: VT-FPN and its Panoptic-FPN baseline on any timm ``features_only`` backbone.

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., ICCV 2021), section 5, Tables 9-10
Baseline: `Panoptic Feature Pyramid Networks` (Kirillov et al., CVPR 2019), its semantic branch
    - https://arxiv.org/abs/1901.02446

    backbone   timm.create_model(name, features_only=True): the levels at strides 4-32 are P2-P5
    neck       FPN:    lateral 1x1 conv + BN to 256 ch, top-down path, output 3x3 conv + BN per level
               VTFPN:  per level a filter tokenizer (8 tokens x 1024 ch) on the backbone map; the tokens of
                       all levels go through one shared transformer, are split back, and each level's
                       projector fuses its tokens into the level's map (1x1 conv + BN to 256 ch where the
                       widths differ); no top-down path
    head       per level conv3x3-BN-ReLU stages, each followed by 2x upsampling, down to the finest level
               (stride 4); the levels are summed, a 1x1 classifier and bilinear upsampling to the input

Design choices and the MACs next to Tables 9-10: docs/segmentation.md.

    python -m vt_timm.segmentation [--markdown]
"""
import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct

from .layers import FilterTokenizer, Projector, TokenTransformer, init_vt_weights
from .profile import count_call_macs

__all__ = [
    'FPN', 'VTFPN', 'SemanticHead', 'SegmentationModel', 'create_segmentation_model', 'pyramid_indices',
    'count_macs', 'segmentation_macs',
]

HEADS = ('fpn', 'vt_fpn')
PYRAMID_STRIDES = (4, 8, 16, 32)  # P2-P5


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int, dd: Dict) -> nn.Module:
    """Conv (no bias) + BatchNorm, no activation: detectron2's FPN convs with norm='BN'."""
    return ConvNormAct(in_chs, out_chs, kernel_size, apply_act=False, **dd)


def _kaiming_init(module: nn.Module) -> None:
    """He init (fan-out, ReLU) for every conv in ``module``, as timm's ResNet and detectron2's heads."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class FPN(nn.Module):
    """Feature pyramid of Panoptic FPN: lateral 1x1 conv + BN, top-down path, output 3x3 conv + BN per level.

    The top-down path adds the nearest-upsampled coarser lateral to each finer one (Lin et al.); it costs
    no multiply-adds, so ``top_down=False`` (d2go's VT-FPN config has none) leaves the MACs unchanged.
    """

    def __init__(self, in_chs: Sequence[int], out_chs: int = 256, top_down: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.top_down = top_down
        self.lateral = nn.ModuleList([_conv_bn(c, out_chs, 1, dd) for c in in_chs])
        self.output = nn.ModuleList([_conv_bn(out_chs, out_chs, 3, dd) for _ in in_chs])

    def init_weights(self) -> None:
        _kaiming_init(self)

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral, features)]
        if self.top_down:
            for i in range(len(laterals) - 2, -1, -1):
                coarser = F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode='nearest')
                laterals[i] = laterals[i] + coarser
        return [conv(x) for conv, x in zip(self.output, laterals)]


class VTFPN(nn.Module):
    """VT-FPN (Wu et al., section 5): visual tokens of every level related by one shared transformer.

    Per level, a filter tokenizer pools ``num_tokens`` tokens of ``token_chs`` channels from the backbone
    map; the tokens of all levels are concatenated, go through one ``TokenTransformer`` and are split back;
    each level's ``Projector`` fuses its own tokens into the level's map, first brought to ``out_chs`` by a
    1x1 conv + BN where the backbone width differs (identity where it matches, as R50's 256-ch P2).
    Cross-level exchange happens through the transformer, so there is no top-down path.
    """

    def __init__(
            self,
            in_chs: Sequence[int],
            out_chs: int = 256,
            num_tokens: int = 8,
            token_chs: int = 1024,
            qk_dim: int = 256,
            num_heads: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.num_tokens = num_tokens
        self.tokenizers = nn.ModuleList([FilterTokenizer(c, token_chs, num_tokens, **dd) for c in in_chs])
        self.transformer = TokenTransformer(token_chs, qk_dim, num_heads, **dd)
        self.lateral = nn.ModuleList([_conv_bn(c, out_chs, 1, dd) if c != out_chs else nn.Identity() for c in in_chs])
        self.projectors = nn.ModuleList([Projector(out_chs, token_chs, qk_dim, num_heads, **dd) for _ in in_chs])

    def init_weights(self) -> None:
        """He init for the laterals; the VT parts as in VT-ResNet, their closing BNs zeroed so that a fresh
        VT-FPN passes the laterals through unchanged."""
        _kaiming_init(self.lateral)
        for vt_part in (self.tokenizers, self.transformer, self.projectors):
            init_vt_weights(vt_part)
        self.transformer.zero_init_last()
        for projector in self.projectors:
            projector.zero_init_last()

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        tokens = torch.cat([tokenizer(x) for tokenizer, x in zip(self.tokenizers, features)], dim=1)
        level_tokens = self.transformer(tokens).split(self.num_tokens, dim=1)
        return [
            projector(lateral(x), t)
            for projector, lateral, x, t in zip(self.projectors, self.lateral, features, level_tokens)
        ]


class ScaleBranch(nn.Module):
    """One level of the semantic head: ``max(1, n)`` conv3x3-BN-ReLU stages, the first ``n`` of them
    followed by bilinear upsampling to the next finer level's size (n = levels above the finest)."""

    def __init__(self, in_chs: int, chs: int, num_upsamples: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.convs = nn.ModuleList([
            ConvNormAct(in_chs if i == 0 else chs, chs, 3, **dd) for i in range(max(1, num_upsamples))])

    def forward(self, x: torch.Tensor, sizes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """``sizes``: the finer levels' sizes, coarsest first; one upsampling to each."""
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(sizes):
                x = F.interpolate(x, size=sizes[i], mode='bilinear', align_corners=False)
        return x


class SemanticHead(nn.Module):
    """Panoptic FPN's semantic head: every level to the finest level's resolution (``ScaleBranch``),
    summed, a 1x1 classifier, then bilinear upsampling of the logits to the input size."""

    def __init__(self, in_chs: int, num_levels: int, num_classes: int, chs: int = 128, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.branches = nn.ModuleList([ScaleBranch(in_chs, chs, i, **dd) for i in range(num_levels)])
        self.classifier = nn.Conv2d(chs, num_classes, 1, **dd)

    def init_weights(self) -> None:
        _kaiming_init(self)

    def forward(self, features: List[torch.Tensor], out_size: Tuple[int, int]) -> torch.Tensor:
        sizes = [tuple(x.shape[-2:]) for x in features]
        x = sum(branch(x, sizes[:i][::-1]) for i, (branch, x) in enumerate(zip(self.branches, features)))
        return F.interpolate(self.classifier(x), size=out_size, mode='bilinear', align_corners=False)


class SegmentationModel(nn.Module):
    """Backbone (``features_only``) -> neck (FPN or VT-FPN) -> semantic head; logits at the input size."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: SemanticHead, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.num_classes = num_classes
        self.pretrained_cfg = getattr(backbone, 'pretrained_cfg', {})  # mean/std of the backbone's inputs
        self.neck.init_weights()
        self.head.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> logits (N, num_classes, H, W)."""
        return self.head(self.neck(self.backbone(x)), x.shape[-2:])


def pyramid_indices(backbone: str, **kwargs) -> Tuple[int, ...]:
    """The backbone's feature levels that serve as P2-P5: those at strides 4, 8, 16 and 32.

    ResNets, EfficientNets, ConvNeXts: four levels. VT-ResNets end at stride 16 (their stride-32 stage is
    the VT stage, whose output is tokens, not a map): P2-P4, three levels.
    """
    info = timm.create_model(backbone, features_only=True, device='meta', **kwargs).feature_info
    indices = tuple(i for i, r in enumerate(info.reduction()) if r in PYRAMID_STRIDES)
    if len(indices) < 2:
        raise ValueError(f'{backbone}: feature strides {info.reduction()} have fewer than two levels at '
                         f'strides {PYRAMID_STRIDES}')
    return indices


def create_segmentation_model(
        backbone: str,
        head: str = 'fpn',
        num_classes: int = 21,
        pretrained_backbone: bool = False,
        fpn_chs: int = 256,
        head_chs: int = 128,
        neck_kwargs: Optional[Dict] = None,
        device=None,
        dtype=None,
        **backbone_kwargs,
) -> SegmentationModel:
    """A semantic segmentation model: timm ``backbone`` with an FPN or VT-FPN neck and the semantic head.

    Args:
        backbone: any timm model that supports ``features_only`` (VT-ResNets included).
        head: 'fpn' (Panoptic-FPN baseline) or 'vt_fpn'.
        num_classes: output classes of the per-pixel classifier.
        pretrained_backbone: load the backbone's timm weights.
        fpn_chs: channels of the pyramid maps (paper: 256).
        head_chs: channels of the semantic head's convs (Panoptic FPN: 128).
        neck_kwargs: extra keywords of ``FPN`` or ``VTFPN`` (e.g. ``top_down``, ``num_tokens``, ``qk_dim``).
        **backbone_kwargs: passed to ``timm.create_model``; ``out_indices`` overrides the P2-P5 choice.
    """
    if head not in HEADS:
        raise ValueError(f'head must be one of {HEADS}, got {head!r}')
    if num_classes < 1:
        raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    dd = {'device': device, 'dtype': dtype}
    out_indices = backbone_kwargs.pop('out_indices', None) or pyramid_indices(backbone, **backbone_kwargs)
    features = timm.create_model(
        backbone, pretrained=pretrained_backbone, features_only=True, out_indices=out_indices,
        **dd, **backbone_kwargs)
    strides = features.feature_info.reduction()
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(f'{backbone}: levels {out_indices} have strides {strides}; the semantic head needs each '
                         f'level at twice the stride of the previous one')
    neck_cls = FPN if head == 'fpn' else VTFPN
    neck = neck_cls(features.feature_info.channels(), fpn_chs, **(neck_kwargs or {}), **dd)
    semantic_head = SemanticHead(fpn_chs, len(strides), num_classes, head_chs, **dd)
    return SegmentationModel(features, neck, semantic_head, num_classes)


def count_macs(model: nn.Module, img_size: Tuple[int, int], in_chans: int = 3) -> Tuple[float, Dict[str, float]]:
    """Multiply-adds of one (H, W) image through ``model`` (convs, linears, matmuls, as vt_timm.profile):
    (total, per-module totals keyed by the counter's ``ClassName.child`` names)."""
    device = next(model.parameters()).device
    return count_call_macs(lambda: model(torch.zeros(1, in_chans, *img_size, device=device)))


def segmentation_macs(backbone: str, head: str, img_size: Tuple[int, int], num_classes: int) -> Dict[str, float]:
    """MACs of the neck (the paper's "FPN FLOPs" column), the backbone, the semantic head and the whole model."""
    model = create_segmentation_model(backbone, head, num_classes, device='meta').eval()
    total, per_module = count_macs(model, img_size)
    parts = {part: per_module.get(f'SegmentationModel.{part}', 0.) for part in ('backbone', 'neck', 'head')}
    return dict(parts, total=total)


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's segmentation tables: its setting and its GMACs."""
    img_size: Tuple[int, int]
    num_classes: int  # COCO-stuff: Panoptic FPN's 53 stuff classes + 1 "things"; LIP: 19 parts + background
    backbones: Tuple[str, ...]  # those the table reports
    fpn: float  # neck ("FPN FLOPs" column)
    vt_fpn: float
    totals: Dict[str, Tuple[float, float]]  # whole model, FPN and VT-FPN, where reported


PAPER_TABLES = {
    'Table 9, COCO-stuff': PaperTable(
        (800, 1216), 54, ('resnet50', 'resnet101'), 55.1, 8.5, {'resnet50': (159., 113.)}),
    'Table 10, LIP': PaperTable((473, 473), 20, ('resnet50',), 12.8, 2.0, {}),
}


def macs_table(backbones: Sequence[str] = ('resnet50', 'resnet101')) -> List[List[str]]:
    """Rows of neck and whole-model GMACs, FPN vs VT-FPN, next to the paper's Tables 9-10."""
    rows = [['table', 'backbone', 'input', 'FPN', 'VT-FPN', 'ratio', 'paper FPN', 'paper VT-FPN', 'paper ratio',
             'dev FPN', 'dev VT-FPN', 'total FPN', 'total VT-FPN', 'paper totals']]
    for name, table in PAPER_TABLES.items():
        for backbone in backbones:
            macs = {head: segmentation_macs(backbone, head, table.img_size, table.num_classes) for head in HEADS}
            fpn, vt = (macs[head]['neck'] / 1e9 for head in HEADS)
            fpn_total, vt_total = (macs[head]['total'] / 1e9 for head in HEADS)
            reported = backbone in table.backbones
            totals = table.totals.get(backbone)
            rows.append([
                name, backbone, f'{table.img_size[0]}x{table.img_size[1]}',
                f'{fpn:.2f}', f'{vt:.2f}', f'{fpn / vt:.2f}x',
                *([f'{table.fpn:g}', f'{table.vt_fpn:g}', f'{table.fpn / table.vt_fpn:.2f}x',
                   f'{100 * (fpn / table.fpn - 1):+.1f}%', f'{100 * (vt / table.vt_fpn - 1):+.1f}%']
                  if reported else ['-'] * 5),
                f'{fpn_total:.1f}', f'{vt_total:.1f}', f'{totals[0]:g} -> {totals[1]:g}' if totals else '-',
            ])
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    from .profile import format_table

    parser = argparse.ArgumentParser(description='VT-FPN vs FPN MACs next to the paper\'s Tables 9-10')
    parser.add_argument('--backbones', nargs='+', default=['resnet50', 'resnet101'], help='timm backbones')
    parser.add_argument('--markdown', action='store_true', help='print a markdown table')
    args = parser.parse_args(argv)
    print('GMACs (multiply-adds) of one image; FPN/VT-FPN = the neck (the paper\'s "FPN FLOPs" column), '
          'total = backbone + neck + semantic head\n')
    print(format_table(macs_table(args.backbones), args.markdown))


if __name__ == '__main__':
    main()
