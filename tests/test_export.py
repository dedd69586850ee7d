"""ONNX and TorchScript export of every VT-ResNet (vt_timm/tools/export.py), checked on real photographs.

The models under test have every residual branch active (``zero_init_last=False``) and BN statistics
of four real photos at 224 px, as after training, so that every op of the graph moves the logits.
Random weights make these logits large (up to ~90) and the attention softmaxes sharp, which amplifies
float32 rounding (to up to 4e-3 here). The ONNX tolerance is therefore relative to PyTorch's own float32
rounding error on the same input, measured against a float64 copy of the model: ONNX Runtime's
kernels round differently from PyTorch's; |onnx - torch| measured 1.0-1.8x |torch32 - torch64| on
these models (0.5-2.3x on other random weights tried), while an export bug (a wrong op, a shape baked
in at the traced size, BN in train mode) moves the logits by about their own magnitude, >1000x that
error. The limit is ``ERROR_FACTOR`` (10) x the float32 error, as in ``python -m vt_timm.cli.export``.
"""
from pathlib import Path
from typing import Callable, List

import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn

import vt_timm.cli.export
from vt_timm.cli.export import main
from vt_timm.tools.export import ERROR_FACTOR, check_export, export_onnx, export_torchscript, float32_error, second_size
from reference import calibrated_model

MODEL_NAMES = ('vt_resnet18', 'vt_resnet34', 'vt_resnet50', 'vt_resnet101')
# ONNX, the slowest export (20-37 s a model on 2 cores): one model per block type. VT-ResNet-34 and -101
# are VT-ResNet-18 and -50 at other depths, the same modules and graph patterns (TorchScript covers all 4).
ONNX_MODEL_NAMES = ('vt_resnet18', 'vt_resnet50')
IMG_SIZE = 224
SIZES = ((IMG_SIZE, IMG_SIZE), second_size(IMG_SIZE))  # 224x224, then 256x168 through the dynamic axes
# TorchScript runs the same ATen kernels as eager PyTorch: equal up to float32 eps.
TORCHSCRIPT_RTOL = 1e-6

pytestmark = [
    pytest.mark.usefixtures('one_thread'),
    pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning'),
    pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning'),
]


def trained_like(name: str, photos: Callable[..., torch.Tensor], **kwargs) -> nn.Module:
    return calibrated_model(name, photos, (IMG_SIZE, IMG_SIZE), **kwargs)


@pytest.fixture(scope='module', params=MODEL_NAMES)
def model(request, photos) -> nn.Module:
    return trained_like(request.param, photos)


def assert_close_to_pytorch(model: nn.Module, diffs: List[float], inputs: List[torch.Tensor]) -> None:
    """Each export-vs-eager difference is within ``ERROR_FACTOR`` x PyTorch's own float32 error."""
    for x, diff, reference in zip(inputs, diffs, float32_error(model, inputs)):
        assert 0 < reference, 'float64 should differ from float32 somewhere'
        assert diff <= ERROR_FACTOR * reference, \
            f'{tuple(x.shape)}: |export - torch| {diff:.3g} > {ERROR_FACTOR:g} x |torch32 - torch64| {reference:.3g}'


def test_onnx_matches_pytorch(model, photos, tmp_path):
    if model.pretrained_cfg['architecture'] not in ONNX_MODEL_NAMES:
        pytest.skip(f'ONNX export is checked on {", ".join(ONNX_MODEL_NAMES)} (one per block type)')
    path = export_onnx(model, tmp_path / 'model.onnx', (3, IMG_SIZE, IMG_SIZE), dynamic_size=True)
    inputs = [photos(size, num=1) for size in SIZES]  # batch 1: the trace had 2, the batch axis is dynamic
    assert_close_to_pytorch(model, check_export(model, path, 'onnx', inputs), inputs)


def test_torchscript_matches_pytorch(model, photos, tmp_path):
    path = export_torchscript(model, tmp_path / 'model.pt')
    inputs = [photos(size, num=1) for size in SIZES]
    for x, diff in zip(inputs, check_export(model, path, 'torchscript', inputs)):
        with torch.no_grad():
            assert diff <= TORCHSCRIPT_RTOL * model(x).abs().max().item()


def test_scripted_models_keep_the_input_size_check(photos):
    """Every scripted model keeps it (an isinstance check on the VT stage did not survive TorchScript's
    type mangling for the second model scripted in a process)."""
    too_small = photos((48, 48), num=1)
    for name in ('vt_resnet18', 'vt_resnet34'):
        scripted = torch.jit.script(timm.create_model(name).eval())
        with pytest.raises(torch.jit.Error, match='too small'):
            scripted(too_small)


def ema_checkpoint(model: nn.Module, path: Path) -> Path:
    """A train.py-style pickled checkpoint whose EMA weights are ``model``'s and whose raw weights differ."""
    raw = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({'epoch': 3, 'state_dict': raw, 'state_dict_ema': model.state_dict()}, path)
    return path


def safetensors_checkpoint(model: nn.Module, path: Path) -> Path:
    safetensors.torch.save_file(model.state_dict(), path)
    return path


