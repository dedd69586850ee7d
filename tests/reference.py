"""Reference transcriptions of the VT equations for the tests, and the shared test data.

The ``ref_*`` helpers never call the module code under test: softmax is written as exp / sum,
BatchNorm as (x - mean) / sqrt(var + eps) * weight + bias, products as einsum; they read the
module's own weights. ``VARIANTS`` are the paper's ablation variants as model keywords;
``calibrated_model`` is a model as after training, for tests of whole models.
"""
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import timm
import torch
import torch.nn as nn

from vt_timm.layers import (
    FilterTokenizer, Projector, RecurrentTokenizer, SpatialLogitNorm, TokenLinear, TokenTransformer,
)

N = 2  # batch
C = 8  # feature-map channels
L = 4  # tokens
QK = 6  # attention width of K/Q (divisible by 1 and 2 heads)
MAP_SIZES = [(5, 5), (3, 5)]  # square and non-square feature maps
TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-5, atol=1e-5)

# the paper's ablation variants (Tables 3-7) and other token counts, as model keywords
VARIANTS: Dict[str, Dict] = {
    'pooling': dict(first_tokenizer='pooling'),
    'clustering': dict(first_tokenizer='clustering'),
    'no_recurrent': dict(tokenizer='filter'),
    'graphconv': dict(relation='graphconv'),
    'no_relation': dict(relation='none'),
    'no_projector': dict(projector=False),
    'L32': dict(num_tokens=32),
    'L64': dict(num_tokens=64),
}


def randomize_bn_(module: nn.Module, keep_affine: Iterable[nn.Module] = ()) -> nn.Module:
    """Give every BatchNorm in ``module`` non-trivial running stats and affine params (in place).

    BNs listed in ``keep_affine`` get new running stats but keep their weight / bias as they are.
    """
    keep = {id(m) for m in keep_affine}
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.rand_like(m.running_var) * 1.5 + 0.5)
                if id(m) not in keep:
                    m.weight.copy_(torch.randn_like(m.weight) * 0.5 + 1.)
                    m.bias.copy_(torch.randn_like(m.bias) * 0.5)
    return module


def prepared(module: nn.Module, fused: Optional[bool] = None) -> nn.Module:
    """float64, random BN stats / affine, eval mode; optionally force the attention path."""
    module = randomize_bn_(module.double()).eval()
    if fused is not None:
        for m in module.modules():
            if hasattr(m, 'fused_attn'):
                m.fused_attn = fused
    return module


def rand_map(h: int, w: int, c: int = C) -> torch.Tensor:
    return torch.randn(N, c, h, w, dtype=torch.float64)


def rand_tokens(c: int, l: int = L) -> torch.Tensor:
    return torch.randn(N, l, c, dtype=torch.float64)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> X of the paper, (N, HW, C)."""
    return x.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# reference transcriptions of the equations
# --------------------------------------------------------------------------------------------

def ref_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(logits - logits.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def ref_bn(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, channel_dim: int) -> torch.Tensor:
    """Eval-mode BatchNorm along ``channel_dim`` from its running stats and affine params."""
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def ref_token_linear(t: torch.Tensor, tl: TokenLinear) -> torch.Tensor:
    """Token-wise ``t W^T`` (no bias) then BN over channels; t is (N, L, C_in)."""
    return ref_bn(torch.einsum('nlc,dc->nld', t, tl.fc.weight), tl.norm.bn, channel_dim=2)


def ref_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int = 1,
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Per head h: softmax_keys(q_h k_h^T / sqrt(d_h)) v_h, heads concatenated along channels.

    Returns the output (N, M, Dv) and the list of per-head attention matrices (N, M, L).
    """
    dq, dv = q.shape[-1] // num_heads, v.shape[-1] // num_heads
    outs, attns = [], []
    for h in range(num_heads):
        qh, kh = q[..., h * dq:(h + 1) * dq], k[..., h * dq:(h + 1) * dq]
        vh = v[..., h * dv:(h + 1) * dv]
        attn = ref_softmax(torch.einsum('nmd,nld->nml', qh, kh) / dq ** 0.5, dim=-1)
        outs.append(torch.einsum('nml,nlc->nmc', attn, vh))
        attns.append(attn)
    return torch.cat(outs, dim=-1), attns


