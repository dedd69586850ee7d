"""The paper's ablation variants (Tables 3-7) as model arguments.

Part 1 checks the new blocks against float64 transcriptions: the clustering tokenizer against a
per-image, per-pixel transcription of Appendix C on real photographs (the ``photos`` fixture), the
pooling tokenizer against F.interpolate and a hand-written antialiased bilinear filter, the graph
convolution against its equation, 'none' as the identity, and the fused attention path against the
explicit one for every tokenizer/relation variant. Part 2 runs the timm contract (create_model and
train.py's --model-kwargs, meta device, TorchScript, FX, gradients, grad checkpointing,
init_vt_weights) on VT-ResNet-18 built with each variant.
"""
import copy
import math
from typing import Callable, List, Tuple

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import set_scriptable
from timm.models import create_feature_extractor

from vt_timm.cli import train
from reference import (
    TOL64, VARIANTS, prepared, randomize_bn_, ref_bn, ref_filter_tokenizer, ref_projector, ref_recurrent_tokenizer,
    ref_softmax, ref_transformer, ref_value_map,
)
from vt_timm.layers import (
    ClusteringTokenizer, FilterTokenizer, PoolingTokenizer, RecurrentTokenizer, TokenGraphConv,
    TokenTransformer, VTBlock, VTCfg, VTStage, create_relation, create_tokenizer, init_vt_weights, spherical_kmeans,
    token_grid,
)

pytestmark = pytest.mark.usefixtures('one_thread')

TOKENIZER_TYPES = {'filter': FilterTokenizer, 'recurrent': RecurrentTokenizer, 'clustering': ClusteringTokenizer,
                   'pooling': PoolingTokenizer}
RELATION_TYPES = {'transformer': TokenTransformer, 'graphconv': TokenGraphConv, 'none': nn.Identity}


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


def real_map(photos: Callable[..., torch.Tensor], size: Tuple[int, int] = (14, 21)) -> torch.Tensor:
    """Real data as a feature map: two photos' 4x4 RGB patches as 48-channel pixels, float64, (2, 48, *size)."""
    return F.pixel_unshuffle(photos((4 * size[0], 4 * size[1])), 4).double()


