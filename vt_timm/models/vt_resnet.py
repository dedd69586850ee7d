"""VT-ResNet: ResNet stages 1-4 followed by a stage of Visual Transformer modules.

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., ICCV 2021), Appendix A, Table 11

The stem and layer1-3 are timm's own ResNet (same module names, so timm ResNet weights load into
them); ResNet's stride-32 layer4 is replaced by VT modules working on the stride-16 map, and the
classifier average-pools the output tokens. ``forward_features`` therefore returns tokens
(N, L, C_T), like timm's ViT/LeViT, while ``feature_info``/``features_only`` expose the four NCHW
maps up to stride 16 (``output_stride=8`` dilates layer3 as timm's ResNet does, so the VT stage runs
on the stride-8 map). Design choices: docs/architecture.md.
"""
import math
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Type, Union

import torch
import torch.nn as nn
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from safetensors import SafetensorError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import _assert, calculate_drop_path_rates, get_device_dtype, global_pool_nlc, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models import resolve_pretrained_cfg
from timm.models.resnet import BasicBlock, Bottleneck, make_blocks

from ..layers import VTCfg, VTStage, init_conv_weights, init_vt_weights
from ..layers.vt_block import check_count

__all__ = ['VTResNet']

POOL_TYPES = ('', 'avg', 'max', 'avgmax')  # timm's global_pool_nlc over the tokens
OUTPUT_STRIDES = (16, 8)  # native, and layer3 dilated; there is no stride-32 stage
NUM_FEATURE_LEVELS = 4  # stem, layer1, layer2, layer3
DEFAULT_OUT_INDICES = (0, 1, 2, 3)


def check_output_stride(output_stride: int) -> None:
    """VT-ResNet's deepest map is layer3's (stride 16, or 8 dilated): a ValueError for any other stride."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f'output_stride={output_stride!r}: VT-ResNet has no stride-32 stage (the VT stage replaces ResNet\'s '
            f'layer4 and works on the stride-16 map), so output_stride must be 16 (native) or 8 (layer3 dilated)')


def check_rate(name: str, value: Optional[float]) -> None:
    """A dropout-style probability keyword is a number in [0, 1) (None allowed: off), else a ValueError naming it."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0. <= value < 1.:
        raise ValueError(f'{name}={value!r}: expected a probability in [0, 1) (0 or None: off)')


def feature_reductions(output_stride: int = 16) -> List[int]:
    """Strides of the stem and layer1-3 maps: [2, 4, 8, 16], or [2, 4, 8, 8] with layer3 dilated."""
    return [2, 4, 8, min(16, output_stride)]


def check_out_indices(variant: str, out_indices: Union[int, Tuple[int, ...]], output_stride: int = 16) -> None:
    """``features_only`` levels a VT-ResNet has (as timm reads ``out_indices``: an int n is the last n levels,
    negative indices count from the end), else a ValueError naming them, before timm (or
    segmentation_models_pytorch, which asks for ``out_indices=range(encoder_depth)``) fails on an index."""
    num = NUM_FEATURE_LEVELS
    if isinstance(out_indices, int):
        valid = 0 < out_indices <= num
    else:
        valid = len(out_indices) > 0 and all(isinstance(i, int) and -num <= i < num for i in out_indices)
    if not valid:
        strides = ', '.join(str(r) for r in feature_reductions(output_stride)[1:])
        raise ValueError(
            f'{variant}: out_indices={out_indices!r} asks for a feature level it does not have. VT-ResNet has '
            f'{num} levels: 0 the stem (stride 2), 1-3 layer1-3 (strides {strides}); there is no stride-32 level '
            f'(its layer4 is the VT stage, whose output is tokens, not a map). Use out_indices in 0..{num - 1} '
            f'(or -{num}..-1, or an int 1..{num} for the last n); from segmentation_models_pytorch '
            f'(tu-{variant}), encoder_depth <= {num}.')


