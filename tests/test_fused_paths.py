"""The fast inference paths (``fused_attn``, the default) against the reference paths (``fused_attn=False``,
the equations as written), at fp32, on trained-looking weights (random BN running statistics and affine
parameters, random weights), for the VT stages of all four depths; and checks that the fast paths run."""
import copy

import pytest
import timm
import torch
import torch.nn as nn

from vt_timm.layers import FilterTokenizer, MapLift, Projector, RecurrentTokenizer, VTStage
from vt_timm.tools.macs import count_call_macs, reference_paths

from reference import randomize_bn_

DEPTHS = (18, 34, 50, 101)


def _trained_looking(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights away from the init (fan-in scaled normal, redrawn) and random BN statistics and affine params."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.normal_(0, m.weight[0].numel() ** -0.5)
    return randomize_bn_(module)


def _close(fast: torch.Tensor, reference: torch.Tensor, tol: float = 1e-5) -> None:
    """Equal up to ``tol`` relative to the output's scale (its largest magnitude), element by element."""
    scale = reference.abs().max().item()
    error = (fast - reference).abs().max().item()
    assert error <= tol * scale, f'fast path differs by {error:.3e} at output scale {scale:.3e}'


def _forbid(module: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``module`` raise when called: a fast path that falls back to the reference computation fails."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f'the fast path ran the reference {type(module).__name__}')
    monkeypatch.setattr(module, 'forward', forbidden)


def _forbid_reference_parts(stage: VTStage, monkeypatch: pytest.MonkeyPatch) -> int:
    """Forbid every module that only the reference paths call: the lift's BN, the tokenizers' logit norms and
    W_A conv, the projectors' W_Q conv + BN and closing BN. Returns how many were forbidden."""
    forbidden = []
    if isinstance(stage.lift, MapLift):
        forbidden.append(stage.lift.bn)
    for block in stage.blocks:
        if isinstance(block.tokenizer, (FilterTokenizer, RecurrentTokenizer)):
            forbidden.append(block.tokenizer.logit_norm)
        if isinstance(block.tokenizer, FilterTokenizer):
            forbidden.append(block.tokenizer.attn)
        if block.projector is not None:
            forbidden += [block.projector.query, block.projector.norm]
    for m in forbidden:
        _forbid(m, monkeypatch)
    return len(forbidden)


@pytest.fixture(scope='module', params=DEPTHS)
def stage_and_input(request):
    """The VT stage of VT-ResNet-N with trained-looking weights (eval) and a 224-px stride-16 map (batch 2)."""
    vt = _trained_looking(timm.create_model(f'vt_resnet{request.param}').vt).eval()
    torch.manual_seed(1)
    x = torch.relu(torch.randn(2, vt.lift.conv.in_channels if isinstance(vt.lift, MapLift) else 1024, 14, 14))
    return request.param, vt, x


def test_stage_fast_path_matches_reference(stage_and_input, monkeypatch):
    """Whole stage, fp32: the fast inference path equals the reference path to 1e-5 of the output's scale, and
    none of the reference-only modules runs on it."""
    depth, vt, x = stage_and_input
    with torch.no_grad(), reference_paths(vt):
        reference = vt(x)
    blocks = len(vt.blocks)  # logit norms, the first W_A, two per projector, the lift's BN (R18/34)
    assert _forbid_reference_parts(vt, monkeypatch) == blocks + 1 + 2 * (blocks - 1) + (depth < 50)
    with torch.no_grad():
        fast = vt(x)
    _close(fast, reference)


def test_each_part_fast_path_matches_reference(stage_and_input):
    """Lift, every tokenizer and every projector on its own input, fast vs reference (fp32)."""
    _, vt, x = stage_and_input
    with torch.no_grad():
        h = vt.lift(x.contiguous(memory_format=torch.channels_last))
        with reference_paths(vt):
            _close(h, vt.lift(x.contiguous(memory_format=torch.channels_last)))
        tokens = None
        for block in vt.blocks:
            new_tokens = block.tokenizer(h, tokens)
            with reference_paths(block):
                _close(new_tokens, block.tokenizer(h, tokens))
            tokens = block.relation(new_tokens)
            if block.projector is not None:
                out = block.projector(h, tokens)
                with reference_paths(block):
                    _close(out, block.projector(h, tokens))
                h = out


def test_fast_path_executes_fewer_macs(stage_and_input):
    """The projector's re-association executes fewer MACs than the paper's form: the query is never built."""
    _, vt, x = stage_and_input
    executed = count_call_macs(lambda: vt(x))[0]
    with reference_paths(vt):
        paper = count_call_macs(lambda: vt(x))[0]
    assert executed < 0.9 * paper


def test_fast_path_gradients_match_reference(stage_and_input):
    """Backward through the fast path in eval mode (e.g. saliency) gives the reference gradients."""
    _, vt, x = stage_and_input
    torch.manual_seed(2)
    direction = torch.randn(2, vt.num_tokens, 1024)
    grads = []
    for fast in (True, False):
        xi = x.clone().requires_grad_(True)
        with reference_paths(vt) if not fast else torch.enable_grad():
            (vt(xi) * direction).sum().backward()
        grads.append(xi.grad)
        vt.zero_grad(set_to_none=True)
    _close(grads[0], grads[1], tol=1e-4)


def test_training_runs_the_reference_path(monkeypatch):
    """In train mode the stage computes the equations as written (BN batch statistics), fast paths on or off:
    identical outputs and running statistics."""
    stage = _trained_looking(timm.create_model('vt_resnet18').vt).train()
    reference = copy.deepcopy(stage)
    x = torch.relu(torch.randn(4, 256, 14, 14))
    with reference_paths(reference):
        assert torch.equal(stage(x), reference(x))
    for a, b in zip(stage.buffers(), reference.buffers()):
        assert torch.equal(a, b)


@pytest.mark.parametrize('num_heads', [1, 2, 4])
@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('token_chs', [8, 12])
def test_projector_fast_path_heads_and_layouts(num_heads, channels_last, token_chs, monkeypatch):
    """Projector with several heads, on channels-last and NCHW maps (VT-FPN), with and without W_V."""
    pr = _trained_looking(Projector(8, token_chs, qk_dim=8, num_heads=num_heads)).eval()
    x = torch.randn(3, 8, 5, 7)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    t = torch.randn(3, 4, token_chs)
    with torch.no_grad():
        with reference_paths(pr):
            reference = pr(x, t)
        _forbid(pr.query, monkeypatch)
        _forbid(pr.norm, monkeypatch)
        _close(pr(x, t), reference)


@pytest.mark.parametrize('cls', [FilterTokenizer, RecurrentTokenizer])
@pytest.mark.parametrize('channels_last', [True, False])
def test_tokenizer_fast_path_layouts(cls, channels_last, monkeypatch):
    tok = _trained_looking(cls(8, 12, num_tokens=4)).eval()
    x = torch.randn(3, 8, 5, 7)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    t = torch.randn(3, 4, 12)
    with torch.no_grad():
        with reference_paths(tok):
            reference = tok(x, t)
        _forbid(tok.logit_norm, monkeypatch)
        _close(tok(x, t), reference)


def test_frozen_bn_in_training_uses_reference():
    """A module in train mode with its BNs frozen (eval) takes the reference path, which is then exact."""
    pr = _trained_looking(Projector(8, 12, qk_dim=8)).train()
    for m in pr.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    x, t = torch.randn(2, 8, 5, 5), torch.randn(2, 4, 12)
    fast = pr(x, t)
    with reference_paths(pr):
        assert torch.equal(fast, pr(x, t))


def test_scripted_stage_runs_the_fast_path():
    """TorchScript compiles the fast paths: the scripted stage equals the eager fast path exactly."""
    vt = _trained_looking(timm.create_model('vt_resnet18').vt).eval()
    x = torch.relu(torch.randn(2, 256, 14, 14))
    scripted = torch.jit.script(vt)
    with torch.no_grad():
        assert torch.equal(scripted(x), vt(x))
