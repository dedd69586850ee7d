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

Where each part lives: ``tokenizers`` (filter, recurrent, clustering, pooling), ``relations``
(transformer, graph convolution, none), ``projector``, ``vt_block`` (the VT module, its settings ``VTCfg``
and the stage), ``weight_init``, ``norms`` (token BN, token-wise linear maps, the logit norm) and ``attention``.
"""
from .attention import token_attention
from .norms import SpatialLogitNorm, TokenLinear, TokenNorm, TokenwiseLinear, bn_affine
from .projector import Projector
from .relations import RELATIONS, TokenGraphConv, TokenTransformer, create_relation
from .tokenizers import (
    FIRST_TOKENIZERS, LATER_TOKENIZERS, ClusteringTokenizer, FilterTokenizer, PoolingTokenizer, RecurrentTokenizer,
    create_tokenizer, spherical_kmeans, token_grid,
)
from .vt_block import MapLift, VTBlock, VTCfg, VTStage
from .weight_init import init_conv_weights, init_vt_weights

__all__ = [
    'token_attention', 'bn_affine', 'MapLift', 'TokenNorm', 'TokenwiseLinear', 'TokenLinear', 'SpatialLogitNorm', 'FilterTokenizer', 'RecurrentTokenizer',
    'ClusteringTokenizer', 'PoolingTokenizer', 'TokenTransformer', 'TokenGraphConv', 'Projector', 'VTCfg', 'VTBlock',
    'VTStage', 'create_tokenizer', 'create_relation', 'spherical_kmeans', 'token_grid', 'init_vt_weights',
    'init_conv_weights',
    'FIRST_TOKENIZERS', 'LATER_TOKENIZERS', 'RELATIONS',
]
