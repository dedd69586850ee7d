"""The timm model contract (the project spec's timm.md) for every registered VT-ResNet.

Design under test: ``forward_features`` returns the VT tokens (N, L, C_T) = (N, 16, 1024), NLC
like timm's ViT/LeViT; ``forward_head`` pools the tokens; ``feature_info``/``features_only``
expose four NCHW maps (act1, layer1, layer2, layer3 at strides 2, 4, 8, 16).

Inputs are real photographs (the ``photos`` fixture of conftest.py) at 64-128 px. Checks that
only need the model's structure build it on the meta device, so they cost no compute.
"""
import copy
import math
import re
from typing import Callable, Dict, List, Tuple

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, set_scriptable
from timm.models import FeatureGraphNet, create_feature_extractor, get_pretrained_cfg, group_parameters

import vt_timm
from reference import calibrated_model

pytestmark = pytest.mark.usefixtures('one_thread')

MODEL_NAMES = ('vt_resnet18', 'vt_resnet34', 'vt_resnet50', 'vt_resnet101')
NUM_TOKENS, TOKEN_CHS = 16, 1024
FEATURE_MODULES = ('act1', 'layer1', 'layer2', 'layer3')
REDUCTIONS = (2, 4, 8, 16)
BATCH = 2
SMALL = (64, 96)  # input of the expensive checks
MAPS_SIZE = (96, 128)  # input whose maps are 48x64, 24x32, 12x16, 6x8

# how the head reduces the (N, L, C) tokens for each global_pool
POOLS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'avg': lambda tokens: tokens.mean(dim=1),
    'max': lambda tokens: tokens.amax(dim=1),
    '': lambda tokens: tokens,
}


@pytest.fixture(params=MODEL_NAMES)
def model_name(request) -> str:
    return request.param


def meta_model(name: str, **kwargs) -> nn.Module:
    """The model built on the meta device: structure and attributes without compute."""
    return timm.create_model(name, device='meta', **kwargs)


def token_diverse_model(name: str, photos: Callable[..., torch.Tensor], **kwargs) -> nn.Module:
    """A model in eval mode whose 16 tokens differ from each other, for checks of token pooling."""
    return calibrated_model(name, photos, SMALL, **kwargs)


