"""Value-level unit tests of the VT building blocks in ``vt_timm.layers``.

Every block is checked against a direct, independent transcription of its equation (arXiv
2006.03677 v4, with the norm / scaling / value-map choices documented in ``vt_timm/layers/``)
on small float64 tensors, using the module's own weights. BatchNorm layers are put in eval mode
with non-trivial running statistics and affine parameters set here, so they are part of every
check. The reference helpers below never call the module code under test: softmax is written as
exp / sum, BatchNorm as (x - mean) / sqrt(var + eps) * weight + bias, products as einsum.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
from timm.layers import ConvNormAct, DropPath
from torch.utils.flop_counter import FlopCounterMode

from reference import (
    randomize_bn_, prepared, rand_map, rand_tokens, pixels, ref_softmax, ref_bn, ref_attention,
    ref_spatial_tokens, ref_filter_logits, ref_filter_tokenizer, ref_recurrent_tokenizer, ref_transformer,
    ref_projector_read, ref_projector, N, C, L, QK, MAP_SIZES, TOL64, TOL32,
)
from vt_timm.layers import (
    FilterTokenizer, Projector, RecurrentTokenizer, SpatialLogitNorm, TokenLinear, TokenNorm, TokenTransformer,
    TokenwiseLinear, VTBlock, VTCfg, VTStage, init_vt_weights, token_attention,
)



# --------------------------------------------------------------------------------------------
# fixtures and set-up helpers
# --------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# 0. the token-wise linear map
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('contiguous', [True, False])
def test_tokenwise_linear_is_nn_linear_run_as_a_convolution(bias, contiguous):
    torch.manual_seed(0)
    linear = nn.Linear(C, 24, bias=bias)
    tokenwise = TokenwiseLinear(C, 24, bias=bias)
    tokenwise.load_state_dict(linear.state_dict())  # the same parameters and state dict
    tokens = torch.randn(N, L, C) if contiguous else torch.randn(N, C, L).transpose(1, 2)
    grad = torch.randn(N, L, 24)
    outputs, grads = [], []
    for module in (linear, tokenwise):
        x = tokens.clone().requires_grad_()
        with FlopCounterMode(display=False) as counter:
            out = module(x)
        out.backward(grad)
        outputs.append(out)
        grads.append((x.grad, module.weight.grad))
        ops = {str(op) for op in counter.get_flop_counts()['Global']}
    assert ops == {'aten.convolution'}, ops  # the token rows go through the convolution, no BLAS GEMM
    assert outputs[1].shape == (N, L, 24) and outputs[1].is_contiguous()
    torch.testing.assert_close(outputs[1], outputs[0], **TOL32)
    for reference, value in zip(grads[0], grads[1]):
        torch.testing.assert_close(value, reference, **TOL32)


# --------------------------------------------------------------------------------------------
# 1. token_attention
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('num_heads', [1, 2])
@pytest.mark.parametrize('dv', [4, 10])
def test_token_attention_matches_per_head_reference(num_heads, dv):
    q, k, v = torch.randn(N, 7, QK), torch.randn(N, L, QK), torch.randn(N, L, dv)
    q64, k64, v64 = q.double(), k.double(), v.double()
    expected = ref_attention(q64, k64, v64, num_heads)[0]
    for fused in (True, False):
        assert torch.allclose(token_attention(q64, k64, v64, num_heads, fused), expected, **TOL64)
    fused32 = token_attention(q, k, v, num_heads, fused=True)
    plain32 = token_attention(q, k, v, num_heads, fused=False)
    assert fused32.dtype == torch.float32
    assert torch.allclose(fused32, plain32, **TOL32)
    assert torch.allclose(fused32.double(), expected, **TOL32)


@pytest.mark.parametrize('num_heads', [1, 2])
def test_token_attention_bf16(num_heads):
    q, k, v = torch.randn(N, 7, QK), torch.randn(N, L, QK), torch.randn(N, L, 8)
    expected = ref_attention(q.double(), k.double(), v.double(), num_heads)[0]
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    fused = token_attention(qb, kb, vb, num_heads, fused=True)
    plain = token_attention(qb, kb, vb, num_heads, fused=False)
    assert fused.dtype == plain.dtype == torch.bfloat16
    assert torch.allclose(fused.float(), plain.float(), rtol=3e-2, atol=3e-2)
    assert torch.allclose(fused.double(), expected, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize('fused', [True, False])
def test_token_attention_implied_weights_are_row_stochastic(fused):
    """With value = identity (one-hot per key), the output *is* the attention matrix."""
    q, k = torch.randn(N, 7, QK, dtype=torch.float64), torch.randn(N, L, QK, dtype=torch.float64)
    eye = torch.eye(L, dtype=torch.float64).expand(N, L, L)
    attn = token_attention(q, k, eye, num_heads=1, fused=fused)  # (N, 7, L)
    expected = ref_softmax(torch.einsum('nmd,nld->nml', q, k) / QK ** 0.5, dim=-1)
    assert torch.allclose(attn, expected, **TOL64)
    assert (attn > 0).all()
    assert torch.allclose(attn.sum(-1), torch.ones(N, 7, dtype=torch.float64), **TOL64)
    # the reference's own per-head matrices are row-stochastic too
    for a in ref_attention(q, k, eye, num_heads=2)[1]:
        assert torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), **TOL64)


# --------------------------------------------------------------------------------------------
# 2. FilterTokenizer
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('hw', MAP_SIZES)
def test_filter_tokenizer_same_width(hw):
    tok = prepared(FilterTokenizer(C, C, num_tokens=L))
    assert isinstance(tok.value, TokenNorm)  # no W_V where C = C_T, the token BN all the same
    x = rand_map(*hw)
    out = tok(x)
    assert out.shape == (N, L, C)
    assert torch.allclose(out, ref_filter_tokenizer(tok, x), **TOL64)
    # before the token BN each token is a convex combination of pixel vectors
    gathered = ref_spatial_tokens(x, ref_filter_logits(tok, x))
    pmin, pmax = pixels(x).amin(dim=1, keepdim=True), pixels(x).amax(dim=1, keepdim=True)
    assert ((gathered >= pmin - 1e-12) & (gathered <= pmax + 1e-12)).all()


@pytest.mark.parametrize('hw', MAP_SIZES)
def test_filter_tokenizer_value_map(hw):
    tok = prepared(FilterTokenizer(C, 12, num_tokens=L))
    assert isinstance(tok.value, TokenLinear) and tok.value.fc.bias is None
    x = rand_map(*hw)
    out = tok(x)
    assert out.shape == (N, L, 12)
    assert torch.allclose(out, ref_filter_tokenizer(tok, x), **TOL64)


@pytest.mark.parametrize('hw', MAP_SIZES)
def test_filter_tokenizer_spatial_logits(hw):
    tok = prepared(FilterTokenizer(C, 12, num_tokens=L))
    x = rand_map(*hw)
    logits = tok.spatial_logits(x)
    assert logits.shape == (N, L, hw[0] * hw[1])
    assert torch.allclose(logits, ref_filter_logits(tok, x).transpose(1, 2), **TOL64)
    assert torch.allclose(tok.spatial_logits(x, rand_tokens(12)), logits)  # tokens are unused
    a = ref_softmax(logits, dim=-1)
    assert torch.allclose(a.sum(-1), torch.ones(N, L, dtype=torch.float64), **TOL64)


# --------------------------------------------------------------------------------------------
# 2b. SpatialLogitNorm: centred across tokens, a temperature per token
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('training', [False, True])
def test_logit_norm_ignores_what_all_tokens_share(training):
    """A per-pixel offset common to every token's logits changes nothing, in training or eval."""
    norm = randomize_bn_(SpatialLogitNorm(L).double()).train(training)
    logits = torch.randn(N, L, 15, dtype=torch.float64)
    shared = torch.randn(N, 1, 15, dtype=torch.float64)
    assert torch.allclose(norm(logits + shared), norm(logits), **TOL64)
    assert not torch.allclose(norm(logits), norm(logits * 2), rtol=1e-3, atol=1e-3) or training


