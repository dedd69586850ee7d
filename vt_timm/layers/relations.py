"""Token relations: how the L visual tokens interact (paper section 3.2, Table 5).

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)

    transformer  T' = T + BN0(SOFTMAX_L(BN(T K) BN(T Q)^T / sqrt(d)) T);  T_out = T' + BN0(ReLU(BN(T' F1)) F2)
    graph conv   T_out = T + BN0(ReLU(A_g T W_g))                          (ablation)
    none         T_out = T                                                 (ablation)
"""
import torch
import torch.nn as nn
from timm.layers import DropPath, use_fused_attn

from .attention import _check_num_heads, token_attention
from .norms import TokenLinear, TokenNorm, TokenwiseLinear

__all__ = ['TokenTransformer', 'TokenGraphConv', 'create_relation', 'RELATIONS']


class TokenTransformer(nn.Module):
    """Transformer over the L tokens (no positional encoding, as in v4).

    ``T' = T + BN0(SOFTMAX_L(BN(T K) BN(T Q)^T / sqrt(d)) T)`` (values are the tokens themselves), then
    ``T_out = T' + BN0(ReLU(BN(T' F1)) F2)`` with F1, F2 square (C_T x C_T) token-wise maps. The BNs
    on K and Q fix the scale of the attention logits whatever the scale of the tokens and weights; the
    closing BNs of both branches start at zero (``zero_init_last``), so a fresh transformer is the
    identity.
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
        self.key = TokenLinear(dim, qk_dim, **dd)  # K
        self.query = TokenLinear(dim, qk_dim, **dd)  # Q
        self.attn_norm = TokenNorm(dim, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.ffn_in = TokenLinear(dim, dim, **dd)  # F1
        self.ffn_act = nn.ReLU(inplace=True)
        self.ffn_out = TokenLinear(dim, dim, **dd)  # F2
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the BNs closing the attention and FFN branches: both start as the identity."""
        nn.init.zeros_(self.attn_norm.bn.weight)
        nn.init.zeros_(self.ffn_out.norm.bn.weight)

    def attention_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """The L x L weights ``SOFTMAX_L(BN(T K) BN(T Q)^T / sqrt(d))`` that ``forward`` applies, per head.

        Row i holds token i's weights over the tokens j it reads (rows sum to 1); head h mixes
        channel slice h of the tokens. Computed by the forward's own ``token_attention`` call with
        identity values (each head reads back its weight matrix), so the two cannot drift apart.

        Args:
            tokens: (N, L, C_T) input tokens of this transformer.

        Returns:
            (N, num_heads, L, L) attention weights.
        """
        N, L, _ = tokens.shape
        identity = torch.eye(L, device=tokens.device, dtype=tokens.dtype).repeat(1, self.num_heads)
        weights = token_attention(
            self.key(tokens), self.query(tokens), identity.expand(N, L, -1), self.num_heads, self.fused_attn)
        return weights.reshape(N, L, self.num_heads, L).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # row i of (T K)(T Q)^T holds token i's affinities to every token j: T K plays the query role
        attended = token_attention(self.key(tokens), self.query(tokens), tokens, self.num_heads, self.fused_attn)
        tokens = tokens + self.drop_path1(self.attn_norm(attended))
        return tokens + self.drop_path2(self.ffn_out(self.ffn_act(self.ffn_in(tokens))))


class TokenGraphConv(nn.Module):
    """Graph convolution over the L tokens (GloRe / LatentGNN style), the paper's Table 5 baseline.

    ``T_out = T + BN(ReLU(A_g T W_g))``: a learned, input-independent L x L adjacency A_g mixes the
    tokens (initialised to the identity), a token-wise W_g (C_T x C_T) mixes channels, ReLU as in
    GloRe; the closing BN is zero-initialised by ``zero_init_last`` like every residual branch here.
    """

    def __init__(
            self,
            dim: int,
            num_tokens: int = 16,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.adjacency = nn.Parameter(torch.eye(num_tokens, **dd))  # A_g
        self.mix = TokenwiseLinear(dim, dim, bias=False, **dd)  # W_g
        self.act = nn.ReLU(inplace=True)
        self.norm = TokenNorm(dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the closing BN so the graph convolution starts as the identity."""
        nn.init.zeros_(self.norm.bn.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.act(self.mix(self.adjacency @ tokens))
        return tokens + self.drop_path(self.norm(h))


RELATIONS = ('transformer', 'graphconv', 'none')  # token relation (paper Table 5)


def create_relation(
        kind: str,
        dim: int,
        num_tokens: int = 16,
        qk_dim: int = 256,
        num_heads: int = 1,
        drop_path: float = 0.,
        device=None,
        dtype=None,
) -> nn.Module:
    """The token relation ``(N, L, C_T) -> (N, L, C_T)``: 'transformer', 'graphconv' or 'none' (identity)."""
    dd = {'device': device, 'dtype': dtype}
    if kind == 'transformer':
        return TokenTransformer(dim, qk_dim, num_heads, drop_path, **dd)
    if kind == 'graphconv':
        return TokenGraphConv(dim, num_tokens, drop_path, **dd)
    if kind == 'none':
        return nn.Identity()
    raise ValueError(f'relation must be one of {RELATIONS}, got {kind!r}')
