"""The VT module (tokenizer -> relation -> projector) and the VT stage that replaces a ResNet's last
stage (paper section 4.1), with the initialisation of every VT map.

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, lecun_normal_
from timm.models import checkpoint

from .norms import SpatialLogitNorm
from .projector import Projector
from .relations import TokenGraphConv, create_relation
from .tokenizers import FIRST_TOKENIZERS, LATER_TOKENIZERS, create_tokenizer

__all__ = ['VTBlock', 'VTStage', 'init_vt_weights']


class VTBlock(nn.Module):
    """One visual-transformer module: tokenizer -> token relation -> (optional) projector.

    ``tokenizer`` and ``relation`` name the variants of ``create_tokenizer`` / ``create_relation``;
    the relation keeps the attribute name ``transformer`` whatever its kind ('none': identity).
    """

    def __init__(
            self,
            in_chs: int,
            token_chs: int = 1024,
            num_tokens: int = 16,
            tokenizer: str = 'filter',
            relation: str = 'transformer',
            project: bool = True,
            qk_dim: int = 256,
            num_heads: int = 1,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.tokenizer = create_tokenizer(tokenizer, in_chs, token_chs, num_tokens, **dd)
        self.transformer = create_relation(relation, token_chs, num_tokens, qk_dim, num_heads, drop_path, **dd)
        self.projector = Projector(in_chs, token_chs, qk_dim, num_heads, drop_path, **dd) if project else None

    def forward(
            self,
            x: torch.Tensor,
            tokens: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Map (N, C, H, W) and previous tokens (N, L, C_T) or None -> (new map, new tokens)."""
        tokens = self.transformer(self.tokenizer(x, tokens))
        if self.projector is not None:
            x = self.projector(x, tokens)
        return x, tokens



class VTStage(nn.Module):
    """A chain of VT modules over one feature map: by default filter tokenizer first, recurrent after.

    The last module has no projector: its tokens are the stage output and a projected map would
    feed nothing. An optional 1x1 conv + BN + ReLU lifts the input map to the VT width first.
    The paper's ablations (Tables 3-7) are arguments: ``first_tokenizer`` (FIRST_TOKENIZERS),
    ``tokenizer`` of the later modules (LATER_TOKENIZERS), ``relation`` (RELATIONS) and
    ``projector=False``, where every module tokenizes the same (lifted) map and the last module's
    tokens are still the output.
    """

    def __init__(
            self,
            in_chs: int,
            chs: int,
            depth: int,
            token_chs: int = 1024,
            num_tokens: int = 16,
            qk_dim: int = 256,
            num_heads: int = 1,
            first_tokenizer: str = 'filter',
            tokenizer: str = 'recurrent',
            relation: str = 'transformer',
            projector: bool = True,
            drop_path_rates: Optional[List[float]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if first_tokenizer not in FIRST_TOKENIZERS:
            raise ValueError(f'first_tokenizer must be one of {FIRST_TOKENIZERS}, got {first_tokenizer!r}')
        if tokenizer not in LATER_TOKENIZERS:
            raise ValueError(f'tokenizer must be one of {LATER_TOKENIZERS}, got {tokenizer!r}')
        if not projector and tokenizer != 'recurrent' and depth > 1:
            raise ValueError(
                f"projector=False needs tokenizer='recurrent': with {tokenizer!r} tokenizers the tokens of "
                f"every module but the last would reach neither the map nor the next module")
        if num_tokens < 2:
            raise ValueError(f'num_tokens={num_tokens}: a VT stage needs at least 2 visual tokens')
        drop_path_rates = drop_path_rates or [0.] * depth
        self.num_tokens = num_tokens
        self.grad_checkpointing = False
        self.lift = ConvNormAct(in_chs, chs, 1, **dd) if in_chs != chs else nn.Identity()
        self.blocks = nn.ModuleList([
            VTBlock(
                chs,
                token_chs,
                num_tokens,
                tokenizer=tokenizer if i > 0 else first_tokenizer,
                relation=relation,
                project=projector and i < depth - 1,
                qk_dim=qk_dim,
                num_heads=num_heads,
                drop_path=drop_path_rates[i],
                **dd,
            )
            for i in range(depth)
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


def init_vt_weights(module: nn.Module) -> None:
    """Initialise every VT map in ``module``: LeCun normal (variance 1 / fan-in) for the linear maps and
    1x1 convs, the identity for the graph convolutions' adjacency A_g, and the tokenizers' temperatures
    at ``sqrt(2 ln L)`` (``SpatialLogitNorm``).

    Every map of a VT module is followed by a BatchNorm, directly or through the logits it feeds, so its
    scale sets no softmax's sharpness; fan-in scale keeps each BN's inputs near the unit variance its
    running statistics start at, so that a model in eval mode is right from the first updates.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            lecun_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, TokenGraphConv):
            nn.init.eye_(m.adjacency)
        elif isinstance(m, SpatialLogitNorm):
            m.reset_temperature()
