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

Design choices and the MACs next to Tables 9-10 (``vt_timm.tools.segmentation_macs``, the command
``vt-segmentation-macs``): docs/segmentation.md.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct

from ..layers import FilterTokenizer, Projector, TokenTransformer, init_conv_weights, init_vt_weights

__all__ = [
    'FPN', 'VTFPN', 'SemanticHead', 'SegmentationModel', 'create_segmentation_model', 'pyramid_indices',
]

HEADS = ('fpn', 'vt_fpn')
PYRAMID_STRIDES = (4, 8, 16, 32)  # P2-P5


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int, dd: Dict) -> nn.Module:
    """Conv (no bias) + BatchNorm, no activation: detectron2's FPN convs with norm='BN'."""
    return ConvNormAct(in_chs, out_chs, kernel_size, apply_act=False, **dd)


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
        init_conv_weights(self)

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
        init_conv_weights(self.lateral)
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
        init_conv_weights(self)

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