def test_logit_norm_training_gives_the_temperature():
    """In training each token's logits have unit batch variance times its temperature sqrt(2 ln L)."""
    norm = SpatialLogitNorm(L).double().train()
    assert torch.allclose(norm.norm.weight, torch.full((L,), (2 * math.log(L)) ** 0.5, dtype=torch.float64))
    out = norm(torch.randn(64, L, 49, dtype=torch.float64) * 7 + 3)
    assert torch.allclose(out.std(dim=(0, 2), unbiased=False), norm.norm.weight, rtol=1e-3)
    # the scale of the incoming logits (of the filters) does not matter
    torch.manual_seed(1)
    z = torch.randn(8, L, 49, dtype=torch.float64)
    assert torch.allclose(norm(z), norm(z * 100), rtol=1e-4, atol=1e-4)  # up to BN's eps


@pytest.mark.parametrize('hw', [49, 196])
def test_logit_norm_initial_attention_is_local_not_uniform(hw):
    """With the initial temperature a token's spatial softmax is far from uniform (a global average
    pool) and spread over more than one pixel: its entropy lies between ln(HW / L) and ln(HW) - 1."""
    norm = SpatialLogitNorm(16).double().train()
    a = norm(torch.randn(64, 16, hw, dtype=torch.float64)).softmax(dim=-1)
    entropy = -(a * a.log()).sum(-1).mean().item()
    assert math.log(hw / 16) < entropy < math.log(hw) - 1


