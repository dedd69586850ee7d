"""The norms of the VT modules: BatchNorm over tokens, token-wise linear maps with their BN, and the
tokenizers' logit norm S(Z) = BN_L(Z - mean_L Z) with its temperature (docs/architecture.md choices 9, 19), and the
token-wise linear map they share (choice 21).

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., v4 / ICCV 2021)
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['TokenNorm', 'TokenwiseLinear', 'TokenLinear', 'SpatialLogitNorm', 'bn_affine']


def bn_affine(
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        eps: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """An inference BatchNorm (its running statistics and affine parameters) as the per-channel affine map
    ``x * scale + shift``: (scale, shift). Tensors in, not the module, so that TorchScript compiles the callers."""
    assert running_mean is not None and running_var is not None, 'folding a BatchNorm needs its running statistics'
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


class TokenNorm(nn.Module):
    """BatchNorm over the channel axis of (N, L, C) tokens: statistics over the N x L tokens of a batch."""

    def __init__(self, num_features: int, device=None, dtype=None):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.flatten(0, 1)).reshape(x.shape)


class TokenwiseLinear(nn.Linear):
    """``nn.Linear`` on (N, L, C_in) tokens, computed as a 1x1 convolution over the batch's N L tokens.

    The same function, parameters and state dict as ``nn.Linear``; the GEMM runs in the convolution
    library (oneDNN on CPU, cuDNN on CUDA), as the convolutions of the stage it replaces do, instead of
    the BLAS: on CPUs where the BLAS takes a slower code path than oneDNN (MKL on AMD CPUs runs at half
    of oneDNN's rate, docs/benchmarks.md) the token maps keep the convolutions' rate. The (N L, C_in)
    rows of contiguous tokens are viewed, without a copy, as a channels-last (1, C_in, 1, N L) image, and
    the channels-last output is read back as (N, L, C_out) rows.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, C = x.shape
        rows = x.reshape(1, 1, N * L, C).permute(0, 3, 1, 2)  # (1, C_in, 1, N L), channels-last strides
        out = F.conv2d(rows, self.weight[:, :, None, None], self.bias)
        return out.permute(0, 2, 3, 1).reshape(N, L, self.out_features)


class TokenLinear(nn.Module):
    """Token-wise linear map followed by BatchNorm over the channel axis of (N, L, C) tokens."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc = TokenwiseLinear(in_features, out_features, bias=False, **dd)
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

    def fold_into_filters(self, filters: torch.Tensor) -> torch.Tensor:
        """Filters (..., L, C) whose logits ``filters X^T`` have the spatial softmax of ``S(filters X^T)`` in
        inference: the centring across tokens is linear (it centres the filters) and the BN an affine map
        per token, whose shift is constant over the pixels and cancels in the softmax; its scale stays."""
        bn = self.norm
        scale, _ = bn_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        return (filters - filters.mean(dim=-2, keepdim=True)) * scale.unsqueeze(-1)
