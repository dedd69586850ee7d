"""Visual Transformer (VT) building blocks.

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)

A VT module turns a feature map X (N, C, H, W) into L visual tokens T (N, L, C_T), relates the
tokens with a transformer and fuses them back into the map (v4 equations; the norms, scalings and
C <-> C_T maps added to them are the choices listed in docs/architecture.md, measured in
docs/training.md):

    tokenizer    T = BN(SOFTMAX_HW(S(X W_A))^T X W_V)                   (filter-based, first module)
                 T = BN(SOFTMAX_HW(S(X (T_in W_T->R)^T / sqrt(C)))^T X W_V)   (recurrent, later modules)
                 S(Z) = BN_L(Z - mean_L Z): logits centred across the L tokens at every pixel,
                 then normalised per token with a temperature that starts at sqrt(2 ln L)
    transformer  T' = T + BN0(SOFTMAX_L(BN(T K) BN(T Q)^T / sqrt(d)) T)
                 T_out = T' + BN0(ReLU(BN(T' F1)) F2)
    projector    X_out = X + BN0(SOFTMAX_L(BN(X W_Q) BN(T W_K)^T / sqrt(d)) T W_V)

BN0 is a BatchNorm whose scale starts at zero, so every residual branch starts as the identity.

The paper's ablation variants (its Tables 3-7; ``create_tokenizer`` / ``create_relation``):

    clustering   T = BN(SOFTMAX_HW(X K^T)^T X W_V),  K = KMEANS_L(X / |X|)  (L unit centroids, no gradient)
    pooling      T = BN(BILINEAR_L(X) W_V)                               (the map resized to L cells)
    graph conv   T_out = T + BN0(ReLU(A_g T W_g))                        (A_g: L x L, W_g: C_T x C_T)
    none         T_out = T

W_V maps C <-> C_T and exists only where the two widths differ. Tokens are kept token-major
(N, L, C), as in timm's other token models.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct, DropPath, lecun_normal_, use_fused_attn
from timm.models import checkpoint

__all__ = [
    'token_attention', 'TokenNorm', 'TokenLinear', 'SpatialLogitNorm', 'FilterTokenizer', 'RecurrentTokenizer', 'ClusteringTokenizer',
    'PoolingTokenizer', 'TokenTransformer', 'TokenGraphConv', 'Projector', 'VTBlock', 'VTStage',
    'create_tokenizer', 'create_relation', 'spherical_kmeans', 'token_grid', 'init_vt_weights',
    'FIRST_TOKENIZERS', 'LATER_TOKENIZERS', 'RELATIONS',
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


class TokenNorm(nn.Module):
    """BatchNorm over the channel axis of (N, L, C) tokens: statistics over the N x L tokens of a batch."""

    def __init__(self, num_features: int, device=None, dtype=None):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.flatten(0, 1)).reshape(x.shape)


class TokenLinear(nn.Module):
    """Token-wise linear map followed by BatchNorm over the channel axis of (N, L, C) tokens."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc = nn.Linear(in_features, out_features, bias=False, **dd)
        self.norm = TokenNorm(out_features, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


class SpatialLogitNorm(nn.Module):
    """``S(Z) = BN_L(Z - mean_L Z)`` for the (N, L, HW) spatial logits of a tokenizer.

    Centring across the L tokens at every pixel removes the part of the logits that all tokens share:
    it could only pull every token to the same pixels (the collapse of docs/training.md), and it
    cancels any update that moves all L filters alike. The BatchNorm then gives each token's logits
    unit variance over the batch's pixels times a learned temperature, so the sharpness of the
    spatial softmax no longer follows the scale of the weights. The temperature starts at
    ``sqrt(2 ln L)``: for unit-variance logits the softmax over HW pixels has entropy about
    ln(HW) - t^2 / 2, so each token starts spread over about HW / L pixels, as many as would let
    the L tokens tile the map, whatever its size.
    """

    def __init__(self, num_tokens: int, device=None, dtype=None):
        super().__init__()
        if num_tokens < 2:
            raise ValueError(f'num_tokens={num_tokens}: a tokenizer needs at least 2 tokens (its spatial logits are '
                             f'centred across the tokens)')
        self.norm = nn.BatchNorm1d(num_tokens, device=device, dtype=dtype)
        self.reset_temperature()

    @property
    def initial_temperature(self) -> float:
        return math.sqrt(2 * math.log(self.norm.num_features))

    def reset_temperature(self) -> None:
        """Set the learned temperature (the BN scale) to ``sqrt(2 ln L)``."""
        nn.init.constant_(self.norm.weight, self.initial_temperature)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.norm(logits - logits.mean(dim=1, keepdim=True))


def _spatial_softmax_gather(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T = SOFTMAX_HW(logits)^T X for logits (N, L, HW) and map x (N, C, H, W) -> (N, L, C)."""
    return _softmax(logits, dim=-1) @ x.flatten(2).transpose(1, 2)


def _value_map(in_chs: int, token_chs: int, device=None, dtype=None) -> nn.Module:
    """A tokenizer's W_V and the BN on its tokens: ``TokenLinear(C -> C_T)``, or ``TokenNorm`` where C = C_T."""
    if in_chs != token_chs:
        return TokenLinear(in_chs, token_chs, device=device, dtype=dtype)
    return TokenNorm(token_chs, device=device, dtype=dtype)


class FilterTokenizer(nn.Module):
    """Filter-based tokenizer: a 1x1 conv W_A gives one spatial attention per token.

    ``T = BN(SOFTMAX_HW(S(X W_A))^T X W_V)`` with ``S`` the ``SpatialLogitNorm``; the token-wise W_V
    (C -> C_T) exists only where the widths differ, the BN on the tokens always.
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
        self.logit_norm = SpatialLogitNorm(num_tokens, **dd)
        self.value = _value_map(in_chs, token_chs, **dd)

    def spatial_logits(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-softmax spatial attention (N, L, HW); ``tokens`` is unused (fixed filters)."""
        return self.logit_norm(self.attn(x).flatten(2))

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.value(_spatial_softmax_gather(self.spatial_logits(x, tokens), x))


class RecurrentTokenizer(nn.Module):
    """Recurrent tokenizer: the previous module's tokens become this module's filters.

    ``W_R = T_in W_T->R``; ``T = BN(SOFTMAX_HW(S(X W_R^T / sqrt(C)))^T X W_V)``, ``S`` and W_V as in the
    filter tokenizer (centring the logits across tokens is centring T_in across tokens: they are linear
    in it). The 1/sqrt(C) of a dot product of two C-wide vectors keeps the logits near the unit variance
    that ``S``'s BatchNorm starts its running statistics at.
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
        self.scale = in_chs ** -0.5
        self.token_to_filter = nn.Linear(token_chs, in_chs, bias=False, **dd)  # W_T->R
        self.logit_norm = SpatialLogitNorm(num_tokens, **dd)
        self.value = _value_map(in_chs, token_chs, **dd)

    def spatial_logits(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-softmax spatial attention (N, L, HW) computed from the previous tokens."""
        assert tokens is not None, 'RecurrentTokenizer needs the previous VT module\'s tokens'
        filters = self.token_to_filter(tokens)  # (N, L, C)
        return self.logit_norm((filters * self.scale) @ x.flatten(2))

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.value(_spatial_softmax_gather(self.spatial_logits(x, tokens), x))


def token_grid(num_tokens: int) -> Tuple[int, int]:
    """The (rows, cols) grid of L cells that pooling and K-means initialisation downsample a map to.

    rows = the largest divisor of L not above sqrt(L), cols = L / rows: 16 -> 4x4, 32 -> 4x8,
    64 -> 8x8 (a prime L gives 1xL). Fixed per model, whatever the map's aspect ratio, so that no
    code branches on input shapes (FX, TorchScript).
    """
    rows = max(r for r in range(1, int(num_tokens ** 0.5) + 1) if num_tokens % r == 0)
    return rows, num_tokens // rows


def spherical_kmeans(pixels: torch.Tensor, centroids: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd's algorithm on unit vectors, batched over images (Appendix C).

    Each step assigns every pixel to its nearest centroid by cosine similarity (ties: lowest
    index), moves each centroid to the mean of its members and re-normalises it; a centroid
    without members keeps its previous position.

    Args:
        pixels: (N, P, C) unit-norm pixel vectors.
        centroids: (N, L, C) unit-norm initial centroids.
        iters: number of Lloyd steps.

    Returns:
        (N, L, C) unit-norm centroids.
    """
    for _ in range(iters):
        similarity = pixels @ centroids.transpose(1, 2)  # (N, P, L)
        members = torch.zeros_like(similarity).scatter_(-1, similarity.argmax(dim=-1, keepdim=True), 1.)
        counts = members.sum(dim=1).unsqueeze(-1)  # (N, L, 1)
        means = (members.transpose(1, 2) @ pixels) / counts.clamp(min=1.)
        centroids = torch.where(counts > 0, F.normalize(means, dim=-1), centroids)
    return centroids


class ClusteringTokenizer(nn.Module):
    """K-means tokenizer (Appendix C): the centroids of the pixels' directions are the filters.

    Per image, the pixels are L2-normalised; L centroids start as the normalised map average-pooled
    to the ``token_grid`` cells (re-normalised) and take ``iters`` Lloyd steps (``spherical_kmeans``);
    then ``T = BN(SOFTMAX_HW(X K^T)^T X W_V)`` with the centroids K as W_K on the raw map (unnormalised
    logits: Appendix C has no learned weights in the attention). K-means runs on a detached map under
    ``no_grad``: gradients reach X through the softmax and the gather only. No learned weights besides
    W_V and the token BN (as in the filter tokenizer).
    """

    def __init__(
            self,
            in_chs: int,
            token_chs: int,
            num_tokens: int = 16,
            iters: int = 3,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.grid = token_grid(num_tokens)
        self.iters = iters
        self.value = _value_map(in_chs, token_chs, device=device, dtype=dtype)

    def centroids(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, C) unit-norm K-means centroids of the map's pixel directions (no gradient)."""
        with torch.no_grad():
            directions = F.normalize(x.detach(), dim=1)
            init = F.adaptive_avg_pool2d(directions, [self.grid[0], self.grid[1]]).flatten(2).transpose(1, 2)
            pixels = directions.flatten(2).transpose(1, 2)
            return spherical_kmeans(pixels, F.normalize(init, dim=-1), self.iters)

    def spatial_logits(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-softmax spatial attention (N, L, HW): X K^T with the centroids K; ``tokens`` is unused."""
        return self.centroids(x) @ x.flatten(2)

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.value(_spatial_softmax_gather(self.spatial_logits(x, tokens), x))


def _bilinear_weights(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """(out_size, in_size) weights of ``F.interpolate(bilinear, antialias)`` along one axis, in the
    dtype and on the device of ``like``.

    The resize is separable: resizing the one-hot rows of an identity gives each input pixel's
    weight in every output cell. Computed in float64 on the CPU (a few hundred numbers): torch's
    CPU antialiased resize has no bfloat16 kernel, and the rows lie along the width axis because
    torch 2.14's antialiased resize of an (H, 1) map to (h, 1) returns h equal values. A leaf for
    FX (``torch.fx.wrap``): it runs on the traced map's concrete size.
    """
    eye = torch.eye(in_size, dtype=torch.float64).reshape(in_size, 1, 1, in_size)
    weights = F.interpolate(eye, size=[1, out_size], mode='bilinear', align_corners=False, antialias=True)
    return weights.reshape(in_size, out_size).t().to(dtype=like.dtype).to(device=like.device)


torch.fx.wrap('_bilinear_weights')


class PoolingTokenizer(nn.Module):
    """Pooling tokenizer: the map bilinearly resized to the ``token_grid`` cells, one token per cell.

    ``T = BN(BILINEAR_L(X) W_V)``: ``F.interpolate(bilinear, antialias=True)``, so that every pixel
    reaches some cell (plain bilinear at 14x14 -> 4x4 reads 64 of the 196 pixels), applied as its
    two separable weight matrices (rows, cols): cells = W_rows X W_cols^T, in any dtype. No learned
    weights besides W_V and the token BN.
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
        self.grid = token_grid(num_tokens)
        self.value = _value_map(in_chs, token_chs, device=device, dtype=dtype)

    def spatial_logits(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, L, HW) log of the fixed bilinear weights (-inf where a cell reads no pixel): their
        softmax over HW is the weights themselves, which sum to 1 per cell. ``tokens`` is unused."""
        rows, cols = self.axis_weights(x)
        weights = rows[:, None, :, None] * cols[None, :, None, :]  # (grid rows, grid cols, H, W)
        return weights.reshape(1, self.grid[0] * self.grid[1], -1).log().expand(x.shape[0], -1, -1)

    def axis_weights(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The resize's weights along H (grid rows, H) and along W (grid cols, W)."""
        return _bilinear_weights(x.shape[-2], self.grid[0], x), _bilinear_weights(x.shape[-1], self.grid[1], x)

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows, cols = self.axis_weights(x)
        cells = rows @ x @ cols.t()  # (N, C, grid rows, grid cols)
        return self.value(cells.flatten(2).transpose(1, 2))


FIRST_TOKENIZERS = ('filter', 'clustering', 'pooling')  # first VT module (paper Table 3)
LATER_TOKENIZERS = ('recurrent', 'filter')  # later VT modules (Table 4: 'filter' = no recurrent tokenizer)


def create_tokenizer(
        kind: str,
        in_chs: int,
        token_chs: int,
        num_tokens: int = 16,
        device=None,
        dtype=None,
) -> nn.Module:
    """A tokenizer ``(x, tokens=None) -> (N, L, C_T)`` with ``spatial_logits``: 'filter', 'recurrent',
    'clustering' or 'pooling'."""
    dd = {'device': device, 'dtype': dtype}
    if kind == 'filter':
        return FilterTokenizer(in_chs, token_chs, num_tokens, **dd)
    if kind == 'recurrent':
        return RecurrentTokenizer(in_chs, token_chs, num_tokens, **dd)
    if kind == 'clustering':
        return ClusteringTokenizer(in_chs, token_chs, num_tokens, **dd)
    if kind == 'pooling':
        return PoolingTokenizer(in_chs, token_chs, num_tokens, **dd)
    raise ValueError(f'tokenizer must be one of {sorted(set(FIRST_TOKENIZERS + LATER_TOKENIZERS))}, got {kind!r}')


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
        self.mix = nn.Linear(dim, dim, bias=False, **dd)  # W_g
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
