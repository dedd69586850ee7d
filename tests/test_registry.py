"""An honest registry: timm lists a VT-ResNet tag as pretrained only where its weights exist.

timm decides it from the pretrained cfg alone: ``PretrainedCfg.has_weights`` (an ``hf_hub_id``, ``url`` or
``file``) puts a tag in ``timm.list_models(pretrained=True)``. No weights are published, so each architecture
has one cfg without a source, under timm's tag for that (``untrained``; 193 of timm 1.0.31's 226 weightless
cfgs use it), that still holds every preprocessing and adaptation field. A published tag is one more
``default_cfgs`` entry with an ``hf_hub_id``: the last test adds one in a child process (timm's registry is
process-global and has no public way to undo a registration) and checks that timm then lists and loads it.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from timm.models import generate_default_cfgs, get_pretrained_cfg, is_model_pretrained

from vt_timm.models import vt_resnet

MODEL_NAMES = ('vt_resnet18', 'vt_resnet34', 'vt_resnet50', 'vt_resnet101')


def test_no_tag_is_listed_as_pretrained():
    assert timm.list_models('vt_*', pretrained=True) == []
    assert timm.list_pretrained('vt_*') == []
    assert not any(is_model_pretrained(name) for name in timm.list_models('vt_*', include_tags=True))
    assert sorted(timm.list_models('vt_*')) == sorted(MODEL_NAMES)  # the architectures stay registered
    assert sorted(timm.list_models('vt_*', include_tags=True)) == sorted(f'{n}.untrained' for n in MODEL_NAMES)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_the_cfg_keeps_every_field_but_a_weights_source(name):
    cfg = get_pretrained_cfg(name)
    assert (cfg.architecture, cfg.tag) == (name, 'untrained')
    assert not cfg.has_weights and (cfg.hf_hub_id, cfg.url, cfg.file, cfg.state_dict) == (None,) * 4
    assert (cfg.input_size, cfg.min_input_size, cfg.crop_pct, cfg.interpolation) == ((3, 224, 224), (3, 64, 64),
                                                                                      0.875, 'bilinear')
    assert (tuple(cfg.mean), tuple(cfg.std)) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert (cfg.first_conv, cfg.classifier, cfg.num_classes) == ('conv1', 'fc', 1000)
    assert (cfg.license, cfg.paper_ids, cfg.origin_url) == ('apache-2.0', 'arXiv:2006.03677',
                                                            'https://arxiv.org/abs/2006.03677')


def test_a_built_model_carries_the_cfg():
    model = timm.create_model('vt_resnet18', device='meta')
    assert model.pretrained_cfg['tag'] == 'untrained' and 'hf_hub_id' not in model.pretrained_cfg
    assert model.pretrained_cfg['input_size'] == (3, 224, 224) and model.pretrained_cfg['first_conv'] == 'conv1'
    data_cfg = resolve_data_config(model=model)
    assert (data_cfg['input_size'], data_cfg['crop_pct'], data_cfg['interpolation']) == ((3, 224, 224), 0.875,
                                                                                         'bilinear')
    # the explicit tag builds the same model
    assert timm.create_model('vt_resnet18.untrained', device='meta').pretrained_cfg == model.pretrained_cfg


@pytest.mark.parametrize('name', ['vt_resnet18', 'vt_resnet50.untrained'])
def test_pretrained_true_raises_clearly(name):
    """timm only logs a warning for a cfg without weights; VT-ResNet refuses, naming the remedies."""
    with pytest.raises(RuntimeError, match=r'\.untrained: no pretrained weights are published') as error:
        timm.create_model(name, pretrained=True, device='meta')
    for remedy in ('pretrained_cfg_overlay=dict(file=', 'local-dir:', 'pretrained=False',
                   'timm.list_models(pretrained=True)'):
        assert remedy in str(error.value)


def test_a_weights_source_in_the_overlay_is_accepted(tmp_path):
    """The check reads the resolved cfg: an overlay's file is a source (a missing one fails on the file)."""
    missing = tmp_path / 'model.safetensors'
    with pytest.raises(RuntimeError, match=f'pretrained weights {missing} cannot be loaded'):
        timm.create_model('vt_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


def test_timm_marks_an_entry_with_hf_hub_id_as_pretrained():
    """What generate_default_cfgs (public) makes of a published tag next to the untrained one."""
    arch = 'vt_resnet18'
    cfgs = generate_default_cfgs({
        f'{arch}.untrained': vt_resnet._cfg(),
        f'{arch}.in1k': vt_resnet._cfg(hf_hub_id=f'{vt_resnet.HF_HUB_ORG}/{arch}.in1k'),
    })[arch]
    assert cfgs.is_pretrained and list(cfgs.tags) == ['in1k', 'untrained']  # the tag with weights is the default
    assert cfgs.cfgs['in1k'].has_weights and not cfgs.cfgs['untrained'].has_weights
    assert not vt_resnet.default_cfgs[arch].is_pretrained


PUBLISH = textwrap.dedent('''
    import sys, types, warnings
    import timm
    from timm.models import generate_default_cfgs, register_model
    from vt_timm.models import vt_resnet

    # what publishing is: one more default_cfgs entry with an hf_hub_id (here in a stand-in module)
    module = types.ModuleType('published_vt_resnet')
    module.default_cfgs = generate_default_cfgs({
        **{f'vt_resnet18.{tag}': cfg for tag, cfg in vt_resnet.default_cfgs['vt_resnet18'].cfgs.items()},
        'vt_resnet18.in1k': vt_resnet._cfg(hf_hub_id='vt-timm/vt_resnet18.in1k'),
    })
    sys.modules[module.__name__] = module

    def vt_resnet18(pretrained=False, **kwargs):
        return vt_resnet.vt_resnet18(pretrained, **kwargs)

    vt_resnet18.__module__ = module.__name__
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # timm warns that it overwrites the registered name
        register_model(vt_resnet18)
    print(timm.list_models('vt_*', pretrained=True))
    print(timm.models.get_pretrained_cfg('vt_resnet18').hf_hub_id)
    try:
        timm.create_model('vt_resnet18', pretrained=True)  # offline (HF_HUB_OFFLINE=1), nothing cached
    except RuntimeError as e:
        print(str(e).split(':', 1)[0], '|', str(e)[:120])
''')


def test_a_published_tag_is_one_entry_away():
    result = subprocess.run([sys.executable, '-c', PUBLISH], capture_output=True, text=True, timeout=120,
                            env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert result.returncode == 0, result.stderr[-3000:]
    listed, hub_id, error = result.stdout.splitlines()
    assert listed == "['vt_resnet18.in1k']"
    assert hub_id == 'vt-timm/vt_resnet18.in1k'
    # timm now tries the Hub (offline here): the error names the tag and its source, not a missing cfg
    assert error.startswith('vt_resnet18.in1k |') and 'hf-hub:vt-timm/vt_resnet18.in1k' in error
    # and this process's registry is untouched
    assert timm.list_models('vt_*', pretrained=True) == []