@pytest.mark.parametrize('fmt, save_checkpoint, name, extra', [
    ('onnx', safetensors_checkpoint, 'w.safetensors', ['--dynamic-size']),
    ('torchscript', ema_checkpoint, 'w.pth.tar', ['--use-ema']),
], ids=['onnx-safetensors', 'torchscript-pickled-ema'])
def test_cli_exports_checkpoint_weights(fmt, save_checkpoint, name, extra, photos, tmp_path, capsys):
    """The exported file holds the checkpoint's weights (grey input, 10 classes) and replaces an older file."""
    model = trained_like('vt_resnet18', photos, num_classes=10, in_chans=1)
    output = tmp_path / f'model.{fmt}'
    output.write_bytes(b'an older export')
    diffs = main([
        '--model', 'vt_resnet18', '--num-classes', '10', '--in-chans', '1', '--format', fmt,
        '--checkpoint', str(save_checkpoint(model, tmp_path / name)), '--output', str(output), *extra,
    ])
    assert list(diffs) == list(SIZES), 'the size-agnostic export should be checked at both sizes'
    assert capsys.readouterr().out.count(f'max |{fmt} - PyTorch|') == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, output.name]), 'temporary file left'
    inputs = [photos(size, num=1, in_chans=1) for size in SIZES]
    assert_close_to_pytorch(model, check_export(model, output, fmt, inputs), inputs)


def test_cli_keeps_old_file_when_check_fails(tmp_path, monkeypatch):
    output = tmp_path / 'model.pt'
    output.write_bytes(b'an older export')
    monkeypatch.setattr(vt_timm.cli.export, 'check_export', lambda model, path, fmt, inputs: [1.] * len(inputs))
    with pytest.raises(SystemExit, match='not written: the export differs from the PyTorch model by 1'):
        main(['--format', 'torchscript', '--output', str(output)])
    assert output.read_bytes() == b'an older export'
    assert list(tmp_path.iterdir()) == [output]


class NotAWeight:
    """A pickled object that ``torch.load(weights_only=True)`` must refuse to construct."""


@pytest.mark.parametrize('argv, match', [
    (['--checkpoint', 'missing.safetensors'], 'missing.safetensors: no such file'),
    (['--image', 'missing.jpg'], 'missing.jpg: no such file'),
    (['--model', 'vt_resnet7'], 'vt_resnet7: unknown model'),
    (['--output', 'no_such_dir/model.onnx'], 'directory no_such_dir does not exist'),
    (['--output', '.'], 'is a directory; expected a file path'),
    (['--format', 'torchscript', '--dynamic-size'], 'apply to --format onnx only'),
    (['--format', 'torchscript', '--opset', '18'], 'apply to --format onnx only'),
    (['--opset', '17'], 'opset 17 is not supported; expected 18 or later'),
    (['--img-size', '48'], '--img-size 48: vt_resnet18 needs at least 64'),
])
def test_cli_bad_input(argv, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=match):
        main(['--output', 'model.onnx', *argv])
    assert list(tmp_path.iterdir()) == []


def test_cli_unknown_format(capsys):
    with pytest.raises(SystemExit):
        main(['--format', 'tflite', '--output', 'model.tflite'])
    err = capsys.readouterr().err
    assert "invalid choice: 'tflite'" in err and 'onnx' in err and 'torchscript' in err


@pytest.mark.parametrize('content, match', [
    ({'state_dict': {'fc.weight': torch.zeros(3, 3)}}, 'bad.pth does not fit vt_resnet18 .*the file has num_classes=3'),
    ({'state_dict': {}, 'extra': NotAWeight()}, 'weights_only=True blocked'),
])
def test_cli_rejects_bad_checkpoint(content, match, tmp_path):
    torch.save(content, tmp_path / 'bad.pth')
    with pytest.raises(SystemExit, match=match):
        main(['--checkpoint', str(tmp_path / 'bad.pth'), '--output', str(tmp_path / 'model.onnx')])
    assert not (tmp_path / 'model.onnx').exists()


def test_failed_export_keeps_existing_file(tmp_path, monkeypatch):
    """An export that dies halfway through writing leaves the previous file and no temporary file."""
    class HalfWritten:
        def save(self, path: str) -> None:
            Path(path).write_bytes(b'half')
            raise OSError('disk full')

    output = tmp_path / 'model.pt'
    output.write_bytes(b'good')
    monkeypatch.setattr(torch.jit, 'script', lambda model: HalfWritten())
    with pytest.raises(OSError, match='disk full'):
        export_torchscript(nn.Identity(), output)
    assert output.read_bytes() == b'good'
    assert list(tmp_path.iterdir()) == [output]


def test_api_bad_input(tmp_path):
    with pytest.raises(ValueError, match='expected one of'):
        check_export(nn.Identity(), tmp_path / 'model.onnx', 'tflite', [])
    with pytest.raises(ValueError, match='does not exist'):
        export_torchscript(nn.Identity(), tmp_path / 'missing' / 'model.pt')
    with pytest.raises(ValueError, match='expected 18 or later'):
        export_onnx(nn.Identity(), tmp_path / 'model.onnx', (3, 8, 8), opset=16)
    assert list(tmp_path.iterdir()) == []
