"""Export -> load through every route timm offers, offline, bit for bit; and unsafe or broken weights fail clearly.

The exported model is a VT-ResNet-18 trained by train.py on real Fashion-MNIST (with EMA). The Hub
routes go through the real huggingface_hub client: a first process downloads from a local HTTP
server that speaks the Hub's file protocol into a fresh cache, a second one loads from that cache
with ``HF_HUB_OFFLINE=1`` and no server.
"""
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict

import pytest
import safetensors.torch
import timm
import torch
import torchvision
import yaml

from vt_timm.cli import train
from vt_timm.cli import validate
from vt_timm.cli import hub
from vt_timm.models import vt_resnet
from vt_timm.tools import hub as hub_tools

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / 'vt_timm' / 'configs' / 'quickstart_fashion_mnist.yaml')
FMNIST_REPO = 'vt-timm-test/vt_resnet18.fmnist'
# where a published tag's weights go (what a default_cfgs entry _cfg(hf_hub_id=...) points timm at)
IN1K_REPO = f'{vt_resnet.HF_HUB_ORG}/vt_resnet18.in1k'
PUBLISHED = 'vt_resnet18 (hf_hub_id)'
COMMIT = 'a' * 40


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    """A short real train.py run with EMA, and validate.py's results for its EMA weights."""
    root = tmp_path_factory.mktemp('hub')
    train.main(['-c', QUICKSTART, '--data-dir', str(root / 'data'), '--output', str(root), '--experiment', 'run',
                '--train-num-samples', '256', '--val-num-samples', '64', '--epochs', '1', '-b', '32',
                '--model-ema', '--model-ema-decay', '0.5'])
    run_dir = root / 'run'
    validate.main(['-c', str(run_dir / 'args.yaml'), '--checkpoint', str(run_dir / 'last.pth.tar'), '--use-ema',
                   '--results-file', str(run_dir / 'results.json'), '--results-format', 'json'])
    return run_dir


@pytest.fixture(scope='module')
def exported(trained_run):
    """(Hub folder, the model it was exported from) for the run's EMA weights."""
    out = trained_run.parent / 'export'
    hub.main(['export', str(trained_run / 'last.pth.tar'), '--out', str(out), '--tag', 'fmnist', '--use-ema',
              '--results', str(trained_run / 'results.json'), '--repo-id', FMNIST_REPO])
    model = hub_tools.load_trained_model(trained_run / 'last.pth.tar', yaml.safe_load((trained_run / 'args.yaml').read_text()),
                                   use_ema=True)
    return out, model


@pytest.fixture(scope='module')
def rgb_exported(tmp_path_factory):
    """(Hub folder, model) for an ImageNet-shaped VT-ResNet-18 (3 channels, 1000 classes) from a plain state dict."""
    root = tmp_path_factory.mktemp('rgb')
    torch.manual_seed(0)
    model = timm.create_model('vt_resnet18').eval()
    safetensors.torch.save_file(model.state_dict(), root / 'weights.safetensors')
    (root / 'args.yaml').write_text('model: vt_resnet18\n')
    hub.main(['export', str(root / 'weights.safetensors'), '--out', str(root / 'export'), '--tag', 'in1k'])
    return root / 'export', model


def _outputs(model: torch.nn.Module, photos, in_chans: int) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(photos((64, 64), num=4, in_chans=in_chans))


def test_export_writes_a_complete_hub_folder(exported, trained_run):
    out, _ = exported
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert (config['architecture'], config['num_classes']) == ('vt_resnet18', 10)
    # transformers' TimmWrapper passes num_classes itself: model_args must not repeat it (TypeError otherwise)
    assert config['model_args'] == {'in_chans': 1, 'global_pool': 'avg'}
    assert config['label_names'] == torchvision.datasets.FashionMNIST.classes  # from the run's dataset
    cfg = config['pretrained_cfg']
    assert (cfg['tag'], cfg['input_size'], cfg['mean'], cfg['std']) == ('fmnist', [1, 64, 64], [0.286], [0.353])
    checkpoint = torch.load(trained_run / 'last.pth.tar', weights_only=True)
    weights = safetensors.torch.load_file(out / 'model.safetensors')
    assert weights.keys() == checkpoint['state_dict_ema'].keys()
    assert all(torch.equal(weights[k], checkpoint['state_dict_ema'][k]) for k in weights)  # EMA, not raw
    assert not all(torch.equal(weights[k], checkpoint['state_dict'][k]) for k in weights)
    card = (out / 'README.md').read_text()
    results = json.loads((trained_run / 'results.json').read_text())
    for expected in (f'| {results["top1"]:.2f} |', 'Params (M): 10.68', 'arxiv.org/abs/2006.03677', '@inproceedings',
                     'license: apache-2.0', f"hf-hub:{FMNIST_REPO}", 'EMA weights', 'torch/fashion_mnist'):
        assert expected in card, expected
    blocks = re.findall(r'```python\n(.*?)```', card, flags=re.S)
    assert len(blocks) == 2 and all(block.startswith('import vt_timm') for block in blocks)
    assert not list(out.parent.glob('.export.*')), 'staging folder left behind'