def map_sizes(size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Spatial size of each feature level for an input of ``size`` (every stride-2 op rounds up)."""
    return [(math.ceil(size[0] / r), math.ceil(size[1] / r)) for r in REDUCTIONS]


def assert_tokens(tokens: torch.Tensor) -> None:
    assert tokens.shape == (BATCH, NUM_TOKENS, TOKEN_CHS)
    assert torch.isfinite(tokens).all()
    assert not torch.allclose(tokens[0], tokens[1]), 'two different photos gave the same tokens'


def classification_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One cross-entropy backward pass on fixed labels; returns the logits."""
    logits = model(x)
    F.cross_entropy(logits, torch.arange(len(x)) % logits.shape[-1]).backward()
    return logits


def params_without_grad(model: nn.Module) -> List[str]:
    return [name for name, param in model.named_parameters() if param.grad is None]


def feature_backbone(features_model: nn.Module) -> nn.Module:
    """The module of a features_only wrapper whose state-dict keys are the plain model's."""
    if type(features_model).__name__ == 'FeatureGetterNet':  # timm's getter wrapper (not exported publicly)
        return features_model.model
    if isinstance(features_model, FeatureGraphNet):
        return features_model.graph_module
    return features_model  # FeatureListNet holds the model's own children


def load_weights_from(dst: nn.Module, src: nn.Module) -> None:
    """Give ``dst`` the weights of ``src``; every key of ``dst`` must exist in ``src``."""
    src_state, dst_keys = src.state_dict(), dst.state_dict().keys()
    assert dst_keys <= src_state.keys(), f'keys unknown to the model: {sorted(dst_keys - src_state.keys())}'
    dst.load_state_dict({key: src_state[key] for key in dst_keys})


def residual_unit_drop_rates(model: nn.Module) -> List[float]:
    """Stochastic-depth rate of each residual unit in forward order: ResNet blocks, then VT modules."""
    units = [*model.layer1, *model.layer2, *model.layer3, *model.vt.blocks]
    rates = []
    for unit in units:
        probs = {module.drop_prob for module in unit.modules() if isinstance(module, DropPath)}
        assert len(probs) <= 1, f'a residual unit should have one drop-path rate, got {probs}'
        rates.append(probs.pop() if probs else 0.)
    return rates


# --- registry and pretrained cfg -------------------------------------------------------------

def test_registry_lists_all_models():
    assert sorted(timm.list_models('vt_*')) == sorted(MODEL_NAMES)
    assert timm.list_models('vt_*', pretrained=True) == []  # no weights are published yet (tests/test_registry.py)
    assert sorted(timm.list_models('vt_*', include_tags=True)) == sorted(f'{name}.untrained' for name in MODEL_NAMES)
    assert isinstance(vt_timm.__version__, str) and re.fullmatch(r'\d+\.\d+\.\d+\S*', vt_timm.__version__)


def test_pretrained_cfg(model_name):
    cfg = get_pretrained_cfg(model_name)
    assert cfg is not None, f'{model_name} has no pretrained cfg entry'
    assert cfg.input_size == (3, 224, 224)
    assert tuple(cfg.mean) == IMAGENET_DEFAULT_MEAN and tuple(cfg.std) == IMAGENET_DEFAULT_STD
    assert 0. < cfg.crop_pct <= 1.
    assert cfg.interpolation in ('bilinear', 'bicubic')
    assert cfg.hf_hub_id is None and cfg.tag == 'untrained' and not cfg.has_weights  # timm's tag for no weights
    assert isinstance(cfg.license, str) and cfg.license
    assert cfg.paper_ids == 'arXiv:2006.03677'
    assert cfg.first_conv == 'conv1' and cfg.classifier == 'fc'

    model = meta_model(model_name)
    state = model.state_dict()
    assert f'{cfg.first_conv}.weight' in state and state[f'{cfg.first_conv}.weight'].shape[1] == cfg.input_size[0]
    assert {f'{cfg.classifier}.weight', f'{cfg.classifier}.bias'} <= state.keys()
    assert state[f'{cfg.classifier}.weight'].shape == (cfg.num_classes, TOKEN_CHS)


# --- constructor ------------------------------------------------------------------------------

def test_constructor_arguments(model_name, photos):
    model = timm.create_model(
        model_name, num_classes=7, in_chans=2, global_pool='max', drop_rate=0.3, drop_path_rate=0.1,
        device='cpu', dtype=torch.float64,
    ).eval()
    assert (model.num_classes, model.in_chans, model.global_pool) == (7, 2, 'max')
    assert model.conv1.in_channels == 2 and model.fc.out_features == 7
    assert model.head_drop.p == pytest.approx(0.3)
    assert max(residual_unit_drop_rates(model)) == pytest.approx(0.1)
    assert all(p.dtype == torch.float64 and p.device.type == 'cpu' for p in model.parameters())

    x = photos(SMALL, in_chans=1).repeat(1, 2, 1, 1).double()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (BATCH, 7) and logits.dtype == torch.float64


def test_unknown_kwarg_raises_type_error(model_name):
    with pytest.raises(TypeError, match='not_an_arg'):
        timm.create_model(model_name, not_an_arg=1)


@pytest.mark.parametrize('how', ['context', 'kwarg'])
def test_builds_and_runs_on_meta_device(model_name, how):
    if how == 'context':
        with torch.device('meta'):
            model = timm.create_model(model_name)
    else:
        model = timm.create_model(model_name, device='meta')
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.is_meta for t in tensors)
    # shape propagation only: fails on .item(), numpy or branching on tensor values in forward
    logits = model(torch.empty(BATCH, 3, *SMALL, device='meta'))
    assert logits.is_meta and logits.shape == (BATCH, 1000)


# --- attributes and forward -------------------------------------------------------------------

def test_model_attributes(model_name):
    model = meta_model(model_name)
    assert model.num_classes == 1000
    assert model.in_chans == model.pretrained_cfg['input_size'][0] == 3
    assert model.num_features == model.head_hidden_size == TOKEN_CHS
    assert isinstance(model.feature_info, list) and len(model.feature_info) == len(FEATURE_MODULES)
    for info, module, reduction in zip(model.feature_info, FEATURE_MODULES, REDUCTIONS):
        assert {'num_chs', 'reduction', 'module'} <= info.keys()
        assert (info['module'], info['reduction']) == (module, reduction)
        model.get_submodule(info['module'])  # names a real module


def test_feature_info_matches_layer_outputs(model_name, photos):
    model = timm.create_model(model_name).eval()
    outputs = {}
    for info in model.feature_info:
        model.get_submodule(info['module']).register_forward_hook(
            lambda mod, args, out, name=info['module']: outputs.__setitem__(name, out))
    with torch.no_grad():
        model(photos(MAPS_SIZE))
    for info, size in zip(model.feature_info, map_sizes(MAPS_SIZE)):
        assert outputs[info['module']].shape == (BATCH, info['num_chs'], *size), info