def ref_spatial_tokens(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``SOFTMAX_HW(logits)^T X``: logits (N, HW, L) over pixels -> gathered tokens (N, L, C)."""
    a = ref_softmax(logits, dim=1)  # spatial attention A, one distribution over pixels per token
    return torch.einsum('npl,npc->nlc', a, pixels(x))


def ref_logit_norm(logits: torch.Tensor, norm: SpatialLogitNorm) -> torch.Tensor:
    """``S(Z) = BN_L(Z - mean_L Z)`` for logits (N, HW, L): centred across tokens, then BN per token."""
    return ref_bn(logits - logits.mean(dim=2, keepdim=True), norm.norm, channel_dim=2)


def ref_value_map(t: torch.Tensor, tokenizer: nn.Module) -> torch.Tensor:
    """The tokenizer's W_V (C -> C_T, where the widths differ) and the BN on its tokens."""
    value = tokenizer.value
    if isinstance(value, TokenLinear):
        return ref_token_linear(t, value)
    return ref_bn(t, value.bn, channel_dim=2)


def ref_filter_logits(tok: FilterTokenizer, x: torch.Tensor) -> torch.Tensor:
    """``S(X W_A)`` as (N, HW, L)."""
    w_a = tok.attn.weight[:, :, 0, 0].T  # (C, L)
    return ref_logit_norm(torch.einsum('npc,cl->npl', pixels(x), w_a), tok.logit_norm)


def ref_filter_tokenizer(tok: FilterTokenizer, x: torch.Tensor) -> torch.Tensor:
    """``T = BN(SOFTMAX_HW(S(X W_A))^T X W_V)``."""
    return ref_value_map(ref_spatial_tokens(x, ref_filter_logits(tok, x)), tok)


def ref_recurrent_tokenizer(tok: RecurrentTokenizer, x: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
    """``W_R = T_in W_T->R``; ``T = BN(SOFTMAX_HW(S(X W_R^T / sqrt(C)))^T X W_V)``."""
    w_r = torch.einsum('nlt,ct->nlc', t_in, tok.token_to_filter.weight) / x.shape[1] ** 0.5  # (N, L, C)
    logits = ref_logit_norm(torch.einsum('npc,nlc->npl', pixels(x), w_r), tok.logit_norm)
    return ref_value_map(ref_spatial_tokens(x, logits), tok)


def ref_transformer_attention(tr: TokenTransformer, t: torch.Tensor) -> torch.Tensor:
    """``T' = T + BN0(SOFTMAX_L(BN(T K) BN(T Q)^T / sqrt(d)) T)`` (per head)."""
    tk, tq = ref_token_linear(t, tr.key), ref_token_linear(t, tr.query)
    return t + ref_bn(ref_attention(tk, tq, t, tr.num_heads)[0], tr.attn_norm.bn, channel_dim=2)


def ref_transformer(tr: TokenTransformer, t: torch.Tensor) -> torch.Tensor:
    """``T_out = T' + BN0(ReLU(BN(T' F1)) F2)``."""
    t1 = ref_transformer_attention(tr, t)
    hidden = torch.clamp(ref_token_linear(t1, tr.ffn_in), min=0.)
    return t1 + ref_token_linear(hidden, tr.ffn_out)


def ref_projector_read(pr: Projector, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The float64 reference of the projector's branch before its BN: A (T W_V) as an (N, C, H, W) map."""
    n, c, h, w = x.shape
    xq = ref_bn(torch.einsum('npc,dc->npd', pixels(x), pr.query.conv.weight[:, :, 0, 0]), pr.query.bn, channel_dim=2)
    tk = ref_token_linear(t, pr.key)
    tv = torch.einsum('nlt,ct->nlc', t, pr.value.weight) if isinstance(pr.value, nn.Linear) else t
    return ref_attention(xq, tk, tv, pr.num_heads)[0].transpose(1, 2).reshape(n, c, h, w)


def ref_projector(pr: Projector, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``X_out = X + BN0(SOFTMAX_L(BN(X W_Q) BN(T W_K)^T / sqrt(d)) (T W_V))``."""
    return x + ref_bn(ref_projector_read(pr, x, t), pr.norm, channel_dim=1)


def calibrated_model(name: str, photos: Callable[..., torch.Tensor], size: Tuple[int, int], **kwargs) -> nn.Module:
    """``name`` (seed 0) in eval mode with every residual branch active and every BN holding the statistics
    of four real photos at ``size``, as after training.

    A fresh model's BNs normalise with running mean 0 / var 1 in eval mode; the stride-16 map is then so
    small that the tokenizers' spatial softmax is uniform and the 16 tokens coincide (to ~1e-7), which
    would hide pooling, export or compile mistakes.
    """
    torch.manual_seed(0)
    model = timm.create_model(name, zero_init_last=False, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass stores the batch statistics
    with torch.no_grad():
        model.train()(photos(size, num=4, in_chans=kwargs.get('in_chans', 3)))
    return model.eval()
