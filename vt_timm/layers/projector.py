"""The projector: fuse the visual tokens back into the feature map (paper section 3.3, Table 7).

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)

    X_out = X + BN0(SOFTMAX_L(BN(X W_Q) BN(T W_K)^T / sqrt(d)) T W_V)
"""
import torch
import torch.nn as nn
from timm.layers import ConvNormAct, DropPath, use_fused_attn

from .attention import _check_num_heads, _merge_heads, _softmax, _split_heads
from .norms import TokenLinear, TokenwiseLinear, bn_affine

__all__ = ['Projector']


class Projector(nn.Module):
    """Projector: every pixel attends over the tokens and adds what it reads.

    ``X_out = X + BN0(SOFTMAX_L(BN(X W_Q) BN(T W_K)^T / sqrt(d)) T W_V)``; W_V (C_T -> C) exists only
    where the widths differ. The BNs on W_Q and W_K fix the scale of the logits; the closing BN starts
    at zero (``zero_init_last``).

    The L x HW attention weights are computed explicitly (they are tiny) rather than through
    ``F.scaled_dot_product_attention``: pixel-major weights (N, HW, L) read the tokens straight
    into the channels-last layout of the map. Training, or ``fused_attn=False``, runs the equation
    as written. The inference path (``fused_attn``, the default) re-associates it exactly
    (docs/benchmarks.md): the query BN folds into W_Q and the logits are ``X (W_Q' K^T) + b K^T``
    (``inference_logits``), so the (N, HW, d) query is never built; the closing BN, an affine map
    per channel, folds into the token values (every row of the weights sums to 1).
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
        self.value = TokenwiseLinear(token_chs, in_chs, bias=False, **dd) if token_chs != in_chs else nn.Identity()
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

    def inference_logits(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``BN(X W_Q) K^T`` per head for an inference BN and the scaled keys K, re-associated: with the BN as
        ``X W_Q' + b``, ``X (W_Q' K^T) + b K^T``. ``K W_Q'`` is one GEMM per head over the batch's N L tokens
        (N L d C MACs instead of the query's N HW C d), then one pixel GEMM per image; (N, HW, num_heads * L).
        W_Q is read before W_K, as in ``attention_weights``, so that traced graphs list the parameters alike."""
        h = self.num_heads
        bn = self.query.bn
        scale, shift = bn_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        w_q = self.query.conv.weight.flatten(1) * scale.unsqueeze(1)  # (d, C)
        key = self.key(tokens) * self.scale
        N, L, d = key.shape
        w_q = w_q.reshape(h, d // h, -1)  # (h, d/h, C)
        key_heads = key.reshape(N * L, h, d // h).transpose(0, 1)  # (h, N L, d/h)
        filters = torch.bmm(key_heads, w_q).reshape(h, N, L, -1).transpose(0, 1).reshape(N, h * L, -1)
        bias = (key.reshape(N, L, h, d // h) * shift.reshape(h, d // h)).sum(-1).transpose(1, 2)
        return torch.baddbmm(bias.reshape(N, 1, h * L), x.flatten(2).transpose(1, 2), filters.transpose(1, 2))

    def _folded_norm(self, value: torch.Tensor) -> torch.Tensor:
        """``BN(A V) = A BN(V)`` for an inference BN and weights A whose rows sum to 1."""
        bn = self.norm
        scale, shift = bn_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        return value * scale + shift

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        if self.training or self.norm.training or self.query.bn.training or not self.fused_attn:
            weights = self.attention_weights(x, tokens)
            value = self.value(tokens)  # (N, L, C)
            read = _merge_heads(weights @ _split_heads(value, self.num_heads), self.num_heads)
            read = read.reshape(N, H, W, C).permute(0, 3, 1, 2)  # (N, C, H, W), channels-last strides
            return x + self.drop_path(self.norm(read))
        L, h = tokens.shape[1], self.num_heads
        logits = self.inference_logits(x, tokens).reshape(N, H * W, h, L)
        weights = _softmax(logits, dim=-1).transpose(1, 2).reshape(N * h, H * W, L)
        value = self._folded_norm(self.value(tokens))  # (N, L, C)
        read = _merge_heads(torch.bmm(weights, _split_heads(value, h)), h)
        out = read.add_(x.flatten(2).transpose(1, 2))  # (N, HW, C)
        return out.reshape(N, H, W, C).permute(0, 3, 1, 2)