def test_forward_features_head_and_forward(model_name, photos):
    model = token_diverse_model(model_name, photos, drop_rate=0.5)  # dropout is off in eval
    x = photos(MAPS_SIZE)
    with torch.no_grad():
        tokens = model.forward_features(x)
        pre_logits = model.forward_head(tokens, pre_logits=True)
        head_logits = model.forward_head(tokens)
        logits = model(x)
    assert_tokens(tokens)
    assert pre_logits.shape == (BATCH, TOKEN_CHS)
    torch.testing.assert_close(pre_logits, tokens.mean(dim=1))
    assert not torch.allclose(pre_logits, tokens.amax(dim=1)), 'tokens too alike to check the pooling'
    assert logits.shape == (BATCH, 1000)
    assert torch.equal(logits, head_logits)
    torch.testing.assert_close(logits, F.linear(pre_logits, model.fc.weight, model.fc.bias))


# --- classifier -------------------------------------------------------------------------------

# (initial global_pool, reset_classifier args, pooling expected afterwards)
RESET_CASES = [
    ('avg', (5,), 'avg'),
    ('avg', (0,), 'avg'),
    ('avg', (0, ''), ''),
    ('', (3,), ''),  # global_pool=None keeps the current pooling
    ('avg', (0, 'max'), 'max'),
    ('max', (4, None), 'max'),
]


def test_reset_classifier_heads(model_name, photos):
    model = token_diverse_model(model_name, photos)
    assert model.get_classifier() is model.fc
    x = photos(SMALL)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert not torch.allclose(tokens.amax(dim=1), tokens.mean(dim=1)), 'tokens too alike to tell pools apart'
        for initial_pool, args, pool in RESET_CASES:
            model.reset_classifier(0, initial_pool)
            model.reset_classifier(*args)
            num_classes = args[0]
            case = f'{initial_pool!r} then reset_classifier{args}'
            assert model.global_pool == pool and model.num_classes == num_classes, case
            assert model.get_classifier() is model.fc, case
            expected = POOLS[pool](tokens)
            if num_classes:
                assert model.fc.out_features == num_classes and model.fc.in_features == TOKEN_CHS, case
                expected = model.fc(expected)
            out = model(x)
            assert out.shape == expected.shape, case
            torch.testing.assert_close(out, expected, msg=case)


def test_global_pool_max_differs_from_avg(model_name, photos):
    model = token_diverse_model(model_name, photos, global_pool='max', num_classes=0)
    with torch.no_grad():
        tokens = model.forward_features(photos(SMALL))
        pooled = model.forward_head(tokens)
    torch.testing.assert_close(pooled, tokens.amax(dim=1))
    assert not torch.allclose(pooled, tokens.mean(dim=1))


@pytest.mark.parametrize('training', [True, False])
def test_reset_classifier_keeps_training_mode(model_name, training):
    model = meta_model(model_name).train(training)
    model.reset_classifier(10)
    assert model.fc.training is training


def test_reset_classifier_device_dtype_and_frozen_params(model_name):
    model = meta_model(model_name, dtype=torch.bfloat16)
    for param in model.parameters():
        param.requires_grad_(False)
    model.reset_classifier(10)
    assert model.fc.weight.is_meta and model.fc.weight.dtype == torch.bfloat16
    assert model.fc.weight.requires_grad, 'the new head should be trainable'
    still_frozen = [n for n, p in model.named_parameters() if not n.startswith('fc.')]
    assert still_frozen and not any(model.get_parameter(n).requires_grad for n in still_frozen)


@pytest.mark.parametrize('where', ['constructor', 'reset_classifier'])
def test_invalid_global_pool_raises(model_name, where):
    with pytest.raises(ValueError, match='global_pool'):
        if where == 'constructor':
            meta_model(model_name, global_pool='token')
        else:
            meta_model(model_name).reset_classifier(10, 'token')


# --- feature maps -----------------------------------------------------------------------------