def feature_levels(num_levels: int, indices: Optional[Union[int, List[int]]] = None) -> Tuple[List[int], int]:
    """Levels to return and the deepest one, as timm's ``forward_intermediates`` reads ``indices``: all if None,
    the last n if an int, else the listed levels (negative counts from the end)."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f'indices={indices}: the last n levels, n from 1 to {num_levels}')
        levels = list(range(num_levels - indices, num_levels))
    else:
        levels = [i + num_levels if i < 0 else i for i in indices]
        if not levels or not all(0 <= i < num_levels for i in levels):
            raise ValueError(f'indices={list(indices)}: expected levels in 0..{num_levels - 1} (or -{num_levels}..-1)')
    return levels, max(levels)


class PixelTokens(nn.Module):
    """Use the pixels of a map as tokens: (N, C, H, W) -> (N, HW, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class VTResNet(nn.Module):
    """VT-ResNet (Wu et al., Table 11).

    Stem (conv7x7-s2, maxpool) and layer1-3 are timm ResNet stages; the VT stage runs on the
    stride-16 map (stride 8 with ``output_stride=8``); the head pools the L output tokens, applies
    dropout and a linear classifier.
    """

    def __init__(
            self,
            block: Union[Type[BasicBlock], Type[Bottleneck]],
            layers: Tuple[int, ...],
            vt_chs: int,
            vt_depth: int,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            token_chs: int = 1024,
            num_tokens: int = 16,
            qk_dim: int = 256,
            num_heads: int = 1,
            first_tokenizer: str = 'filter',
            tokenizer: str = 'recurrent',
            relation: str = 'transformer',
            projector: bool = True,
            output_stride: int = 16,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_block_rate: Optional[float] = None,
            zero_init_last: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            block: ResNet block of stages 1-4 (BasicBlock or Bottleneck).
            layers: number of blocks in layer1, layer2, layer3.
            vt_chs: channel width C of the VT stage (the stage-4 map is lifted to it if needed).
            vt_depth: number of VT modules.
            num_classes: classifier outputs; 0 gives pooled pre-logits.
            in_chans: input image channels.
            global_pool: token pooling of the head: 'avg' (paper), 'max', 'avgmax' or '' (none, NLC out).
            token_chs: token width C_T.
            num_tokens: number of visual tokens L.
            qk_dim: width of the attention keys/queries in transformer and projector.
            num_heads: attention heads of transformer and projector.
            first_tokenizer: tokenizer of the first VT module: 'filter' (paper), 'clustering' or
                'pooling' (the paper's Table 3 ablation).
            tokenizer: tokenizer of the later VT modules: 'recurrent' (paper) or 'filter' (Table 4).
            relation: token relation: 'transformer' (paper), 'graphconv' or 'none' (Table 5).
            projector: False removes every projector (Table 7); each module then tokenizes the same
                map and the last module's tokens still feed the head (needs tokenizer='recurrent').
            output_stride: stride of the map the VT stage works on: 16 (native) or 8 (layer3 with
                stride 1 and dilation 2, as timm's ResNet does for output_stride=8); there is no 32.
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linearly increasing over all residual blocks,
                ResNet blocks and VT modules alike.
            drop_block_rate: DropBlock in the blocks of layer3 (the stride-16 stage, the last ResNet one),
                as timm's ResNet puts it in its layer3 (block size 5, gamma scale 0.25); None or 0: none.
            zero_init_last: zero-init the last BN of every residual branch.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if len(layers) != 3:
            raise ValueError(f'layers must give the block counts of layer1-3, got {layers}')
        if global_pool not in POOL_TYPES:
            raise ValueError(f'global_pool must be one of {POOL_TYPES}, got {global_pool!r}')
        check_output_stride(output_stride)
        check_count('num_classes', num_classes, 0, '0: no classifier')
        check_count('in_chans', in_chans, 1, 'image channels')
        for name, rate in (('drop_rate', drop_rate), ('drop_path_rate', drop_path_rate),
                           ('drop_block_rate', drop_block_rate)):
            check_rate(name, rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.output_stride = output_stride
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(64, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=64, reduction=2, module='act1')]

        # one linear stochastic-depth ramp over ResNet blocks and VT modules: make_blocks ramps to
        # its own last block, so hand it the rate that block has on the longer ramp
        num_blocks = sum(layers) + vt_depth
        block_dprs = calculate_drop_path_rates(drop_path_rate, num_blocks)
        stages, stage_info = make_blocks(
            (block,) * 3,
            (64, 128, 256),
            layers,
            inplanes=64,
            output_stride=output_stride,
            drop_block_rate=drop_block_rate or 0.,
            drop_path_rate=block_dprs[sum(layers) - 1],
            **dd,
        )
        for stage in stages:
            self.add_module(*stage)
        self.feature_info.extend(stage_info)

        vt_cfg = VTCfg(
            token_chs=token_chs, num_tokens=num_tokens, qk_dim=qk_dim, num_heads=num_heads,
            first_tokenizer=first_tokenizer, tokenizer=tokenizer, relation=relation, projector=projector,
        )
        self.vt = VTStage(stage_info[-1]['num_chs'], vt_chs, vt_depth, vt_cfg, block_dprs[sum(layers):], **dd)

        self.num_tokens = num_tokens  # 0 once pruned to pixel tokens; an int, so TorchScript keeps the size check
        self.num_features = self.head_hidden_size = token_chs
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """Kaiming init for the ResNet convs (as timm's ResNet), ``init_vt_weights`` for the VT stage,
        truncated normal (std .02, as timm's ViT) for the classifier."""
        for trunk_part in (self.conv1, self.layer1, self.layer2, self.layer3):
            init_conv_weights(trunk_part)
        init_vt_weights(self.vt)
        if isinstance(self.fc, nn.Linear):
            trunc_normal_(self.fc.weight, std=.02)
            nn.init.zeros_(self.fc.bias)
        if zero_init_last:
            for module in self.modules():
                if hasattr(module, 'zero_init_last'):
                    module.zero_init_last()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Names exempt from weight decay beyond the 1-D params timm already exempts: none."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise LR decay: stem, ResNet blocks, VT modules, head."""
        return dict(
            stem=r'^conv1|bn1|maxpool',
            blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)',
            vt=r'^vt' if coarse else [(r'^vt\.lift', (0,)), (r'^vt\.blocks\.(\d+)', (1,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.vt.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier with ``num_classes`` outputs (0: none) on the model's device and dtype."""
        check_count('num_classes', num_classes, 0, '0: no classifier')
        if global_pool is not None:
            if global_pool not in POOL_TYPES:
                raise ValueError(f'global_pool must be one of {POOL_TYPES}, got {global_pool!r}')
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.fc = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)

    def _check_input(self, x: torch.Tensor) -> None:
        """Clear errors for a wrong rank, channel count or an image too small for the VT stage."""
        _assert(x.ndim == 4, f'expected an image batch (N, {self.in_chans}, H, W), got shape {x.shape}')
        _assert(
            x.shape[1] == self.in_chans,
            f'expected {self.in_chans} input channels (N, {self.in_chans}, H, W), got shape {x.shape}',
        )
        if self.num_tokens:
            # the VT stage's stride-s map has ceil(H/s) x ceil(W/s) pixels; each token needs at least one
            stride = self.output_stride
            map_pixels = ((x.shape[2] + stride - 1) // stride) * ((x.shape[3] + stride - 1) // stride)
            min_side = stride * math.ceil(math.sqrt(self.num_tokens))
            _assert(
                map_pixels >= self.num_tokens,
                f'input {x.shape[2]}x{x.shape[3]} is too small: its stride-{stride} map has {map_pixels} pixels, '
                f'fewer than the {self.num_tokens} visual tokens; use at least {min_side}x{min_side} px',
            )

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the NCHW maps of the stem and layer1-3.

        Args:
            x: input images.
            indices: last n levels if int, all if None, else the listed levels (0 = stem).
            norm: unused (no norm on the maps), kept for timm API compatibility.
            stop_early: stop after the last requested level.
            output_fmt: 'NCHW' only.
            intermediates_only: return only the intermediates.

        Returns:
            The intermediates, or (final output, intermediates); the final output is the VT
            tokens (N, L, C_T) unless ``stop_early`` stopped before the VT stage.
        """
        _assert(output_fmt == 'NCHW', 'output_fmt must be NCHW: intermediates are feature maps')
        self._check_input(x)
        take_indices, max_index = feature_levels(len(self.feature_info), indices)
        intermediates = []
        x = self._stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        x = self.maxpool(x)
        layers = [self.layer1, self.layer2, self.layer3]
        last_layer = max_index if stop_early else len(layers)
        for idx, layer in enumerate(layers[:last_layer]):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(layer, x)
            else:
                x = layer(x)
            if idx + 1 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if last_layer == len(layers):
            x = self.vt(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop what the requested intermediates do not need.

        Layers after the last requested level go; the VT stage goes with the head (it only feeds
        the head) or when its input layer is pruned; the last kept map's pixels then serve as the
        tokens, so ``forward_features`` stays (N, L, C), and the head is reset to pass them through.
        """
        take_indices, max_index = feature_levels(len(self.feature_info), indices)
        for name in ('layer1', 'layer2', 'layer3')[max_index:]:
            setattr(self, name, nn.Sequential())
        if max_index == 0:
            self.maxpool = nn.Identity()
        if prune_head or max_index < len(self.feature_info) - 1:
            self.vt = PixelTokens()
            self.num_tokens = 0
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> VT tokens (N, L, C_T)."""
        self._check_input(x)
        x = self.maxpool(self._stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        else:
            x = self.layer3(self.layer2(self.layer1(x)))
        return self.vt(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (N, L, C_T) -> logits (or pooled pre-logits, or the tokens when unpooled)."""
        x = global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=0)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_vt_resnet(variant: str, pretrained: bool = False, **kwargs) -> VTResNet:
    """Build through timm (pretrained cfg, features_only, in_chans adaptation, head reset)."""
    output_stride = kwargs.get('output_stride', 16)
    check_output_stride(output_stride)
    if kwargs.get('features_only'):
        check_out_indices(variant, kwargs.get('out_indices', DEFAULT_OUT_INDICES), output_stride)
    if pretrained:
        _check_weights_source(variant, kwargs)
    try:
        # no_rewrite=False: the hook extractor keeps only the modules up to layer3, not the VT stage and head
        # that its features never reach (parameters that would get no gradient)
        return build_model_with_cfg(
            VTResNet, variant, pretrained, feature_cfg=dict(out_indices=DEFAULT_OUT_INDICES, no_rewrite=False),
            pretrained_filter_fn=_check_pretrained_keys, **kwargs)
    except WEIGHT_LOAD_ERRORS as e:
        if not pretrained:
            raise
        raise RuntimeError(_weights_error(variant, kwargs, e)) from e


def _check_pretrained_keys(state_dict: Dict[str, torch.Tensor], model: VTResNet) -> Dict[str, torch.Tensor]:
    """Pretrained weights must name exactly the model's tensors: timm loads non-strictly when it drops
    the classifier for a new ``num_classes``, which would otherwise hide missing or foreign keys."""
    expected = model.state_dict().keys()
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise RuntimeError(f'{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys '
                           f'{unexpected[:3]} (is it a {type(model).__name__} with these settings?)')
    return state_dict


# what timm's pretrained loading raises for a missing, unreadable or mismatched weights source
WEIGHT_LOAD_ERRORS = (OSError, EOFError, RuntimeError, KeyError, pickle.UnpicklingError, SafetensorError,
                      EntryNotFoundError)


def _check_weights_source(variant: str, kwargs: Dict[str, Any]) -> None:
    """``pretrained=True`` needs a weights source (``hf_hub_id``, ``url``, ``file`` or ``state_dict``) in the
    resolved pretrained cfg; timm only logs a warning for a cfg without one, so fail here, saying so."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if cfg.has_weights or cfg.state_dict is not None:
        return
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    raise RuntimeError(
        f'{name}: no pretrained weights are published for this model (its pretrained cfg has no hf_hub_id, url or '
        f'file; timm.list_models(pretrained=True) lists only tags with weights; see the README\'s weights table). '
        f'Load your own with pretrained_cfg_overlay=dict(file=\'/path/to/model.safetensors\') or '
        f'\'local-dir:/path\', or use pretrained=False.')


def _weights_error(variant: str, kwargs: Dict[str, Any], error: Exception) -> str:
    """A message naming the weights source that failed, and why."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if cfg.file:
        folder = Path(cfg.file)
        weights = [str(folder / name) for name in ('model.safetensors', 'pytorch_model.bin') if (folder / name).is_file()]
        source = ' or '.join(weights) if folder.is_dir() and weights else cfg.file
    else:
        source = cfg.url or f'hf-hub:{cfg.hf_hub_id}'
    if isinstance(error, (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled)):
        return (f'{variant}.{cfg.tag}: no weights could be fetched from {source}: not published (see the README\'s '
                f'weights table), or offline and not in the Hugging Face cache. Load your own with '
                f'pretrained_cfg_overlay=dict(file=\'/path/to/model.safetensors\') or \'local-dir:/path\'. '
                f'({type(error).__name__}: {error})')
    return f'{variant}: pretrained weights {source} cannot be loaded into this model: {type(error).__name__}: {error}'


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'min_input_size': (3, 64, 64),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2006.03677',
        'paper_name': 'Visual Transformers: Token-based Image Representation and Processing for Computer Vision',
        'origin_url': 'https://arxiv.org/abs/2006.03677',
        **kwargs,
    }


HF_HUB_ORG = 'vt-timm'  # where published tags go: _cfg(hf_hub_id=f'{HF_HUB_ORG}/<arch>.<tag>')

# No weights are published yet: each architecture has one cfg without a weights source, under timm's tag for
# that ('untrained'), holding the preprocessing and adaptation fields, so timm.list_models(pretrained=True)
# lists none of them and pretrained=True raises. Publishing a tag is one entry here (timm makes the first tag
# with weights the default), e.g. 'vt_resnet18.in1k': _cfg(hf_hub_id=f'{HF_HUB_ORG}/vt_resnet18.in1k').
default_cfgs = generate_default_cfgs({
    f'{arch}.untrained': _cfg()
    for arch in ('vt_resnet18', 'vt_resnet34', 'vt_resnet50', 'vt_resnet101')
})


@register_model
def vt_resnet18(pretrained: bool = False, **kwargs) -> VTResNet:
    """VT-ResNet-18: ResNet-18 layer1-3, 256->512 lift, 2 VT modules (C 512, L 16, C_T 1024)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2), vt_chs=512, vt_depth=2)
    return _create_vt_resnet('vt_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def vt_resnet34(pretrained: bool = False, **kwargs) -> VTResNet:
    """VT-ResNet-34: ResNet-34 layer1-3, 256->512 lift, 3 VT modules (C 512, L 16, C_T 1024)."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6), vt_chs=512, vt_depth=3)
    return _create_vt_resnet('vt_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def vt_resnet50(pretrained: bool = False, **kwargs) -> VTResNet:
    """VT-ResNet-50: ResNet-50 layer1-3, 3 VT modules (C 1024, L 16, C_T 1024)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6), vt_chs=1024, vt_depth=3)
    return _create_vt_resnet('vt_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def vt_resnet101(pretrained: bool = False, **kwargs) -> VTResNet:
    """VT-ResNet-101: ResNet-101 layer1-3, 3 VT modules (C 1024, L 16, C_T 1024)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23), vt_chs=1024, vt_depth=3)
    return _create_vt_resnet('vt_resnet101', pretrained, **dict(model_args, **kwargs))
