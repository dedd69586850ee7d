"""The VT module (tokenizer -> relation -> projector), its settings (``VTCfg``) and the VT stage that
replaces a ResNet's last stage (paper section 4.1).

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct, use_fused_attn
from timm.models import checkpoint

from .norms import bn_affine
from .projector import Projector
from .relations import RELATIONS, create_relation
from .tokenizers import FIRST_TOKENIZERS, LATER_TOKENIZERS, create_tokenizer

__all__ = ['VTCfg', 'VTBlock', 'VTStage', 'MapLift', 'check_count']


def check_count(name: str, value: Any, least: int, unit: str) -> None:
    """An integer keyword of at least ``least`` (``unit`` says what it counts), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f'{name}={value!r}: expected an integer of at least {least} ({unit})')


@dataclass(frozen=True)
class VTCfg:
    """What every module of a VT stage shares (paper Table 11), and the ablations of Tables 3-7.

    Args:
        token_chs: token width C_T.
        num_tokens: number of visual tokens L (at least 2).
        qk_dim: width of the attention keys and queries in the transformer and projector.
        num_heads: attention heads of the transformer and projector.
        first_tokenizer: tokenizer of the first module: 'filter' (paper), 'clustering' or 'pooling' (Table 3).
        tokenizer: tokenizer of the later modules: 'recurrent' (paper) or 'filter' (Table 4).
        relation: token relation: 'transformer' (paper), 'graphconv' or 'none' (Table 5).
        projector: False removes every projector (Table 7).
    """
    token_chs: int = 1024
    num_tokens: int = 16
    qk_dim: int = 256
    num_heads: int = 1
    first_tokenizer: str = 'filter'
    tokenizer: str = 'recurrent'
    relation: str = 'transformer'
    projector: bool = True

    def __post_init__(self):
        for name, least, unit in (('token_chs', 1, 'channels'), ('num_tokens', 2, 'visual tokens'),
                                  ('qk_dim', 1, 'channels'), ('num_heads', 1, 'heads')):
            check_count(name, getattr(self, name), least, unit)
        for name, kinds in (('first_tokenizer', FIRST_TOKENIZERS), ('tokenizer', LATER_TOKENIZERS),
                            ('relation', RELATIONS)):
            if getattr(self, name) not in kinds:
                raise ValueError(f'{name} must be one of {kinds}, got {getattr(self, name)!r}')


