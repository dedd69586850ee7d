"""The VT stage's fast path under torch.compile: one graph, no per-token or per-head Python loops, and
the same numbers as eager (issue 6). Dynamo traces without a C++ compiler (``aot_eager`` backend)."""
import pytest
import torch
import torch._dynamo

from reference import VARIANTS
from vt_timm.layers import VTStage

ALL_VARIANTS = {'default': {}, **VARIANTS}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def vt_stage(seed: int = 0, **kwargs) -> VTStage:
    """VT-ResNet-18's VT stage in small: 64 -> 128 channels, 2 modules, 64-channel tokens."""
    torch.manual_seed(seed)
    kwargs = {'token_chs': 64, 'qk_dim': 32, **kwargs}
    return VTStage(64, 128, 2, **kwargs).eval()


def stage_input(photos) -> torch.Tensor:
    """Real photos as a stride-16-like map: 8x8 RGB patches, 192 -> first 64 channels, 14x14."""
    return torch.nn.functional.pixel_unshuffle(photos((112, 112)), 8)[:, :64]


@pytest.mark.parametrize('variant', list(ALL_VARIANTS))
def test_vt_stage_compiles_to_one_graph(variant, photos):
    explanation = torch._dynamo.explain(vt_stage(**ALL_VARIANTS[variant]))(stage_input(photos))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def _graph_ops(stage: VTStage, x: torch.Tensor) -> int:
    return sum(len(g.graph.nodes) for g in torch._dynamo.explain(stage)(x).graphs)


@pytest.mark.parametrize('variant', ['default', 'clustering', 'pooling', 'graphconv'])
def test_graph_size_does_not_grow_with_tokens_or_heads(variant, photos):
    """A Python loop over tokens or heads would unroll into the graph: its size must not depend on L or heads."""
    x = stage_input(photos)
    kwargs = ALL_VARIANTS[variant]
    base = _graph_ops(vt_stage(**kwargs), x)
    torch._dynamo.reset()
    assert _graph_ops(vt_stage(**{**kwargs, 'num_tokens': 64}), x) == base
    torch._dynamo.reset()
    assert _graph_ops(vt_stage(**{**kwargs, 'num_heads': 4}), x) == base


@pytest.mark.parametrize('variant', ['default', 'clustering', 'no_projector'])
def test_compiled_matches_eager_forward_and_backward(variant, photos):
    x = stage_input(photos).requires_grad_()
    stage = vt_stage(**ALL_VARIANTS[variant]).train()
    compiled = torch.compile(stage, backend='aot_eager', fullgraph=True)
    eager_out = stage(x)
    eager_grad, = torch.autograd.grad(eager_out.square().sum(), x)
    compiled_out = compiled(x)
    compiled_grad, = torch.autograd.grad(compiled_out.square().sum(), x)
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('variant', list(ALL_VARIANTS))
def test_bf16_autocast_softmax_is_safe(variant, photos):
    """Under bfloat16 autocast the attention softmaxes stay finite and close to fp32."""
    stage, x = vt_stage(**ALL_VARIANTS[variant]), stage_input(photos)
    with torch.no_grad():
        reference = stage(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = stage(x)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() <= 0.05 * reference.abs().max()
