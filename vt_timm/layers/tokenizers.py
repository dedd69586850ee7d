"""Tokenizers: a feature map X (N, C, H, W) -> L visual tokens T (N, L, C_T) (paper section 3.1, Tables 3-4).

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)

    filter       T = BN(SOFTMAX_HW(S(X W_A))^T X W_V)                         (first module)
    recurrent    T = BN(SOFTMAX_HW(S(X (T_in W_T->R)^T / sqrt(C)))^T X W_V)    (later modules)
    clustering   T = BN(SOFTMAX_HW(X K^T)^T X W_V),  K = KMEANS_L(X / |X|)    (ablation, Table 3)
    pooling      T = BN(BILINEAR_L(X) W_V)                                     (ablation, Table 3)
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import use_fused_attn

from .attention import _softmax
from .norms import SpatialLogitNorm, TokenLinear, TokenNorm, TokenwiseLinear

__all__ = [
    'FilterTokenizer', 'RecurrentTokenizer', 'ClusteringTokenizer', 'PoolingTokenizer', 'create_tokenizer',
    'spherical_kmeans', 'token_grid', 'FIRST_TOKENIZERS', 'LATER_TOKENIZERS',
]


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
    (C -> C_T) exists only where the widths differ, the BN on the tokens always. In inference
    (``fused_attn``, the default) ``S`` folds into W_A (``SpatialLogitNorm.fold_into_filters``) and the
    logits of all the batch's pixels are one GEMM; ``fused_attn=False`` runs the equation as written.
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
        self.fused_attn = use_fused_attn()
        self.attn = nn.Conv2d(in_chs, num_tokens, 1, bias=False, **dd)  # W_A
        self.logit_norm = SpatialLogitNorm(num_tokens, **dd)
        self.value = _value_map(in_chs, token_chs, **dd)

    def spatial_logits(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-softmax spatial attention (N, L, HW); ``tokens`` is unused (fixed filters)."""
        return self.logit_norm(self.attn(x).flatten(2))

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.fused_attn and not self.training and not self.logit_norm.norm.training:
            # (L, C) @ (N, C, HW): one GEMM over all the batch's pixels for a channels-last map
            logits = self.logit_norm.fold_into_filters(self.attn.weight.flatten(1)) @ x.flatten(2)
        else:
            logits = self.spatial_logits(x, tokens)
        return self.value(_spatial_softmax_gather(logits, x))


class RecurrentTokenizer(nn.Module):
    """Recurrent tokenizer: the previous module's tokens become this module's filters.

    ``W_R = T_in W_T->R``; ``T = BN(SOFTMAX_HW(S(X W_R^T / sqrt(C)))^T X W_V)``, ``S`` and W_V as in the
    filter tokenizer (centring the logits across tokens is centring T_in across tokens: they are linear
    in it). The 1/sqrt(C) of a dot product of two C-wide vectors keeps the logits near the unit variance
    that ``S``'s BatchNorm starts its running statistics at. In inference (``fused_attn``) ``S`` folds
    into the filters (``SpatialLogitNorm.fold_into_filters``).
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
        self.fused_attn = use_fused_attn()
        self.scale = in_chs ** -0.5
        self.token_to_filter = TokenwiseLinear(token_chs, in_chs, bias=False, **dd)  # W_T->R
        self.logit_norm = SpatialLogitNorm(num_tokens, **dd)
        self.value = _value_map(in_chs, token_chs, **dd)

    def filters(self, tokens: Optional[torch.Tensor]) -> torch.Tensor:
        """``W_R / sqrt(C) = T_in W_T->R / sqrt(C)`` from the previous tokens: (N, L, C)."""
        assert tokens is not None, 'RecurrentTokenizer needs the previous VT module\'s tokens'
        return self.token_to_filter(tokens) * self.scale

    def spatial_logits(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-softmax spatial attention (N, L, HW) computed from the previous tokens."""
        return self.logit_norm(self.filters(tokens) @ x.flatten(2))

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.fused_attn and not self.training and not self.logit_norm.norm.training:
            logits = self.logit_norm.fold_into_filters(self.filters(tokens)) @ x.flatten(2)
        else:
            logits = self.spatial_logits(x, tokens)
        return self.value(_spatial_softmax_gather(logits, x))


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