def test_logit_norm_needs_two_tokens():
    with pytest.raises(ValueError, match='at least 2 tokens'):
        SpatialLogitNorm(1)


def test_filter_tokenizer_moving_all_filters_alike_changes_nothing():
    """The update that would pull every token to the same pixels (the same vector added to every
    filter W_A) leaves the tokens as they were."""
    tok = prepared(FilterTokenizer(C, 12, num_tokens=L))
    x = rand_map(5, 5)
    before = tok(x)
    with torch.no_grad():
        tok.attn.weight += torch.randn(1, C, 1, 1, dtype=torch.float64)
    assert torch.allclose(tok(x), before, **TOL64)


# --------------------------------------------------------------------------------------------
# 3. RecurrentTokenizer
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('token_chs', [C, 12])
@pytest.mark.parametrize('hw', MAP_SIZES)
def test_recurrent_tokenizer_matches_equation(token_chs, hw):
    tok = prepared(RecurrentTokenizer(C, token_chs, num_tokens=L))
    assert isinstance(tok.value, TokenLinear if token_chs != C else TokenNorm)
    x, t_in = rand_map(*hw), rand_tokens(token_chs)
    out = tok(x, t_in)
    assert out.shape == (N, L, token_chs)
    assert torch.allclose(out, ref_recurrent_tokenizer(tok, x, t_in), **TOL64)
    assert tok.spatial_logits(x, t_in).shape == (N, L, hw[0] * hw[1])


def test_recurrent_tokenizer_needs_tokens():
    tok = prepared(RecurrentTokenizer(C, 12, num_tokens=L))
    with pytest.raises(AssertionError):
        tok(rand_map(5, 5))


