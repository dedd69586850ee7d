"""The projector: fuse the visual tokens back into the feature map (paper section 3.3, Table 7).

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)

    X_out = X + BN0(SOFTMAX_L(BN(X W_Q) BN(T W_K)^T / sqrt(d)) T W_V)
"""
import torch
import torch.nn as nn
from timm.layers import ConvNormAct, DropPath, use_fused_attn

from .attention import _check_num_heads, _merge_heads, _softmax, _split_heads
from .norms import TokenLinear

__all__ = ['Projector']


class Projector(nn.Module):
    """Projector: every pixel attends over the tokens and adds what it reads.

    ``X_out = X + BN0(SOFTMAX_L(BN(X W_Q) BN(T W_K)^T / sqrt(d)) T W_V)``; W_V (C_T -> C) exists only
    where the widths differ. The BNs on W_Q and W_K fix the scale of the logits; the closing BN starts
    at zero (``zero_init_last``).

    The L x HW attention weights are computed explicitly (they are tiny) rather than through
    ``F.scaled_dot_product_attention``: pixel-major weights (N, HW, L) read the tokens straight
    into the channels-last layout of the map. The fused inference path (``fused_attn``) folds the
    BN, an affine map per channel, into the token values (every row of the weights sums to 1), so
    that the read and the residual add are one ``baddbmm`` and the map is written once
    (docs/benchmarks.md); training, or ``fused_attn=False``, runs read, BN and add one by one.
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
        self.scale = (qk_dim // num_heads) ** -0.5
        self.fused_attn = use_fused_attn()
        self.query = ConvNormAct(in_chs, qk_dim, 1, apply_act=False, **dd)  # W_Q + BN, on pixels
        self.key = TokenLinear(token_chs, qk_dim, **dd)  # W_K + BN, on tokens
        self.value = nn.Linear(token_chs, in_chs, bias=False, **dd) if token_chs != in_chs else nn.Identity()
        self.norm = nn.BatchNorm2d(in_chs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the closing BN so the projector starts as the identity."""
        nn.init.zeros_(self.norm.weight)

    def attention_weights(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``SOFTMAX_L(BN(X W_Q) BN(T W_K)^T / sqrt(d))`` per head: (N * num_heads, HW, L), rows sum to 1."""
        query = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, d): contiguous for a channels-last map
        key = self.key(tokens) * self.scale
        logits = _split_heads(query, self.num_heads) @ _split_heads(key, self.num_heads).transpose(1, 2)
        return _softmax(logits, dim=-1)

    def _folded_norm(self, value: torch.Tensor) -> torch.Tensor:
        """``BN(A V) = A BN(V)`` for an inference BN and weights A whose rows sum to 1."""
        mean, var = self.norm.running_mean, self.norm.running_var
        assert mean is not None and var is not None, 'the folded projector BN needs running statistics'
        scale = self.norm.weight * torch.rsqrt(var + self.norm.eps)
        return value * scale + (self.norm.bias - mean * scale)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        weights = self.attention_weights(x, tokens)
        value = self.value(tokens)  # (N, L, C)
        if self.training or self.norm.training or not self.fused_attn:
            read = _merge_heads(weights @ _split_heads(value, self.num_heads), self.num_heads)
            read = read.reshape(N, H, W, C).permute(0, 3, 1, 2)  # (N, C, H, W), channels-last strides
            return x + self.drop_path(self.norm(read))
        pixels = _split_heads(x.flatten(2).transpose(1, 2), self.num_heads)
        out = torch.baddbmm(pixels, weights, _split_heads(self._folded_norm(value), self.num_heads))
        return _merge_heads(out, self.num_heads).reshape(N, H, W, C).permute(0, 3, 1, 2)