def test_local_dir_route_is_bit_identical(exported, photos):
    out, model = exported
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert (loaded.num_classes, loaded.in_chans) == (10, 1)
    assert loaded.pretrained_cfg['label_names'] == torchvision.datasets.FashionMNIST.classes
    assert torch.equal(_outputs(loaded, photos, 1), _outputs(model, photos, 1))


def test_file_overlay_route_is_bit_identical(exported, photos):
    out, model = exported
    loaded = timm.create_model('vt_resnet18', pretrained=True, num_classes=10, in_chans=1,
                               pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=10))
    assert torch.equal(_outputs(loaded, photos, 1), _outputs(model, photos, 1))


def test_other_num_classes_reinitialises_only_the_head(exported):
    out, model = exported
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True, num_classes=5)
    assert loaded.fc.weight.shape == (5, model.num_features)
    source = model.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in loaded.state_dict().items() if not k.startswith('fc.'))


def test_in_chans_1_adapts_the_rgb_stem(rgb_exported):
    out, model = rgb_exported
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True, in_chans=1)
    torch.testing.assert_close(loaded.conv1.weight, model.conv1.weight.sum(dim=1, keepdim=True))
    source = model.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in loaded.state_dict().items() if not k.startswith('conv1.'))


class _HubFiles(BaseHTTPRequestHandler):
    """The Hub's file protocol (HEAD/GET /<repo_id>/resolve/<revision>/<file>) over local folders."""

    def _serve(self, body: bool) -> None:
        parts = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).strip('/').split('/')
        folder = self.server.repos.get('/'.join(parts[:2])) if len(parts) >= 5 and parts[2] == 'resolve' else None
        path = folder / '/'.join(parts[4:]) if folder else None
        self.server.requests.append(f'{self.command} {self.path}')
        if path is None or not path.is_file():
            self.send_response(404)
            self.send_header('X-Error-Code', 'RepoNotFound' if folder is None else 'EntryNotFound')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header('X-Repo-Commit', COMMIT)
        self.send_header('ETag', f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def log_message(self, *args) -> None:
        pass


LOAD_SCRIPT = """
import sys, torch, timm, vt_timm
torch.set_num_threads(int(sys.argv[2]))
inputs = torch.load(sys.argv[1] + '/inputs.pt', weights_only=True)
# a published tag is the architecture with an hf_hub_id in its pretrained cfg
routes = {sys.argv[3]: dict(model_name='vt_resnet18', pretrained_cfg_overlay=dict(hf_hub_id=sys.argv[4]))}
with torch.no_grad():
    outputs = {name: timm.create_model(pretrained=True, **routes.get(name, dict(model_name=name))).eval()(inputs[name])
               for name in inputs}
torch.save(outputs, sys.argv[1] + '/outputs.pt')
"""


def _load_in_subprocess(work: Path, env: Dict[str, str]) -> Dict[str, torch.Tensor]:
    result = subprocess.run([sys.executable, '-c', LOAD_SCRIPT, str(work), str(torch.get_num_threads()), PUBLISHED,
                             IN1K_REPO],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(work / 'outputs.pt', weights_only=True)


def test_hub_routes_download_once_then_load_offline(exported, rgb_exported, photos, tmp_path):
    """'hf-hub:org/name' and a published tag (vt_resnet18 whose pretrained cfg has an hf_hub_id) download
    into the cache, then load from it with HF_HUB_OFFLINE=1, bit-identical to the exported models."""
    (out, model), (rgb_out, rgb_model) = exported, rgb_exported
    inputs = {f'hf-hub:{FMNIST_REPO}': photos((64, 64), num=4, in_chans=1), PUBLISHED: photos((224, 224))}
    torch.save(inputs, tmp_path / 'inputs.pt')
    with torch.no_grad():
        expected = {f'hf-hub:{FMNIST_REPO}': model(inputs[f'hf-hub:{FMNIST_REPO}']),
                    PUBLISHED: rgb_model(inputs[PUBLISHED])}
    cache = tmp_path / 'hf-cache'
    server = ThreadingHTTPServer(('127.0.0.1', 0), _HubFiles)
    server.repos, server.requests = {FMNIST_REPO: out, IN1K_REPO: rgb_out}, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        online = _load_in_subprocess(tmp_path, {
            'HF_HUB_OFFLINE': '0', 'HF_HUB_CACHE': str(cache), 'HF_ENDPOINT': f'http://127.0.0.1:{server.server_port}'})
    finally:
        server.shutdown()
    downloads = [r for r in server.requests if r.startswith('GET') and '/resolve/' in r]
    assert sorted(r.rsplit('/', 1)[-1] for r in downloads) == ['config.json', 'model.safetensors', 'model.safetensors']
    offline = _load_in_subprocess(tmp_path, {
        'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(cache), 'HF_ENDPOINT': 'http://127.0.0.1:9'})
    for name in inputs:
        assert torch.equal(online[name], expected[name]), name
        assert torch.equal(offline[name], expected[name]), name
    assert (cache / f'models--{FMNIST_REPO.replace("/", "--")}' / 'snapshots' / COMMIT / 'model.safetensors').is_file()


def test_hub_weights_not_in_the_cache_fail_clearly_offline():
    """A published tag's weights that are not cached fail offline naming the tag and the Hub repo."""
    repo = f'{vt_resnet.HF_HUB_ORG}/vt_resnet34.in1k'
    with pytest.raises(RuntimeError, match=rf'vt_resnet34\.\w+: no weights could be fetched from hf-hub:{repo}'):
        timm.create_model('vt_resnet34', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=repo))


def _corrupt_copies(source: Path, root: Path) -> Dict[str, Path]:
    """Broken variants of a safetensors file: truncated, header tampered with, a tensor missing."""
    data = source.read_bytes()
    truncated = root / 'truncated.safetensors'
    truncated.write_bytes(data[:len(data) // 2])
    tampered = root / 'tampered.safetensors'
    tampered.write_bytes(data.replace(b'"F32"', b'"F16"', 1))
    weights = safetensors.torch.load_file(source)
    del weights['vt.blocks.0.tokenizer.attn.weight']
    missing = root / 'missing_key.safetensors'
    safetensors.torch.save_file(weights, missing)
    return {'truncated': truncated, 'tampered': tampered, 'missing': missing}


@pytest.mark.parametrize('num_classes', [10, 5])  # 5: timm drops the head and would load non-strictly
@pytest.mark.parametrize('kind', ['truncated', 'tampered', 'missing'])
def test_broken_weights_fail_naming_the_file(exported, tmp_path, kind, num_classes):
    out, _ = exported
    path = _corrupt_copies(out / 'model.safetensors', tmp_path)[kind]
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match=str(path)):
        timm.create_model('vt_resnet18', pretrained=True, num_classes=num_classes, in_chans=1,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    assert path.read_bytes() == before


def test_wrong_architecture_fails_naming_the_file(exported):
    out, _ = exported
    with pytest.raises(RuntimeError, match=f'vt_resnet34: pretrained weights {out}/model.safetensors cannot be'):
        timm.create_model('vt_resnet34', pretrained=True, num_classes=10, in_chans=1,
                          pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors')))


class _Exploit:
    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickle_weights_load_weights_only(tmp_path):
    """A .pth whose unpickling would run a command is refused; the command never runs."""
    _Exploit.marker = tmp_path / 'pwned'
    path = tmp_path / 'model.pth'
    path.write_bytes(pickle.dumps({'conv1.weight': _Exploit()}))
    with pytest.raises(RuntimeError, match=str(path)):
        timm.create_model('vt_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not _Exploit.marker.exists()


def test_export_refuses_bad_input_and_never_overwrites(exported, trained_run, tmp_path):
    out, _ = exported
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    checkpoint = str(trained_run / 'last.pth.tar')
    with pytest.raises(SystemExit, match='never overwrites'):
        hub.main(['export', checkpoint, '--out', str(out), '--tag', 'x'])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    torch.save({'state_dict': torch.load(checkpoint, weights_only=True)['state_dict']}, tmp_path / 'raw.pth')
    with pytest.raises(SystemExit, match='holds no EMA weights'):
        hub.main(['export', str(tmp_path / 'raw.pth'), '--out', str(tmp_path / 'a'), '--tag', 'x', '--use-ema',
                  '--args', str(trained_run / 'args.yaml')])
    with pytest.raises(SystemExit, match='args.yaml: no such file'):
        hub.main(['export', str(tmp_path / 'raw.pth'), '--out', str(tmp_path / 'b'), '--tag', 'x'])
    (tmp_path / 'corrupt.pth').write_bytes(b'garbage')
    with pytest.raises(SystemExit, match='corrupt.pth cannot be read as weights'):
        hub.main(['export', str(tmp_path / 'corrupt.pth'), '--out', str(tmp_path / 'c'), '--tag', 'x',
                  '--args', str(trained_run / 'args.yaml')])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['corrupt.pth', 'raw.pth']


def test_push_dry_run_lists_and_uploads_nothing(exported, capsys, tmp_path):
    out, _ = exported
    assert hub_tools.push(out, 'someone/vt_resnet18.fmnist', dry_run=True) == 'https://huggingface.co/someone/vt_resnet18.fmnist'
    printed = capsys.readouterr().out
    assert 'would upload to https://huggingface.co/someone/vt_resnet18.fmnist' in printed
    assert all(name in printed for name in ('config.json', 'model.safetensors', 'README.md'))
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(SystemExit, match=r"missing \['model.safetensors', 'README.md'\]"):
        hub_tools.push(tmp_path, 'someone/x', dry_run=True)