@pytest.mark.parametrize('feature_cls', [None, 'getter', 'fx'])
@pytest.mark.parametrize('out_indices', [None, (1, 3)])
def test_features_only(model_name, photos, feature_cls, out_indices):
    kwargs = {k: v for k, v in dict(feature_cls=feature_cls, out_indices=out_indices).items() if v is not None}
    features = timm.create_model(model_name, features_only=True, **kwargs).eval()
    model = timm.create_model(model_name).eval()
    load_weights_from(feature_backbone(features), model)
    levels = list(out_indices or range(len(FEATURE_MODULES)))

    x = photos(MAPS_SIZE)
    with torch.no_grad():
        maps = features(x)
        expected = model.forward_intermediates(x, indices=levels, intermediates_only=True)
    assert features.feature_info.channels() == [model.feature_info[i]['num_chs'] for i in levels]
    assert features.feature_info.reduction() == [REDUCTIONS[i] for i in levels]
    assert len(maps) == len(levels)
    sizes = map_sizes(MAPS_SIZE)
    for fmap, ref, channels, level in zip(maps, expected, features.feature_info.channels(), levels):
        assert fmap.shape == (BATCH, channels, *sizes[level])
        torch.testing.assert_close(fmap, ref)


def test_forward_intermediates_match_features_only(model_name, photos):
    model = timm.create_model(model_name).eval()
    features = timm.create_model(model_name, features_only=True).eval()
    load_weights_from(features, model)
    x = photos(SMALL)
    with torch.no_grad():
        tokens, maps = model.forward_intermediates(x)
        only_maps = model.forward_intermediates(x, intermediates_only=True)
        torch.testing.assert_close(tokens, model.forward_features(x))
        expected = features(x)
    assert_tokens(tokens)
    assert len(maps) == len(only_maps) == len(expected) == len(FEATURE_MODULES)
    for fmap, only, ref in zip(maps, only_maps, expected):
        torch.testing.assert_close(fmap, ref)
        assert torch.equal(only, fmap)


@pytest.mark.parametrize('indices, levels', [(2, [2, 3]), (1, [3]), ([0, 2], [0, 2]), ([1], [1])])
def test_forward_intermediates_indices(model_name, photos, indices, levels):
    model = timm.create_model(model_name).eval()
    x = photos(SMALL)
    with torch.no_grad():
        all_maps = model.forward_intermediates(x, intermediates_only=True)
        maps = model.forward_intermediates(x, indices=indices, intermediates_only=True)
    assert len(maps) == len(levels)
    for fmap, level in zip(maps, levels):
        assert torch.equal(fmap, all_maps[level])


def test_forward_intermediates_stop_early_and_format(model_name, photos):
    model = timm.create_model(model_name).eval()
    x = photos(SMALL)
    with torch.no_grad():
        full_tokens, all_maps = model.forward_intermediates(x)
        last, maps = model.forward_intermediates(x, indices=[1], stop_early=True)
        tokens, _ = model.forward_intermediates(x, indices=[1, 3], stop_early=True)
    assert len(maps) == 1 and torch.equal(maps[0], all_maps[1])
    assert torch.equal(last, all_maps[1]), 'stop_early should return the output of the last run level'
    assert torch.equal(tokens, full_tokens), 'stopping after the last level still runs the VT stage'
    with pytest.raises(AssertionError, match='NCHW'):
        model.forward_intermediates(x, output_fmt='NHWC')


def test_prune_intermediate_layers(model_name, photos):
    model = timm.create_model(model_name).eval()
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers(indices=[1, 2]) == [1, 2]
    removed = [n for n, _ in pruned.named_parameters() if n.startswith(('layer3.', 'vt.', 'fc.'))]
    assert not removed, f'pruning kept parameters no requested level needs: {removed[:3]}'

    x = photos(SMALL)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        maps = pruned.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    assert len(maps) == 2
    for fmap, ref in zip(maps, expected):
        torch.testing.assert_close(fmap, ref)

    pruned.train()
    maps = pruned.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    sum(fmap.mean() for fmap in maps).backward()
    assert not params_without_grad(pruned)


# --- training helpers -------------------------------------------------------------------------

