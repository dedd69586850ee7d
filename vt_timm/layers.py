"""Visual Transformer (VT) building blocks.

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)

A VT module turns a feature map X (N, C, H, W) into L visual tokens T (N, L, C_T), relates the
tokens with a transformer and fuses them back into the map (v4 equations; the scalings, norms and
C <-> C_T maps added to them are the choices listed in docs/architecture.md):

    tokenizer    T = SOFTMAX_HW(X W_A)^T X W_V                         (filter-based, first module)
                 T = SOFTMAX_HW(X (T_in W_T->R)^T / sqrt(C))^T X W_V   (recurrent, later modules)
    transformer  T' = T + SOFTMAX_L((T K)(T Q)^T / sqrt(d)) T;  T_out = T' + BN(ReLU(BN(T' F1)) F2)
    projector    X_out = X + BN(SOFTMAX_L((X W_Q)(T W_K)^T / sqrt(d)) T W_V)

W_V maps C <-> C_T and exists only where the two widths differ. Tokens are kept token-major
(N, L, C), as in timm's other token models.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct, DropPath, trunc_normal_, use_fused_attn
from timm.models import checkpoint

__all__ = [
    'token_attention', 'TokenLinear', 'FilterTokenizer', 'RecurrentTokenizer', 'TokenTransformer',
    'Projector', 'VTBlock', 'VTStage', 'init_vt_weights',
]


def token_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        num_heads: int = 1,
        fused: bool = True,
) -> torch.Tensor:
    """SOFTMAX over the keys of (query key^T) / sqrt(d), applied to value.

    Args:
        query: (N, M, D) rows that attend.
        key: (N, L, D) one row per token.
        value: (N, L, Dv) one row per token.
        num_heads: split D and Dv into this many independent heads.
        fused: use ``F.scaled_dot_product_attention``; False runs the explicit reference math.

    Returns:
        (N, M, Dv) attention-weighted sums of the value rows.
    """
    N, M, D = query.shape
    L, Dv = value.shape[1], value.shape[2]
    q = query.reshape(N, M, num_heads, D // num_heads).transpose(1, 2)
    k = key.reshape(N, L, num_heads, D // num_heads).transpose(1, 2)
    v = value.reshape(N, L, num_heads, Dv // num_heads).transpose(1, 2)
    if fused:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        attn = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
        out = attn.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(N, M, Dv)


def _check_num_heads(num_heads: int, **widths: int) -> None:
    """Heads split every attention width evenly."""
    uneven = {name: width for name, width in widths.items() if width % num_heads}
    if num_heads < 1 or uneven:
        raise ValueError(f'num_heads={num_heads} must be >= 1 and divide {widths}')


class TokenLinear(nn.Module):
    """Token-wise linear map followed by BatchNorm over the channel axis of (N, L, C) tokens."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc = nn.Linear(in_features, out_features, bias=False, **dd)
        self.bn = nn.BatchNorm1d(out_features, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        return self.bn(x.flatten(0, 1)).reshape(x.shape)


def _spatial_softmax_gather(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T = SOFTMAX_HW(logits)^T X for logits (N, L, HW) and map x (N, C, H, W) -> (N, L, C)."""
    return logits.softmax(dim=-1) @ x.flatten(2).transpose(1, 2)


class FilterTokenizer(nn.Module):
    """Filter-based tokenizer: a 1x1 conv W_A gives one spatial attention per token.

    ``T = SOFTMAX_HW(X W_A)^T X W_V``; the token-wise W_V (C -> C_T, no norm) exists only where the
    widths differ. ``init_vt_weights`` gives W_A fan-in scale, so the spatial logits start at unit
    scale and the L tokens differ from the first step.
    """

    def __init__(
            self,
            in_chs: int,
            token_chs: int,
            num_tokens: int = 16,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.attn = nn.Conv2d(in_chs, num_tokens, 1, bias=False, **dd)  # W_A
        self.value = nn.Linear(in_chs, token_chs, bias=False, **dd) if in_chs != token_chs else nn.Identity()

    def spatial_logits(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-softmax spatial attention (N, L, HW); ``tokens`` is unused (fixed filters)."""
        return self.attn(x).flatten(2)

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.value(_spatial_softmax_gather(self.spatial_logits(x, tokens), x))


class RecurrentTokenizer(nn.Module):
    """Recurrent tokenizer: the previous module's tokens become this module's filters.

    ``W_R = T_in W_T->R``; ``T = SOFTMAX_HW(X W_R^T / sqrt(C))^T X W_V``, W_V as in the filter tokenizer.
    """

    def __init__(
            self,
            in_chs: int,
            token_chs: int,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.scale = in_chs ** -0.5
        self.token_to_filter = nn.Linear(token_chs, in_chs, bias=False, **dd)  # W_T->R
        self.value = nn.Linear(in_chs, token_chs, bias=False, **dd) if in_chs != token_chs else nn.Identity()

    def spatial_logits(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-softmax spatial attention (N, L, HW) computed from the previous tokens."""
        assert tokens is not None, 'RecurrentTokenizer needs the previous VT module\'s tokens'
        filters = self.token_to_filter(tokens)  # (N, L, C)
        return (filters * self.scale) @ x.flatten(2)

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.value(_spatial_softmax_gather(self.spatial_logits(x, tokens), x))


class TokenTransformer(nn.Module):
    """Transformer over the L tokens (no positional encoding, as in v4).

    ``T' = T + SOFTMAX_L((T K)(T Q)^T / sqrt(d)) T`` (values are the tokens themselves), then
    ``T_out = T' + BN(ReLU(BN(T' F1)) F2)`` with F1, F2 square (C_T x C_T) token-wise maps.
    """

    def __init__(
            self,
            dim: int,
            qk_dim: int = 256,
            num_heads: int = 1,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        _check_num_heads(num_heads, qk_dim=qk_dim, dim=dim)
        self.num_heads = num_heads
        self.fused_attn = use_fused_attn()
        self.key = nn.Linear(dim, qk_dim, bias=False, **dd)  # K
        self.query = nn.Linear(dim, qk_dim, bias=False, **dd)  # Q
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.ffn_in = TokenLinear(dim, dim, **dd)  # F1
        self.ffn_act = nn.ReLU(inplace=True)
        self.ffn_out = TokenLinear(dim, dim, **dd)  # F2
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the BN after F2 so the FFN branch starts as the identity (timm's ResNet convention)."""
        nn.init.zeros_(self.ffn_out.bn.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # row i of (T K)(T Q)^T holds token i's affinities to every token j: T K plays the query role
        attended = token_attention(self.key(tokens), self.query(tokens), tokens, self.num_heads, self.fused_attn)
        tokens = tokens + self.drop_path1(attended)
        return tokens + self.drop_path2(self.ffn_out(self.ffn_act(self.ffn_in(tokens))))


class Projector(nn.Module):
    """Projector: every pixel attends over the tokens and adds what it reads.

    ``X_out = X + BN(SOFTMAX_L((X W_Q)(T W_K)^T / sqrt(d)) T W_V)``; W_V (C_T -> C) exists only where the
    widths differ.
    """

    def __init__(
            self,
            in_chs: int,
            token_chs: int,
            qk_dim: int = 256,
            num_heads: int = 1,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        _check_num_heads(num_heads, qk_dim=qk_dim, in_chs=in_chs)
        self.num_heads = num_heads
        self.fused_attn = use_fused_attn()
        self.query = nn.Conv2d(in_chs, qk_dim, 1, bias=False, **dd)  # W_Q, on pixels
        self.key = nn.Linear(token_chs, qk_dim, bias=False, **dd)  # W_K, on tokens
        self.value = nn.Linear(token_chs, in_chs, bias=False, **dd) if token_chs != in_chs else nn.Identity()
        self.norm = nn.BatchNorm2d(in_chs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the closing BN so the projector starts as the identity."""
        nn.init.zeros_(self.norm.weight)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, qk_dim)
        fused = token_attention(query, self.key(tokens), self.value(tokens), self.num_heads, self.fused_attn)
        fused = fused.transpose(1, 2).reshape(N, C, H, W)
        return x + self.drop_path(self.norm(fused))


class VTBlock(nn.Module):
    """One visual-transformer module: tokenizer -> transformer -> (optional) projector."""

    def __init__(
            self,
            in_chs: int,
            token_chs: int = 1024,
            num_tokens: int = 16,
            recurrent: bool = False,
            project: bool = True,
            qk_dim: int = 256,
            num_heads: int = 1,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if recurrent:
            self.tokenizer = RecurrentTokenizer(in_chs, token_chs, **dd)
        else:
            self.tokenizer = FilterTokenizer(in_chs, token_chs, num_tokens, **dd)
        self.transformer = TokenTransformer(token_chs, qk_dim, num_heads, drop_path, **dd)
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
    """A chain of VT modules over one feature map: filter tokenizer first, recurrent after.

    The last module has no projector: its tokens are the stage output and a projected map would
    feed nothing. An optional 1x1 conv + BN + ReLU lifts the input map to the VT width first.
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
            drop_path_rates: Optional[List[float]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        drop_path_rates = drop_path_rates or [0.] * depth
        self.num_tokens = num_tokens
        self.grad_checkpointing = False
        self.lift = ConvNormAct(in_chs, chs, 1, **dd) if in_chs != chs else nn.Identity()
        self.blocks = nn.ModuleList([
            VTBlock(
                chs,
                token_chs,
                num_tokens,
                recurrent=i > 0,
                project=i < depth - 1,
                qk_dim=qk_dim,
                num_heads=num_heads,
                drop_path=drop_path_rates[i],
                **dd,
            )
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C_in, H, W) with at least L pixels -> tokens (N, L, C_T) of the last module."""
        x = self.lift(x)
        tokens: Optional[torch.Tensor] = None
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, tokens = checkpoint(block, x, tokens)
            else:
                x, tokens = block(x, tokens)
        assert tokens is not None
        return tokens


def init_vt_weights(module: nn.Module) -> None:
    """Initialise every VT map in ``module``: truncated normal (std .02, as timm's ViT), except the
    filter tokenizers' W_A, which gets fan-in scale (std 1/sqrt(C)).

    With W_A at std .02 the spatial logits X W_A would be ~100x below unit scale: every token's
    softmax over the pixels would be uniform, all L tokens the map's mean, and the recurrent
    tokenizers fed by them collapsed too.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, FilterTokenizer):
            nn.init.normal_(m.attn.weight, std=m.attn.in_channels ** -0.5)
