"""Attention over visual tokens: scaled dot-product attention with heads, and its head bookkeeping.

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)
"""
import torch
import torch.nn.functional as F

__all__ = ['token_attention']


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
    # 4D (N, heads, rows, width): the ONNX exporter's SDPA accepts no other rank
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


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, M, D) -> (N * num_heads, M, D / num_heads), head h holding channel slice h (a view for one head)."""
    N, M, D = x.shape
    return x.reshape(N, M, num_heads, D // num_heads).transpose(1, 2).reshape(N * num_heads, M, D // num_heads)


def _merge_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of ``_split_heads``: (N * num_heads, M, D / num_heads) -> (N, M, D)."""
    NH, M, Dh = x.shape
    return x.reshape(NH // num_heads, num_heads, M, Dh).transpose(1, 2).reshape(NH // num_heads, M, num_heads * Dh)


def _softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax computed in at least float32 (AMP-safe for bfloat16/float16 logits), in the input's dtype."""
    return logits.softmax(dim, dtype=torch.promote_types(logits.dtype, torch.float32)).to(logits.dtype)