def pixels(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# transcriptions
# --------------------------------------------------------------------------------------------

def ref_kmeans(x: torch.Tensor, grid: Tuple[int, int], iters: int) -> Tuple[torch.Tensor, List[int]]:
    """Appendix C for ONE image x (C, H, W), written out: unit pixels; centroid (i, j) = the normalised
    mean of grid cell (i, j) (adaptive-pool cells: rows floor(iH/gh) .. ceil((i+1)H/gh)); then per step,
    every pixel joins the first most cosine-similar centroid and every centroid with members moves to
    its members' normalised mean. Returns the centroids (L, C) and the last assignment."""
    C, H, W = x.shape
    units = [x[:, r, c] / x[:, r, c].norm() for r in range(H) for c in range(W)]
    centroids = []
    for i in range(grid[0]):
        for j in range(grid[1]):
            rows = range(i * H // grid[0], math.ceil((i + 1) * H / grid[0]))
            cols = range(j * W // grid[1], math.ceil((j + 1) * W / grid[1]))
            mean = sum(units[r * W + c] for r in rows for c in cols) / (len(rows) * len(cols))
            centroids.append(mean / mean.norm())
    assignment: List[int] = []
    for _ in range(iters):
        assignment = []
        for u in units:
            sims = [float(u @ k) for k in centroids]
            assignment.append(sims.index(max(sims)))
        for l in range(len(centroids)):
            members = [u for u, a in zip(units, assignment) if a == l]
            if members:
                mean = sum(members) / len(members)
                centroids[l] = mean / mean.norm()
    return torch.stack(centroids), assignment


def ref_clustering_tokens(tok: ClusteringTokenizer, x: torch.Tensor) -> torch.Tensor:
    """``T = SOFTMAX_HW(X K^T)^T X W_V`` per image with the transcribed K-means centroids K."""
    tokens = []
    for img in x:
        centroids, _ = ref_kmeans(img, tok.grid, tok.iters)
        X = img.flatten(1).t()  # (HW, C)
        a = ref_softmax(X @ centroids.t(), dim=0)  # (HW, L): softmax over the pixels
        tokens.append(a.t() @ X)
    return ref_value_map(torch.stack(tokens), tok)


def ref_bilinear_aa(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) antialiased bilinear weights (PIL's triangle filter): cell i centred at (i + .5) in/out,
    support max(in/out, 1), weights normalised per cell."""
    scale = in_size / out_size
    support = max(scale, 1.)
    w = torch.tensor([[max(0., 1. - abs(j + .5 - (i + .5) * scale) / support) for j in range(in_size)]
                      for i in range(out_size)], dtype=torch.float64)
    return w / w.sum(dim=1, keepdim=True)


def ref_graphconv(gc: TokenGraphConv, t: torch.Tensor) -> torch.Tensor:
    """``T_out = T + BN(ReLU(A_g T W_g))``."""
    mixed = torch.einsum('lm,nmc->nlc', gc.adjacency, t)
    hidden = torch.clamp(torch.einsum('nlc,dc->nld', mixed, gc.mix.weight), min=0.)
    return t + ref_bn(hidden, gc.norm.bn, channel_dim=2)


# --------------------------------------------------------------------------------------------
# 1. grid, K-means and the clustering tokenizer
# --------------------------------------------------------------------------------------------

def test_token_grid():
    expected = {16: (4, 4), 32: (4, 8), 64: (8, 8), 12: (3, 4), 8: (2, 4), 7: (1, 7), 1: (1, 1)}
    assert {num: token_grid(num) for num in expected} == expected


@pytest.mark.parametrize('num_tokens, size', [(16, (14, 21)), (32, (6, 10))])
@pytest.mark.parametrize('iters', [0, 3])
def test_clustering_matches_appendix_c_transcription(photos, num_tokens, size, iters):
    x = real_map(photos, size)
    tok = prepared(ClusteringTokenizer(48, 12, num_tokens, iters=iters))
    expected_centroids = torch.stack([ref_kmeans(img, tok.grid, iters)[0] for img in x])
    assert torch.allclose(tok.centroids(x), expected_centroids, **TOL64)
    logits = tok.spatial_logits(x)
    assert logits.shape == (2, num_tokens, size[0] * size[1])
    assert torch.allclose(logits, expected_centroids @ x.flatten(2), **TOL64)
    tokens = tok(x)
    assert tokens.shape == (2, num_tokens, 12)
    assert torch.allclose(tokens, ref_clustering_tokens(tok, x), **TOL64)


def test_kmeans_init_is_the_downsampled_map(photos):
    x = real_map(photos, (8, 12))
    tok = ClusteringTokenizer(48, 48, 16, iters=0).double()
    units = F.normalize(x, dim=1)
    # 8x12 -> 4x4 cells of 2x3 pixels: the mean direction of each cell, re-normalised
    cells = units.reshape(2, 48, 4, 2, 4, 3).mean(dim=(3, 5)).flatten(2).transpose(1, 2)
    assert torch.allclose(tok.centroids(x), F.normalize(cells, dim=-1), **TOL64)
    assert torch.allclose(tok.centroids(x).norm(dim=-1), torch.ones(2, 16, dtype=torch.float64), **TOL64)


def test_kmeans_converges_on_real_data(photos):
    """Lloyd's steps never lower the mean cosine to the nearest centroid, and reach a fixed point."""
    x = real_map(photos, (14, 21))
    units = pixels(F.normalize(x, dim=1))
    init = F.normalize(pixels(F.adaptive_avg_pool2d(F.normalize(x, dim=1), token_grid(16))), dim=-1)
    objectives, assignments = [], []
    for iters in range(40):
        similarity = units @ spherical_kmeans(units, init, iters).transpose(1, 2)
        objectives.append(similarity.amax(dim=-1).mean().item())
        assignments.append(similarity.argmax(dim=-1))
    assert all(b >= a - 1e-12 for a, b in zip(objectives, objectives[1:]))
    assert objectives[-1] > objectives[0] + 1e-3  # the steps do something
    changes = [(a != b).sum().item() for a, b in zip(assignments, assignments[1:])]
    assert changes[0] > 0, 'the initial grid should not already be a fixed point on real photos'
    converged = changes.index(0)  # the first step that moves no pixel ...
    assert converged < 30 and not any(changes[converged:]), changes  # ... and nothing moves afterwards
    final = spherical_kmeans(units, init, 39)
    assert torch.allclose(spherical_kmeans(units, final, 1), final, **TOL64)


def test_kmeans_empty_cluster_keeps_its_centroid():
    # every pixel is closer to e_x than to e_y: the second centroid gets no members
    units = F.normalize(torch.tensor([[[1., .1], [1., -.2], [.9, .3]]], dtype=torch.float64), dim=-1)
    init = torch.tensor([[[1., 0.], [0., 1.]]], dtype=torch.float64)
    out = spherical_kmeans(units, init, iters=2)
    assert torch.equal(out[0, 1], init[0, 1])
    assert torch.allclose(out[0, 0], F.normalize(units[0].mean(dim=0), dim=0), **TOL64)


def test_no_gradient_through_kmeans(photos):
    """The centroids are constants for autograd; X gets its gradient through the softmax and the gather."""
    tok = prepared(ClusteringTokenizer(48, 12, 16))
    x = real_map(photos).requires_grad_()
    assert not tok.centroids(x).requires_grad
    weights = torch.randn(2, 16, 12, dtype=torch.float64)
    (tok(x) * weights).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    def grad_with(centroids: torch.Tensor) -> torch.Tensor:
        xr = x.detach().clone().requires_grad_()
        a = (centroids @ xr.flatten(2)).softmax(dim=-1)
        (ref_value_map(a @ pixels(xr), tok) * weights).sum().backward()
        return xr.grad

    constant = torch.stack([ref_kmeans(img, tok.grid, tok.iters)[0] for img in x.detach()])
    assert torch.allclose(x.grad, grad_with(constant), **TOL64)
    # K-means with autograd through it (no detach) would give X another gradient
    xd = x.detach().clone().requires_grad_()
    units = F.normalize(xd, dim=1)
    init = F.normalize(pixels(F.adaptive_avg_pool2d(units, tok.grid)), dim=-1)
    differentiable = spherical_kmeans(pixels(units), init, tok.iters)
    a = (differentiable @ xd.flatten(2)).softmax(dim=-1)
    (ref_value_map(a @ pixels(xd), tok) * weights).sum().backward()
    assert not torch.allclose(xd.grad, x.grad, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 2. pooling tokenizer
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('num_tokens', [16, 32])
@pytest.mark.parametrize('size', [(14, 14), (14, 21), (6, 6), (3, 5)])
def test_pooling_tokens_are_bilinear_cells(photos, num_tokens, size):
    x = real_map(photos, size)
    tok = prepared(PoolingTokenizer(48, 12, num_tokens))
    grid = token_grid(num_tokens)
    cells = F.interpolate(x, size=grid, mode='bilinear', align_corners=False, antialias=True)
    tokens = tok(x)
    assert tokens.shape == (2, num_tokens, 12)
    assert torch.allclose(tokens, ref_value_map(pixels(cells), tok), **TOL64)
    # the same cells from the hand-written filter, token (i, j) = sum_rc w_i(r) w_j(c) X[r, c]
    w_rows, w_cols = ref_bilinear_aa(size[0], grid[0]), ref_bilinear_aa(size[1], grid[1])
    hand = torch.einsum('ir,jc,nkrc->nijk', w_rows, w_cols, x).reshape(2, num_tokens, 48)
    assert torch.allclose(tokens, ref_value_map(hand, tok), **TOL64)
    # spatial_logits: log-weights whose softmax over HW is the filter, and gathers the same tokens
    logits = tok.spatial_logits(x)
    assert logits.shape == (2, num_tokens, size[0] * size[1])
    weights = torch.einsum('ir,jc->ijrc', w_rows, w_cols).reshape(1, num_tokens, -1).expand(2, -1, -1)
    assert torch.allclose(logits.softmax(dim=-1), weights, **TOL64)
    assert torch.allclose(logits.exp(), weights, **TOL64)


def test_pooling_reads_every_pixel():
    """Antialiased: at 14x14 -> 4x4 every pixel has weight in some cell (plain bilinear reads 64 of 196)."""
    tok = PoolingTokenizer(8, 8, 16)
    weights = tok.spatial_logits(torch.randn(1, 8, 14, 14)).exp()[0]
    assert (weights.sum(dim=0) > 0).all()
    plain = F.interpolate(torch.eye(196).reshape(196, 1, 14, 14), size=(4, 4), mode='bilinear', align_corners=False)
    assert (plain.flatten(1).sum(dim=1) > 0).sum() == 64


# --------------------------------------------------------------------------------------------
# 3. relations: graph convolution and none
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dim', [8, 12])
def test_graphconv_matches_equation(dim):
    gc = prepared(TokenGraphConv(dim, num_tokens=5))
    with torch.no_grad():
        gc.adjacency.copy_(torch.randn(5, 5))
    t = torch.randn(2, 5, dim, dtype=torch.float64)
    out = gc(t)
    assert out.shape == t.shape
    assert torch.allclose(out, ref_graphconv(gc, t), **TOL64)
    # the adjacency is fixed (not content-dependent) and mixes tokens: permuting them changes the result
    perm = torch.tensor([1, 0, 2, 3, 4])
    assert not torch.allclose(gc(t[:, perm]), out[:, perm], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('training', [False, True])
def test_graphconv_zero_init_last_is_identity(training):
    gc = TokenGraphConv(8, num_tokens=5).double()
    gc.zero_init_last()
    randomize_bn_(gc, keep_affine=[gc.norm.bn]).train(training)
    t = torch.randn(2, 5, 8, dtype=torch.float64)
    assert torch.equal(gc(t), t)


def test_relation_none_is_identity():
    block = prepared(VTBlock(8, VTCfg(token_chs=12, num_tokens=4, relation='none', qk_dim=6)))
    assert isinstance(block.relation, nn.Identity)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    x_out, tokens = block(x)
    assert torch.equal(tokens, block.tokenizer(x))
    assert torch.allclose(x_out, ref_projector(block.projector, x, tokens), **TOL64)


def test_factories_reject_unknown_kinds():
    with pytest.raises(ValueError, match='tokenizer must be one of'):
        create_tokenizer('kmeans', 8, 12)
    with pytest.raises(ValueError, match='relation must be one of'):
        create_relation('gcn', 12)


@pytest.mark.parametrize('field, value, match', [
    ('num_tokens', 1, 'num_tokens=1: expected an integer of at least 2'),
    ('num_tokens', 0, 'num_tokens=0: expected an integer of at least 2'),
    ('token_chs', -8, 'token_chs=-8: expected an integer of at least 1'),
    ('num_heads', 0, 'num_heads=0'),
    ('qk_dim', 2.5, 'qk_dim=2.5'),
    ('relation', 'gcn', 'relation must be one of'),
])
def test_vt_cfg_rejects_out_of_range_settings(field, value, match):
    with pytest.raises(ValueError, match=match):
        VTCfg(**{field: value})
    with pytest.raises(ValueError, match=match):
        timm.create_model('vt_resnet18', **{field: value})


def test_vt_block_loads_checkpoints_that_call_the_relation_transformer():
    block = VTBlock(8, VTCfg(token_chs=12, num_tokens=4, qk_dim=6)).eval()
    old_keys = {k.replace('relation.', 'transformer.'): v for k, v in block.state_dict().items()}
    assert any(k.startswith('transformer.') for k in old_keys)
    fresh = VTBlock(8, VTCfg(token_chs=12, num_tokens=4, qk_dim=6))
    fresh.load_state_dict(old_keys)  # strict: every renamed key lands
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in block.state_dict().items())


# --------------------------------------------------------------------------------------------
# 4. every tokenizer: spatial_logits is the attention its tokens are gathered with
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', list(TOKENIZER_TYPES))
def test_spatial_logits_give_the_tokens(photos, kind):
    x = real_map(photos, (6, 10))
    tok = prepared(create_tokenizer(kind, 48, 12, num_tokens=8))
    assert isinstance(tok, TOKENIZER_TYPES[kind])
    t_in = torch.randn(2, 8, 12, dtype=torch.float64)
    logits = tok.spatial_logits(x, t_in)
    assert logits.shape == (2, 8, 60)
    gathered = ref_value_map(ref_softmax(logits, dim=-1) @ pixels(x), tok)
    assert torch.allclose(tok(x, t_in), gathered, **TOL64)
    if kind == 'filter':
        assert torch.allclose(tok(x), ref_filter_tokenizer(tok, x), **TOL64)
    if kind == 'recurrent':
        assert torch.allclose(tok(x, t_in), ref_recurrent_tokenizer(tok, x, t_in), **TOL64)


# --------------------------------------------------------------------------------------------
# 5. stages of every variant: structure, chaining, fused vs explicit attention
# --------------------------------------------------------------------------------------------

def small_stage(variant: str, depth: int = 3) -> VTStage:
    """A narrow 3-module VT stage of the variant (C 8, C_T 12, qk 6, 2 heads; L 4 unless the variant sets it)."""
    kwargs = dict(num_tokens=4, **VARIANTS[variant]) if 'num_tokens' not in VARIANTS[variant] else VARIANTS[variant]
    return VTStage(6, 8, depth, token_chs=12, qk_dim=6, num_heads=2, **kwargs)


def expected_structure(variant: str, depth: int) -> List[Tuple[type, type, bool]]:
    kw = VARIANTS[variant]
    first, later = kw.get('first_tokenizer', 'filter'), kw.get('tokenizer', 'recurrent')
    relation = RELATION_TYPES[kw.get('relation', 'transformer')]
    return [(TOKENIZER_TYPES[first if i == 0 else later], relation, kw.get('projector', True) and i < depth - 1)
            for i in range(depth)]


def test_stage_structure_and_chaining(variant):
    stage = prepared(small_stage(variant))
    structure = [(type(b.tokenizer), type(b.relation), b.projector is not None) for b in stage.blocks]
    assert structure == expected_structure(variant, 3)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    out = stage(x)
    # manual chain through the transcriptions of the blocks that have one
    h, tokens = stage.lift(x), None
    for block in stage.blocks:
        tok, rel = block.tokenizer, block.relation
        t = ref_recurrent_tokenizer(tok, h, tokens) if isinstance(tok, RecurrentTokenizer) else tok(h, tokens)
        if isinstance(rel, TokenTransformer):
            t = ref_transformer(rel, t)
        elif isinstance(rel, TokenGraphConv):
            t = ref_graphconv(rel, t)
        tokens = t
        if block.projector is not None:
            h = ref_projector(block.projector, h, tokens)
    assert out.shape == (2, stage.num_tokens, 12)
    assert torch.allclose(out, tokens, **TOL64)


def set_fused(module: nn.Module, fused: bool) -> int:
    switched = 0
    for m in module.modules():
        if hasattr(m, 'fused_attn'):
            m.fused_attn = fused
            switched += 1
    return switched


@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_fused_matches_explicit_attention(variant, dtype, tol):
    stage = randomize_bn_(small_stage(variant)).eval().to(dtype)
    x = torch.randn(2, 6, 8, 8).to(dtype)
    assert set_fused(stage, True) > 0
    fused = stage(x)
    set_fused(stage, False)
    explicit = stage(x)
    assert fused.dtype == explicit.dtype == dtype
    rel_error = ((fused.float() - explicit.float()).norm() / explicit.float().norm()).item()
    assert rel_error < tol, f'fused and explicit attention differ by {rel_error:.2e}'
    if dtype == torch.float32:
        assert torch.allclose(fused, explicit, rtol=tol, atol=tol)


def test_invalid_variants_raise():
    for kwargs, match in [
        (dict(first_tokenizer='recurrent'), 'first_tokenizer must be one of'),
        (dict(tokenizer='pooling'), 'tokenizer must be one of'),
        (dict(relation='attention'), 'relation must be one of'),
        (dict(projector=False, tokenizer='filter'), "projector=False needs tokenizer='recurrent'"),
    ]:
        with pytest.raises(ValueError, match=match):
            timm.create_model('vt_resnet18', device='meta', **kwargs)


def test_init_vt_weights_on_variants():
    stage = VTStage(64, 96, 2, token_chs=128, num_tokens=16, first_tokenizer='pooling', relation='graphconv')
    for p in stage.parameters():
        nn.init.constant_(p, 3.)
    init_vt_weights(stage)
    for block in stage.blocks:
        assert torch.equal(block.relation.adjacency, torch.eye(16))
        assert block.relation.mix.weight.std().item() == pytest.approx(128 ** -0.5, rel=0.15)  # LeCun: 1 / fan-in
    assert stage.blocks[0].tokenizer.value.fc.weight.std().item() == pytest.approx(96 ** -0.5, rel=0.15)
    clustering = VTStage(64, 96, 2, token_chs=128, first_tokenizer='clustering')
    init_vt_weights(clustering)
    assert not [n for n, _ in clustering.blocks[0].tokenizer.named_parameters() if not n.startswith('value.')]


# --------------------------------------------------------------------------------------------
# 6. the timm contract for VT-ResNet-18 of every variant
# --------------------------------------------------------------------------------------------

def input_size(variant: str) -> Tuple[int, int]:
    """The smallest test input whose stride-16 map has at least L pixels."""
    return {16: (64, 96), 32: (96, 96), 64: (128, 128)}[VARIANTS[variant].get('num_tokens', 16)]


def create(variant: str, **kwargs) -> nn.Module:
    return timm.create_model('vt_resnet18', **VARIANTS[variant], **kwargs)


def test_model_kwargs_through_train_py(variant):
    cli = [f'{k}={v}' for k, v in VARIANTS[variant].items()]
    args, _ = train.parse_args(['--model', 'vt_resnet18', '--model-kwargs', *cli])
    assert args.model_kwargs == VARIANTS[variant]
    model = timm.create_model(args.model, device='meta', **args.model_kwargs)
    structure = [(type(b.tokenizer), type(b.relation), b.projector is not None) for b in model.vt.blocks]
    assert structure == expected_structure(variant, 2)
    assert model.vt.num_tokens == VARIANTS[variant].get('num_tokens', 16)


def test_forward_on_real_photos(variant, photos):
    model = create(variant).eval()
    x = photos(input_size(variant))
    with torch.no_grad():
        tokens = model.forward_features(x)
        logits = model.forward_head(tokens)
    assert tokens.shape == (2, model.vt.num_tokens, 1024) and torch.isfinite(tokens).all()
    assert not torch.allclose(tokens[0], tokens[1]), 'two different photos gave the same tokens'
    assert logits.shape == (2, 1000)


@pytest.mark.parametrize('how', ['context', 'kwarg'])
def test_meta_device(variant, how):
    if how == 'context':
        with torch.device('meta'):
            model = create(variant)
    else:
        model = create(variant, device='meta')
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    logits = model(torch.empty(2, 3, *input_size(variant), device='meta'))
    assert logits.is_meta and logits.shape == (2, 1000)


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_torchscript(variant, photos):
    with set_scriptable(True):
        model = create(variant).eval()
    scripted = torch.jit.script(model)
    x = photos(input_size(variant))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def test_fx(variant, photos):
    model = create(variant).eval()
    traced = create_feature_extractor(model, return_nodes={'vt': 'tokens', 'fc': 'logits'})
    x = photos(input_size(variant))
    with torch.no_grad():
        out = traced(x)
        tokens = model.forward_features(x)
    torch.testing.assert_close(out['tokens'], tokens)
    torch.testing.assert_close(out['logits'], model.forward_head(tokens))
    traced.train()
    out = traced(x)
    sum(value.mean() for value in out.values()).backward()
    assert not [n for n, p in traced.named_parameters() if p.grad is None]


@pytest.mark.parametrize('feature_cls', ['getter', 'fx'])
def test_features_only(variant, photos, feature_cls):
    features = create(variant, features_only=True, feature_cls=feature_cls, out_indices=(2, 3)).eval()
    with torch.no_grad():
        maps = features(photos(input_size(variant)))
    assert [m.shape[1] for m in maps] == [128, 256]


def test_every_parameter_gets_a_nonzero_gradient(variant, photos):
    model = create(variant, zero_init_last=False).train()
    logits = model(photos(input_size(variant)))
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not without, f'parameters without gradient: {without[:5]}'


def test_grad_checkpointing_is_exact(variant, photos):
    model = create(variant, zero_init_last=False).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    calls = []
    checkpointed.vt.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    x = photos(input_size(variant))
    for m in (model, checkpointed):
        F.cross_entropy(m(x), torch.tensor([0, 1])).backward()
    assert len(calls) == 2, 'the first VT module should run again in backward'
    for (name, p), p_ckpt in zip(model.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p_ckpt.grad, p.grad, msg=name)


def test_init_weights_after_meta_construction(variant, photos):
    """Built on meta, materialised, re-initialised: the same init as a model built on the CPU."""
    model = create(variant, device='meta').to_empty(device='cpu')
    model.init_weights()
    reference = create(variant)
    for (name, p), ref in zip(model.vt.named_parameters(), reference.vt.parameters()):
        if p.ndim > 1 and name.endswith('adjacency'):
            assert torch.equal(p, ref), name
        elif p.ndim > 1:
            assert p.std().item() == pytest.approx(ref.std().item(), rel=0.3), name