def test_grad_checkpointing_is_exact(model_name, photos):
    model = timm.create_model(model_name, zero_init_last=False).train()  # every branch active
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.grad_checkpointing and not model.grad_checkpointing
    # a checkpointed module starts again during backward: count starts to prove checkpointing is on
    calls = {'layer3': 0, 'vt': 0}
    for key, module in (('layer3', checkpointed.layer3[-1]), ('vt', checkpointed.vt.blocks[0])):
        module.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))

    x = photos(SMALL)
    logits = classification_step(model, x)
    logits_ckpt = classification_step(checkpointed, x)
    assert calls == {'layer3': 2, 'vt': 2}, f'expected recomputation in backward, got {calls}'
    torch.testing.assert_close(logits_ckpt, logits)
    for (name, param), param_ckpt in zip(model.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(param_ckpt.grad, param.grad, msg=name)


def test_group_matcher(model_name):
    model = meta_model(model_name)
    names = [name for name, _ in model.named_parameters()]
    num_groups = {}
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        grouped = [name for group in groups.values() for name in group]
        assert sorted(grouped) == sorted(names), 'each parameter must be in exactly one group'
        # layer-wise LR decay needs groups ordered by depth: stem first, head last
        group_of = {name: gid for gid, group in groups.items() for name in group}
        order = [group_of[name] for name in names]
        assert order == sorted(order), f'groups are not in forward order (coarse={coarse})'
        assert group_of['conv1.weight'] == min(groups) and group_of['fc.weight'] == max(groups)
        num_groups[coarse] = len(groups)
    assert num_groups[True] > 1
    assert num_groups[False] > num_groups[True]


def test_no_weight_decay_names_real_params(model_name):
    model = meta_model(model_name)
    no_wd = model.no_weight_decay()
    assert isinstance(no_wd, set)
    assert no_wd <= {name for name, _ in model.named_parameters()}


# --- export paths -----------------------------------------------------------------------------

@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_torchscript(model_name, photos):
    with set_scriptable(True):
        model = timm.create_model(model_name).eval()
    scripted = torch.jit.script(model)
    x = photos(SMALL)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(torch.jit.Error, match='expected 3 input channels'):
        scripted(photos(SMALL, in_chans=1))


def test_fx_feature_extractor(model_name, photos):
    model = timm.create_model(model_name).eval()
    traced = create_feature_extractor(model, return_nodes={'layer3': 'map', 'vt': 'tokens', 'fc': 'logits'})
    x = photos(SMALL)
    with torch.no_grad():
        out = traced(x)
        tokens, maps = model.forward_intermediates(x)
        logits = model(x)
    torch.testing.assert_close(out['map'], maps[3])
    torch.testing.assert_close(out['tokens'], tokens)
    torch.testing.assert_close(out['logits'], logits)

    traced.train()
    out = traced(x)
    sum(value.mean() for value in out.values()).backward()
    assert [n for n, _ in traced.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert not params_without_grad(traced)


# --- precision and gradients ------------------------------------------------------------------

def test_bfloat16(model_name, photos):
    model = timm.create_model(model_name).eval()
    model_bf16 = timm.create_model(model_name, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in model_bf16.parameters())
    model_bf16.load_state_dict(model.state_dict())  # the fp32 weights, rounded

    x = photos(SMALL)
    with torch.no_grad():
        logits = model_bf16(x.bfloat16())
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        features_bf16 = model_bf16.forward_head(model_bf16.forward_features(x.bfloat16()), pre_logits=True)
    assert logits.dtype == features_bf16.dtype == torch.bfloat16
    assert logits.shape == (BATCH, 1000) and torch.isfinite(logits).all()
    # bf16 keeps 8 significant bits (relative step 2**-8 ~ 0.4%; measured drift 0.3-0.5%):
    # allow ~5 steps, far below what a wrong cast or an fp32-only op would give
    rel_error = (features_bf16.float() - features).norm() / features.norm()
    assert rel_error < 0.02, f'bf16 pre-logits differ from fp32 by {rel_error:.2%}'
    assert F.cosine_similarity(features_bf16.float(), features).min() > 0.999


@pytest.mark.parametrize('zero_init_last', [False, True])
def test_every_parameter_gets_a_gradient(model_name, photos, zero_init_last):
    model = timm.create_model(model_name, zero_init_last=zero_init_last).train()
    zero_init_gammas = [n for n, p in model.named_parameters() if n.endswith('.weight') and not p.any()]
    classification_step(model, photos(SMALL))
    assert not params_without_grad(model)
    zero_grads = [n for n, p in model.named_parameters() if not p.grad.any()]
    if zero_init_last:
        # step 0 with zero-init last BNs: every residual branch outputs zero, so the parameters
        # inside a branch (before its zero gamma) legitimately get zero gradients. The zero gammas
        # themselves must get a gradient, or the branches could never start learning.
        assert zero_init_gammas, 'zero_init_last=True should zero the last BN of each branch'
        assert not set(zero_init_gammas) & set(zero_grads)
    else:
        assert not zero_init_gammas
        assert not zero_grads, f'parameters with an all-zero gradient: {zero_grads[:5]}'


# --- stochastic depth -------------------------------------------------------------------------

def test_drop_path_schedule(model_name):
    rate = 0.5
    model = meta_model(model_name, drop_path_rate=rate)
    rates = residual_unit_drop_rates(model)
    # one linear ramp over ResNet blocks and VT modules, from 0 up to drop_path_rate
    assert rates == pytest.approx(torch.linspace(0, rate, len(rates)).tolist())
    vt_rates = rates[-len(model.vt.blocks):]
    assert all(a < b for a, b in zip(vt_rates, vt_rates[1:])) and vt_rates[-1] == pytest.approx(rate)
    for block in model.vt.blocks:
        assert any(isinstance(m, DropPath) for m in block.modules()), 'VT module without stochastic depth'


def test_no_drop_path_modules_at_rate_zero(model_name):
    model = meta_model(model_name, drop_path_rate=0.)
    assert not [name for name, m in model.named_modules() if isinstance(m, DropPath)]


def test_drop_path_is_stochastic_in_train_only(model_name, photos):
    # zero_init_last=False: zero-initialised closing BNs make every residual branch 0, dropped or not
    model = timm.create_model(model_name, drop_path_rate=0.5, zero_init_last=False)
    x = photos(SMALL)

    def tokens(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model.forward_features(x)

    model.train()  # batch-stat BN is deterministic for a fixed batch: only DropPath draws randomness
    assert torch.equal(tokens(0), tokens(0))
    assert not torch.allclose(tokens(0), tokens(1))
    model.eval()
    assert torch.equal(tokens(0), tokens(1))


# --- inputs -----------------------------------------------------------------------------------

def test_grey_input(model_name, photos):
    model = timm.create_model(model_name, num_classes=10, in_chans=1).eval()
    assert model.in_chans == 1 and model.conv1.weight.shape[1] == 1
    x = photos(SMALL, in_chans=1)
    with torch.no_grad():
        tokens = model.forward_features(x)
        logits = model(x)
    assert_tokens(tokens)
    assert logits.shape == (BATCH, 10) and torch.isfinite(logits).all()
    with pytest.raises(AssertionError, match='expected 1 input channels'):
        model(photos(SMALL))


@pytest.mark.parametrize('size', [(64, 64), (96, 96), (128, 128), (64, 96), (128, 80), (48, 96)])
def test_input_sizes(model_name, photos, size):
    model = timm.create_model(model_name).eval()
    with torch.no_grad():
        tokens, maps = model.forward_intermediates(photos(size))
    assert_tokens(tokens)
    assert [tuple(fmap.shape[-2:]) for fmap in maps] == map_sizes(size)


@pytest.mark.parametrize('case, match', [
    ('grey', r'expected 3 input channels'),
    ('unbatched', r'expected an image batch'),
    ('32x32', r'too small.*64x64'),
    ('48x80', r'too small.*64x64'),  # 3x5 = 15 map pixels: one fewer than the 16 tokens
])
@pytest.mark.parametrize('entry', ['forward', 'forward_intermediates'])
def test_bad_input_raises_clear_error(model_name, photos, case, match, entry):
    x = {
        'grey': lambda: photos(SMALL, in_chans=1),
        'unbatched': lambda: photos(SMALL)[0],
        '32x32': lambda: photos((32, 32)),
        '48x80': lambda: photos((48, 80)),
    }[case]()
    model = meta_model(model_name)  # the check must fire before any compute (else: device error)
    with pytest.raises(AssertionError, match=match):
        getattr(model, entry)(x)


def test_pretrained_without_published_weights_raises(model_name):
    """No weights source in the cfg: an error naming the tag and the remedies (timm itself only warns)."""
    with pytest.raises(RuntimeError, match=f'{model_name}.untrained: no pretrained weights are published') as error:
        timm.create_model(model_name, pretrained=True)
    assert 'pretrained_cfg_overlay' in str(error.value) and 'local-dir:' in str(error.value)


def test_pretrained_from_local_file(model_name, tmp_path):
    """The remedy the error names: a local file, adapted by timm through first_conv/classifier."""
    source = timm.create_model(model_name)
    path = tmp_path / 'model.pth'
    torch.save(source.state_dict(), path)
    model = timm.create_model(
        model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), in_chans=1, num_classes=10)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert model.fc.weight.shape == (10, TOKEN_CHS)
    source_state = source.state_dict()
    for name, tensor in model.state_dict().items():
        if not name.startswith(('conv1.', 'fc.')):
            assert torch.equal(tensor, source_state[name]), name
