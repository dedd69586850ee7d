"""hubconf.py through torch.hub itself: a GitHub-style cached checkout (no network) and source='local'."""
from pathlib import Path

import pytest
import timm
import torch

import hubconf

ROOT = Path(__file__).resolve().parents[1]
MODELS = ['vt_resnet101', 'vt_resnet18', 'vt_resnet34', 'vt_resnet50']


@pytest.fixture
def hub_repo(tmp_path):
    """'vt-timm/vt_timm:main' as torch.hub caches a GitHub checkout: <hub dir>/vt-timm_vt_timm_main."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    (tmp_path / 'vt-timm_vt_timm_main').symlink_to(ROOT, target_is_directory=True)
    yield 'vt-timm/vt_timm:main'
    torch.hub.set_dir(previous)


def test_list_shows_the_models_and_nothing_else(hub_repo):
    assert torch.hub.list(hub_repo, trust_repo=True, skip_validation=True) == MODELS


@pytest.mark.parametrize('name', MODELS)
def test_help_documents_each_entry(hub_repo, name):
    text = torch.hub.help(hub_repo, name, trust_repo=True, skip_validation=True)
    assert text.startswith(timm.models.model_entrypoint(name).__doc__)
    assert 'pretrained' in text and 'timm.create_model' in text


def test_local_load_builds_timm_models_with_kwargs():
    model = torch.hub.load(str(ROOT), 'vt_resnet18', source='local', num_classes=7, in_chans=1)
    assert (type(model).__name__, model.num_classes, model.in_chans) == ('VTResNet', 7, 1)
    reference = timm.create_model('vt_resnet18', num_classes=7, in_chans=1)
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_pretrained_loads_a_local_file(tmp_path, photos):
    source = timm.create_model('vt_resnet34').eval()
    torch.save(source.state_dict(), tmp_path / 'weights.pth')
    model = torch.hub.load(str(ROOT), 'vt_resnet34', source='local', pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(tmp_path / 'weights.pth'))).eval()
    x = photos((96, 96))
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_dependencies_are_importable_and_declared():
    """torch.hub checks ``dependencies`` before loading: each must import and be a declared dependency of
    the package (pyproject.toml), so the two lists cannot drift apart."""
    import re
    import tomllib

    declared = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    names = {re.split(r'[<>=!~\[; ]', d, maxsplit=1)[0].lower().replace('-', '_') for d in declared}
    assert {'torch', 'timm'} <= set(hubconf.dependencies)
    for name in hubconf.dependencies:
        __import__(name)
        assert name.lower() in names, f'{name} is in hubconf.dependencies but not in pyproject.toml'
