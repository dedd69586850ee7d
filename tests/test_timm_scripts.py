"""timm's own train.py, validate.py, benchmark.py and inference.py on VT-ResNets, on CPU, as a user runs them.

The scripts are not in timm's wheel: the ``timm_scripts`` fixture (conftest.py) takes them from a clone of
pytorch-image-models at the commit the project's flag tables were read from (tests skip without one). Each
runs as a subprocess in a folder of its own (never inside a timm checkout, so the installed timm is the one
imported): train.py with timm's ``--device-modules vt_timm`` (which imports the module: it registers the
models), the others through ``python -m vt_timm.cli.run_script``. Data: a tiny ImageFolder of real
Fashion-MNIST images (2 classes, 8 training and 4 validation images each, as RGB PNGs).
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import timm
import torch
from PIL import Image

from vt_timm.cli import hub
from vt_timm.cli import validate
from vt_timm.tools.checkpoints import create_model_from_checkpoint
from vt_timm.tools.data import prepare_fashion_mnist

CLASSES = {1: 'Trouser', 7: 'Sneaker'}  # Fashion-MNIST label -> folder name
COUNTS = {'train': 8, 'validation': 4}  # images per class and split
SIZE = ['--input-size', '3', '64', '64']


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory) -> Path:
    """root/{train,validation}/{Trouser,Sneaker}/N.png from Fashion-MNIST's training and test files."""
    from torchvision.datasets import FashionMNIST

    work = tmp_path_factory.mktemp('fmnist')
    prepare_fashion_mnist(work / 'raw')
    root = work / 'images'
    for split, count in COUNTS.items():
        dataset = FashionMNIST(str(work / 'raw'), train=split == 'train', download=False)
        taken = {label: 0 for label in CLASSES}
        for index in range(len(dataset)):
            label = int(dataset.targets[index])
            if taken.get(label, count) < count:
                folder = root / split / CLASSES[label]
                folder.mkdir(parents=True, exist_ok=True)
                dataset[index][0].convert('RGB').save(folder / f'{taken[label]}.png')
                taken[label] += 1
            if all(n == count for n in taken.values()):
                break
    return root


def _run(args: List[str], cwd: Path) -> str:
    """Run ``python ARGS`` in ``cwd`` on one thread; its stdout and stderr, after checking it succeeded."""
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _run_script(script: Path, args: List[str], cwd: Path) -> str:
    return _run(['-m', 'vt_timm.cli.run_script', str(script), *args], cwd)


@pytest.fixture(scope='module')
def trained(timm_scripts, image_folder, tmp_path_factory) -> Path:
    """The run folder of one epoch of timm's train.py on the image folder (4 steps of batch 4)."""
    work = tmp_path_factory.mktemp('train')
    output = _run([str(timm_scripts / 'train.py'), '--device-modules', 'vt_timm', '--model', 'vt_resnet18',
                   '--device', 'cpu', '--data-dir', str(image_folder), *SIZE, '--num-classes', '2', '-b', '4',
                   '--epochs', '1', '--lr', '0.01', '--warmup-epochs', '0', '--workers', '0', '--seed', '0',
                   '--output', str(work), '--experiment', 'run'], work)
    assert re.search(r'Train: 0 \[\s*3/4 \(100%\)\]', output), output[-3000:]
    return work / 'run'