class VTBlock(nn.Module):
    """One visual-transformer module: tokenizer -> token relation -> (optional) projector.

    ``tokenizer`` names this module's tokenizer (``create_tokenizer``); ``cfg`` gives the widths, tokens,
    heads and the relation (``create_relation``; 'none' is the identity).
    """

    def __init__(
            self,
            in_chs: int,
            cfg: VTCfg = VTCfg(),
            tokenizer: str = 'filter',
            projector: bool = True,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.tokenizer = create_tokenizer(tokenizer, in_chs, cfg.token_chs, cfg.num_tokens, **dd)
        self.relation = create_relation(
            cfg.relation, cfg.token_chs, cfg.num_tokens, cfg.qk_dim, cfg.num_heads, drop_path, **dd)
        self.projector = Projector(
            in_chs, cfg.token_chs, cfg.qk_dim, cfg.num_heads, drop_path, **dd) if projector else None
        self.register_load_state_dict_pre_hook(_rename_relation_keys)

    def forward(
            self,
            x: torch.Tensor,
            tokens: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Map (N, C, H, W) and previous tokens (N, L, C_T) or None -> (new map, new tokens)."""
        tokens = self.relation(self.tokenizer(x, tokens))
        if self.projector is not None:
            x = self.projector(x, tokens)
        return x, tokens


def _rename_relation_keys(module: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints written before the relation's attribute was renamed call it ``transformer``: load them."""
    old = prefix + 'transformer.'
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + 'relation.' + key[len(old):]] = state_dict.pop(key)


def _check_heads(cfg: VTCfg, vt_chs: int, vt_depth: int) -> None:
    """``num_heads`` splits every width its attention splits, where the stage has them: qk_dim and token_chs
    (transformer relation), qk_dim and the map width vt_chs (projectors); else a ValueError naming the divisors."""
    widths = {}
    if cfg.relation == 'transformer':
        widths.update(qk_dim=cfg.qk_dim, token_chs=cfg.token_chs)
    if cfg.projector and vt_depth > 1:
        widths.update(qk_dim=cfg.qk_dim, vt_chs=vt_chs)
    if any(width % cfg.num_heads for width in widths.values()):
        common = math.gcd(*widths.values())
        divisors = [d for d in range(1, common + 1) if common % d == 0]
        raise ValueError(f'num_heads={cfg.num_heads}: expected a divisor of '
                         f'{", ".join(f"{k}={v}" for k, v in widths.items())} (each head takes an equal slice): '
                         f'one of {divisors[:12]}{" ..." * (len(divisors) > 12)}')


class MapLift(ConvNormAct):
    """timm's ``ConvNormAct`` (1x1 conv + BN + ReLU) that lifts the stage's input map to the VT width.

    In inference (``fused_attn``, the default) the BN folds into the conv's weight and bias, so the
    lifted map is written once by the conv and rectified in place; ``fused_attn=False`` or training
    runs conv, BN and ReLU one by one.
    """

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__(in_chs, out_chs, 1, device=device, dtype=dtype)
        self.fused_attn = use_fused_attn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_attn and not self.training and not self.bn.training:
            bn = self.bn
            scale, shift = bn_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
            return bn.act(bn.drop(F.conv2d(x, self.conv.weight * scale.reshape(-1, 1, 1, 1), shift)))
        return self.bn(self.conv(x))


class VTStage(nn.Module):
    """A chain of VT modules over one feature map: by default filter tokenizer first, recurrent after.

    The last module has no projector: its tokens are the stage output and a projected map would
    feed nothing. An optional 1x1 conv + BN + ReLU lifts the input map to the VT width first.
    ``cfg`` (a ``VTCfg``, or its fields as keywords) holds what the modules share and the paper's
    ablations; with ``projector=False`` every module tokenizes the same (lifted) map and the last
    module's tokens are still the output.
    """

    def __init__(
            self,
            in_chs: int,
            vt_chs: int,
            vt_depth: int,
            cfg: Optional[VTCfg] = None,
            drop_path_rates: Optional[List[float]] = None,
            device=None,
            dtype=None,
            **cfg_kwargs: Any,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if cfg is not None and cfg_kwargs:
            raise ValueError(f'pass either cfg or its fields as keywords, not both (got {sorted(cfg_kwargs)})')
        cfg = cfg or VTCfg(**cfg_kwargs)
        check_count('vt_depth', vt_depth, 1, 'VT modules')
        _check_heads(cfg, vt_chs, vt_depth)
        if not cfg.projector and cfg.tokenizer != 'recurrent' and vt_depth > 1:
            raise ValueError(
                f"projector=False needs tokenizer='recurrent': with {cfg.tokenizer!r} tokenizers the tokens of "
                f"every module but the last would reach neither the map nor the next module")
        drop_path_rates = drop_path_rates or [0.] * vt_depth
        self.num_tokens = cfg.num_tokens
        self.grad_checkpointing = False
        self.lift = MapLift(in_chs, vt_chs, **dd) if in_chs != vt_chs else nn.Identity()
        self.blocks = nn.ModuleList([
            VTBlock(
                vt_chs,
                cfg,
                tokenizer=cfg.tokenizer if i > 0 else cfg.first_tokenizer,
                projector=cfg.projector and i < vt_depth - 1,
                drop_path=drop_path_rates[i],
                **dd,
            )
            for i in range(vt_depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C_in, H, W) with at least L pixels -> tokens (N, L, C_T) of the last module."""
        # channels-last: the 1x1 convs run faster (oneDNN) and the pixel rows (N, HW, C) that the
        # tokenizers gather and the projectors write are contiguous
        x = self.lift(x.contiguous(memory_format=torch.channels_last))
        tokens: Optional[torch.Tensor] = None
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, tokens = checkpoint(block, x, tokens)
            else:
                x, tokens = block(x, tokens)
        assert tokens is not None
        return tokens