def test_recurrent_tokenizer_depends_on_input_tokens():
    tok = prepared(RecurrentTokenizer(C, 12, num_tokens=L))
    x = rand_map(5, 5)
    assert not torch.allclose(tok(x, rand_tokens(12)), tok(x, rand_tokens(12)), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# 4. TokenTransformer
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('num_heads', [1, 2])
@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('dim', [C, 12])
def test_transformer_matches_equation(num_heads, fused, dim):
    tr = prepared(TokenTransformer(dim, qk_dim=QK, num_heads=num_heads), fused=fused)
    t = rand_tokens(dim)
    out = tr(t)
    assert out.shape == t.shape
    assert torch.allclose(out, ref_transformer(tr, t), **TOL64)


def test_transformer_heads_are_not_single_head():
    """num_heads=2 splits K/Q and the values per head; it is not the single-head result."""
    tr = prepared(TokenTransformer(C, qk_dim=QK, num_heads=2))
    t = rand_tokens(C)
    out2 = tr(t)
    tr.num_heads = 1
    assert not torch.allclose(out2, tr(t), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('training', [False, True])
def test_transformer_zero_init_last_is_identity(training):
    """Both residual branches (attention and FFN) start at zero: a fresh transformer is the identity."""
    tr = TokenTransformer(C, qk_dim=QK, num_heads=2).double()
    tr.zero_init_last()
    randomize_bn_(tr, keep_affine=[tr.ffn_out.norm.bn, tr.attn_norm.bn]).train(training)
    t = rand_tokens(C)
    assert torch.equal(tr(t), t)
    # and the attention it would apply is still a real (non-uniform) softmax over the tokens
    weights = tr.attention_weights(t)
    assert torch.allclose(weights.sum(-1), torch.ones_like(weights.sum(-1)), **TOL64)
    assert weights.std().item() > 1e-3


@pytest.mark.parametrize('num_heads', [1, 2])
def test_transformer_permutation_equivariant(num_heads):
    tr = prepared(TokenTransformer(C, qk_dim=QK, num_heads=num_heads))
    t = rand_tokens(C, l=6)
    perm = torch.randperm(6)
    assert torch.allclose(tr(t[:, perm]), tr(t)[:, perm], **TOL64)


# --------------------------------------------------------------------------------------------
# 5. Projector
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('token_chs', [C, 12])
@pytest.mark.parametrize('num_heads', [1, 2])
@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('hw', MAP_SIZES)
def test_projector_matches_equation(token_chs, num_heads, fused, hw):
    pr = prepared(Projector(C, token_chs, qk_dim=QK, num_heads=num_heads), fused=fused)
    assert isinstance(pr.value, nn.Linear if token_chs != C else nn.Identity)
    x, t = rand_map(*hw), rand_tokens(token_chs)
    out = pr(x, t)
    assert out.shape == x.shape
    assert torch.allclose(out, ref_projector(pr, x, t), **TOL64)


@pytest.mark.parametrize('token_chs', [C, 12])
@pytest.mark.parametrize('num_heads', [1, 2])
def test_projector_training_uses_batch_statistics(token_chs, num_heads):
    """In training the closing BN normalises the read with its batch statistics and updates the
    running ones exactly as nn.BatchNorm2d does (the inference fold must not leak into training)."""
    pr = randomize_bn_(Projector(C, token_chs, qk_dim=QK, num_heads=num_heads).double()).train()
    pr.query.bn.eval()  # the reference read uses running statistics for the query and key BNs
    pr.key.norm.bn.eval()
    x, t = rand_map(3, 5), rand_tokens(token_chs)
    bn = copy.deepcopy(pr.norm)
    read = ref_projector_read(pr, x, t)
    mean, var = read.mean(dim=(0, 2, 3), keepdim=True), read.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = x + (read - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(pr(x, t), expected, **TOL64)
    bn(read)
    assert torch.allclose(pr.norm.running_mean, bn.running_mean, **TOL64)
    assert torch.allclose(pr.norm.running_var, bn.running_var, **TOL64)


@pytest.mark.parametrize('dtype, tol', [(torch.float32, TOL32), (torch.bfloat16, dict(rtol=3e-2, atol=3e-2))])
@pytest.mark.parametrize('num_heads', [1, 2])
def test_projector_fused_inference_matches_explicit(dtype, tol, num_heads):
    """The fused inference path (BN folded into the token values, residual add in the baddbmm)
    equals read -> BN -> add run one by one."""
    pr = randomize_bn_(Projector(C, 12, qk_dim=QK, num_heads=num_heads)).to(dtype).eval()
    x, t = torch.randn(N, C, 3, 5, dtype=dtype), torch.randn(N, L, 12, dtype=dtype)
    pr.fused_attn = True
    fused = pr(x, t)
    pr.fused_attn = False
    explicit = pr(x, t)
    assert fused.dtype == dtype and torch.isfinite(fused).all()
    assert torch.allclose(fused.float(), explicit.float(), **tol)


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('token_chs', [C, 12])
def test_projector_zero_init_last_is_identity(training, token_chs):
    pr = Projector(C, token_chs, qk_dim=QK).double()
    pr.zero_init_last()
    randomize_bn_(pr, keep_affine=[pr.norm]).train(training)
    x = rand_map(3, 5)
    assert torch.equal(pr(x, rand_tokens(token_chs)), x)


# --------------------------------------------------------------------------------------------
# 6. VTBlock / VTStage
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('recurrent', [False, True])
@pytest.mark.parametrize('project', [False, True])
def test_block_is_chain_of_its_submodules(recurrent, project):
    tokenizer = 'recurrent' if recurrent else 'filter'
    block = prepared(VTBlock(C, VTCfg(token_chs=12, num_tokens=L, qk_dim=QK, num_heads=2), tokenizer=tokenizer, projector=project))
    assert isinstance(block.tokenizer, RecurrentTokenizer if recurrent else FilterTokenizer)
    assert (block.projector is not None) == project
    x, t_in = rand_map(3, 5), (rand_tokens(12) if recurrent else None)
    x_out, t_out = block(x, t_in)
    if recurrent:
        tokens = ref_recurrent_tokenizer(block.tokenizer, x, t_in)
    else:
        tokens = ref_filter_tokenizer(block.tokenizer, x)
    tokens = ref_transformer(block.relation, tokens)
    assert torch.allclose(t_out, tokens, **TOL64)
    if project:
        assert torch.allclose(x_out, ref_projector(block.projector, x, tokens), **TOL64)
    else:
        assert x_out is x


@pytest.mark.parametrize('in_chs', [6, C])
@pytest.mark.parametrize('depth', [1, 3])
def test_stage_structure_and_output(in_chs, depth):
    stage = prepared(VTStage(in_chs, C, depth, token_chs=12, num_tokens=L, qk_dim=QK, num_heads=2))
    assert isinstance(stage.lift, ConvNormAct if in_chs != C else nn.Identity)
    assert len(stage.blocks) == depth
    for i, block in enumerate(stage.blocks):
        assert isinstance(block.tokenizer, FilterTokenizer if i == 0 else RecurrentTokenizer)
        assert (block.projector is None) == (i == depth - 1)
    x = torch.randn(N, in_chs, 3, 5, dtype=torch.float64)
    out = stage(x)
    # manual chaining: lift (conv -> BN -> ReLU), then the blocks' own forward passes
    if in_chs != C:
        lifted = torch.einsum('nchw,dc->ndhw', x, stage.lift.conv.weight[:, :, 0, 0])
        h = torch.clamp(ref_bn(lifted, stage.lift.bn, channel_dim=1), min=0.)
    else:
        h = x
    tokens = None
    for block in stage.blocks:
        h, tokens = block(h, tokens)
    assert out.shape == (N, L, 12)
    assert torch.allclose(out, tokens, **TOL64)


def test_stage_grad_checkpointing_same_output():
    stage = prepared(VTStage(6, C, 3, token_chs=12, num_tokens=L, qk_dim=QK, num_heads=2))
    x = torch.randn(N, 6, 3, 5, dtype=torch.float64)
    expected = stage(x)
    stage.grad_checkpointing = True
    assert torch.allclose(stage(x), expected, **TOL64)


def test_stage_drop_path_rates_reach_drop_path_modules():
    rates = [0., 0.1, 0.2]
    stage = VTStage(6, C, 3, token_chs=12, num_tokens=L, qk_dim=QK, drop_path_rates=rates)
    for rate, block in zip(rates, stage.blocks):
        branches = [block.relation.drop_path1, block.relation.drop_path2]
        if block.projector is not None:
            branches.append(block.projector.drop_path)
        for dp in branches:
            if rate == 0.:
                assert isinstance(dp, nn.Identity)
            else:
                assert isinstance(dp, DropPath) and dp.drop_prob == pytest.approx(rate)


@pytest.mark.parametrize('token_chs', [C, 12])
def test_drop_path_drops_whole_branches_in_train_only(token_chs):
    """drop_path=1 drops every branch in training; in eval the module is the drop-free equation."""
    tr = prepared(TokenTransformer(token_chs, qk_dim=QK, drop_path=1.))
    pr = prepared(Projector(C, token_chs, qk_dim=QK, drop_path=1.))
    x, t = rand_map(3, 5), rand_tokens(token_chs)
    assert torch.allclose(tr(t), ref_transformer(tr, t), **TOL64)
    assert torch.allclose(pr(x, t), ref_projector(pr, x, t), **TOL64)
    tr.train()
    pr.train()
    assert torch.equal(tr(t), t)
    assert torch.equal(pr(x, t), x)


def test_drop_path_partial_rate_drops_some_samples():
    pr = randomize_bn_(Projector(C, 12, qk_dim=QK, drop_path=0.5).double()).train()
    x, t = torch.randn(32, C, 3, 5, dtype=torch.float64), torch.randn(32, L, 12, dtype=torch.float64)

    def dropped_samples() -> torch.Tensor:
        torch.manual_seed(1)
        return (pr(x, t) == x).flatten(1).all(dim=1)

    dropped = dropped_samples()
    assert 0 < dropped.sum() < 32  # some samples' branch is zeroed, the others are kept
    assert torch.equal(dropped_samples(), dropped)  # same seed -> same mask


# --------------------------------------------------------------------------------------------
# 7. gradients
# --------------------------------------------------------------------------------------------

def test_every_stage_parameter_gets_gradient():
    stage = VTStage(6, C, 3, token_chs=12, num_tokens=L, qk_dim=QK, num_heads=2).double().train()
    x = torch.randn(N, 6, 5, 5, dtype=torch.float64)
    tokens = stage(x)
    # a random linear read-out: a plain sum would cancel through the closing train-mode BN
    loss = (tokens * torch.randn_like(tokens)).sum()
    loss.backward()
    missing = [name for name, p in stage.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'parameters without gradient: {missing}'


def test_init_vt_weights_scales():
    """Every VT map LeCun normal (std 1 / sqrt(fan-in)); the tokenizers' temperatures sqrt(2 ln L); the
    closing BNs are left alone."""
    stage = VTStage(64, 96, vt_depth=2, token_chs=128, num_tokens=L)
    with torch.no_grad():
        for m in stage.modules():
            if isinstance(m, SpatialLogitNorm):
                m.norm.weight.fill_(5.)
    init_vt_weights(stage)
    for w in (stage.blocks[0].tokenizer.attn.weight, stage.blocks[1].relation.key.fc.weight):
        assert w.std().item() == pytest.approx(w.shape[1] ** -0.5, rel=0.15)
    for block in stage.blocks:
        assert torch.allclose(block.tokenizer.logit_norm.norm.weight, torch.full((L,), (2 * math.log(L)) ** 0.5))