def test_train_writes_a_vt_resnet_checkpoint(trained):
    assert {'args.yaml', 'last.pth.tar', 'model_best.pth.tar', 'summary.csv'} <= {p.name for p in trained.iterdir()}
    with open(trained / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]['epoch'] == '0'
    assert all(torch.isfinite(torch.tensor(float(rows[0][k]))) for k in ('train_loss', 'eval_loss'))
    with torch.serialization.safe_globals([argparse.Namespace]):  # timm's train.py saves its args in the checkpoint
        checkpoint = torch.load(trained / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert checkpoint['arch'] == 'vt_resnet18' and checkpoint['epoch'] == 0
    model = create_model_from_checkpoint('vt_resnet18', str(trained / 'last.pth.tar'), num_classes=2)  # strict
    assert model.fc.out_features == 2


def test_validate_matches_the_projects_validate(timm_scripts, trained, image_folder, tmp_path):
    flags = ['--model', 'vt_resnet18', '--checkpoint', str(trained / 'last.pth.tar'), '--num-classes', '2', *SIZE,
             '--data-dir', str(image_folder), '-b', '4', '--workers', '0', '--device', 'cpu']
    output = _run_script(timm_scripts / 'validate.py',
                         [*flags, '--log-freq', '1', '--results-file', 'results.json', '--results-format', 'json'],
                         tmp_path)
    theirs = json.loads((tmp_path / 'results.json').read_text())
    loss = float(re.findall(r'Loss:\s+[\d.]+ \(\s*([\d.]+)\)', output)[-1])  # the running mean after the last batch
    ours = validate.main(flags)
    assert ours['samples'] == sum(COUNTS['validation'] for _ in CLASSES)
    for key in ('model', 'top1', 'top5', 'param_count', 'img_size', 'crop_pct', 'interpolation'):
        assert theirs[key] == ours[key], key
    assert loss == pytest.approx(ours['loss'], abs=1e-4)
    # the project's validate also reads timm's args.yaml for the model and data settings
    from_args = validate.main(['-c', str(trained / 'args.yaml'), '--checkpoint', str(trained / 'last.pth.tar'),
                               '--workers', '0', '--device', 'cpu'])
    assert (from_args['top1'], from_args['loss'], from_args['img_size']) == (ours['top1'], ours['loss'], 64)


def test_benchmark_measures_vt_resnet18(timm_scripts, tmp_path):
    output = _run_script(timm_scripts / 'benchmark.py',
                         ['--model', 'vt_resnet18', '--device', 'cpu', *SIZE, '--num-classes', '2', '-b', '2',
                          '--bench', 'both', '--num-warm-iter', '1', '--num-bench-iter', '5',  # >= 5: logs every n/5
                          '--results-file', 'bench.json', '--results-format', 'json'], tmp_path)
    results = json.loads((tmp_path / 'bench.json').read_text())
    params = sum(p.numel() for p in timm.create_model('vt_resnet18', num_classes=2, device='meta').parameters())
    assert (results['model'], results['param_count']) == ('vt_resnet18', round(params / 1e6, 2))
    assert (results['infer_batch_size'], results['infer_img_size']) == (2, 64)
    assert results['infer_samples_per_sec'] > 0 and results['train_samples_per_sec'] > 0
    assert 'Inference benchmark of vt_resnet18 done' in output and 'Train benchmark of vt_resnet18 done' in output


INFERENCE = ['--device', 'cpu', '-b', '4', '--workers', '0', '--topk', '2', '--include-index', '--fullname',
             '--results-separate-col', '--results-file', 'predictions.csv', '--no-console-results']


def _predictions(path: Path) -> List[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _expected_probs(model: torch.nn.Module, root: Path, filenames: List[str]) -> torch.Tensor:
    """The model's softmax on each image with timm's eval transform of its pretrained cfg, one at a time."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    batch = torch.stack([transform(Image.open(root / name).convert('RGB')) for name in filenames])
    with torch.no_grad():
        return model.eval()(batch).softmax(-1)


def _check_predictions(rows: List[dict], probs: torch.Tensor) -> None:
    for row, expected in zip(rows, probs):
        top = expected.argsort(descending=True)
        assert [int(row['index_0']), int(row['index_1'])] == top.tolist()
        torch.testing.assert_close(torch.tensor([float(row['prob_0']), float(row['prob_1'])]), expected[top],
                                   atol=1e-5, rtol=0)


def test_inference_writes_one_row_per_image(timm_scripts, trained, image_folder, tmp_path):
    pytest.importorskip('pandas')  # timm's inference.py writes its results with pandas
    _run_script(timm_scripts / 'inference.py',
                ['--model', 'vt_resnet18', '--checkpoint', str(trained / 'last.pth.tar'), '--num-classes', '2',
                 *SIZE, '--data-dir', str(image_folder), '--split', 'validation', *INFERENCE], tmp_path)
    rows = _predictions(tmp_path / 'predictions.csv')
    filenames = sorted(str(p.relative_to(image_folder / 'validation')) for p in image_folder.glob('validation/*/*'))
    assert sorted(row['filename'] for row in rows) == filenames and len(rows) == 8
    model = create_model_from_checkpoint('vt_resnet18', str(trained / 'last.pth.tar'), num_classes=2)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 64, 64))
    _check_predictions(rows, _expected_probs(model, image_folder / 'validation', [r['filename'] for r in rows]))


def test_inference_on_the_exported_hub_folder_names_the_classes(timm_scripts, trained, image_folder, tmp_path):
    """``vt-hub export`` of timm's run (its args.yaml) writes the image folder's class names; timm's inference.py
    loads the folder as ``local-dir:`` with its preprocessing (no size flags) and labels with those names."""
    pytest.importorskip('pandas')
    out = tmp_path / 'export'
    hub.main(['export', str(trained / 'last.pth.tar'), '--out', str(out), '--tag', 'fmnist2'])
    assert json.loads((out / 'config.json').read_text())['label_names'] == ['Sneaker', 'Trouser']  # timm's order
    _run_script(timm_scripts / 'inference.py',
                ['--model', f'local-dir:{out}', '--data-dir', str(image_folder), '--split', 'validation',
                 '--label-type', 'name', *INFERENCE], tmp_path / 'run')
    rows = _predictions(tmp_path / 'run' / 'predictions.csv')
    assert len(rows) == 8
    names = ['Sneaker', 'Trouser']
    assert all([row['label_0'], row['label_1']] == [names[int(row['index_0'])], names[int(row['index_1'])]]
               for row in rows)
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    _check_predictions(rows, _expected_probs(model, image_folder / 'validation', [r['filename'] for r in rows]))
