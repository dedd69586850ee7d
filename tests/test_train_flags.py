"""train.py honours timm's flags: image modes from the input channels (grey, RGB, RGBA folders), timm's
losses for mixup/BCE/JSD, timm's lr scaling rule, the model flags, and the loop's intervals and outputs.
Short runs on real Fashion-MNIST garments written as image folders."""
import csv
from pathlib import Path

import pytest
import torch
import torchvision
from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from vt_timm.cli import train, validate
from vt_timm.tools.data import prepare_fashion_mnist

pytestmark = pytest.mark.usefixtures('one_thread')
CLASSES = 3
MODES = {1: 'L', 3: 'RGB', 4: 'RGBA'}


@pytest.fixture(scope='module')
def folders(tmp_path_factory) -> dict:
    """ImageFolders (train: 8, validation: 4 images per class) of the same real garments, in PIL mode L, RGB
    and RGBA (alpha: the garment's own grey value)."""
    root = tmp_path_factory.mktemp('folders')
    garments = torchvision.datasets.FashionMNIST(str(prepare_fashion_mnist(root / 'source')), train=True)
    picked = {c: [] for c in range(CLASSES)}
    for image, label in garments:
        if label < CLASSES and len(picked[label]) < 12:
            picked[label].append(image)
        if all(len(v) == 12 for v in picked.values()):
            break
    out = {}
    for chans, mode in MODES.items():
        for label, images in picked.items():
            for i, image in enumerate(images):
                split = 'train' if i < 8 else 'validation'
                folder = root / mode / split / f'class{label}'
                folder.mkdir(parents=True, exist_ok=True)
                converted = image.convert(mode) if mode != 'RGBA' else image.convert('RGB').convert('RGBA')
                if mode == 'RGBA':
                    converted.putalpha(image)
                converted.save(folder / f'{i}.png')
        out[chans] = root / mode
    return out


def run(folder: Path, tmp_path: Path, *extra: str, experiment: str = 'run') -> dict:
    metrics = train.main([
        '--data-dir', str(folder), '--model', 'vt_resnet18', '--num-classes', str(CLASSES), '--img-size', '64',
        '-b', '8', '--epochs', '1', '--warmup-epochs', '0', '--workers', '0', '--lr', '0.02',
        '--output', str(tmp_path), '--experiment', experiment, *extra])
    return metrics


@pytest.mark.parametrize('chans', sorted(MODES))
def test_grey_rgb_and_rgba_folders_train_and_validate(folders, tmp_path, chans):
    metrics = run(folders[chans], tmp_path, '--in-chans', str(chans))
    run_dir = tmp_path / 'run'
    results = validate.main(['-c', str(run_dir / 'args.yaml'), '--checkpoint', str(run_dir / 'last.pth.tar')])
    assert results['samples'] == 4 * CLASSES
    assert results['top1'] == pytest.approx(metrics['top1'], abs=1e-3)  # validate.py rounds to 4 places
    state = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    assert state['conv1.weight'].shape[1] == chans


def test_loader_normalisation_needs_one_mean_per_channel(folders, tmp_path):
    with pytest.raises(SystemExit, match='--no-prefetcher: the mean/std of vt_resnet18 have 3 values for 1'):
        run(folders[1], tmp_path, '--in-chans', '1', '--no-prefetcher')


def test_an_image_mode_that_contradicts_the_channels_is_refused(folders, tmp_path):
    with pytest.raises(SystemExit, match='--input-img-mode RGB: 3 channel'):
        run(folders[1], tmp_path, '--in-chans', '1', '--input-img-mode', 'RGB')


def task_for(*argv: str):
    args, _ = train.parse_args(['--num-classes', str(CLASSES), *argv])
    train.check_args(args)
    model = train.create_model(args)
    return train.create_task(model, args, torch.device('cpu'), None), model, args


@pytest.mark.parametrize('argv,criterion', [
    ([], LabelSmoothingCrossEntropy),
    (['--mixup', '0.2'], SoftTargetCrossEntropy),
    (['--cutmix', '1.0', '--bce-loss'], BinaryCrossEntropy),
    (['--bce-loss'], BinaryCrossEntropy),
    (['--aug-splits', '3', '--jsd-loss'], JsdCrossEntropy),
])
def test_losses_are_timms_for_the_flags(argv, criterion):
    task, _, _ = task_for(*argv)
    assert type(task.criterion) is criterion


def test_model_flags_reach_the_model():
    _, model, _ = task_for('--bn-momentum', '0.01', '--bn-eps', '1e-3', '--head-init-scale', '0', '--head-init-bias',
                           '-2', '--gp', 'max', '--grad-checkpointing')
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    head = model.get_classifier()
    assert torch.count_nonzero(head.weight) == 0 and torch.all(head.bias == -2)
    assert model.global_pool == 'max' and model.grad_checkpointing


@pytest.mark.parametrize('opt,batch,expected', [('sgd', 64, 0.1 * 64 / 256), ('adamw', 64, 0.1 * (64 / 256) ** 0.5),
                                                ('lamb', 1024, 0.1 * 2)])
def test_lr_follows_timms_batch_scaling_rule(opt, batch, expected):
    args, _ = train.parse_args(['--opt', opt, '-b', str(batch)])
    args.world_size = 1
    assert train.learning_rate(args) == pytest.approx(expected)


def test_val_interval_recovery_and_images(folders, tmp_path):
    run(folders[1], tmp_path, '--in-chans', '1', '--epochs', '3', '--val-interval', '2', '--recovery-interval', '2',
        '--save-images', '--log-interval', '3')
    run_dir = tmp_path / 'run'
    with open(run_dir / 'summary.csv') as f:
        assert [int(r['epoch']) for r in csv.DictReader(f)] == [1, 2]  # every 2nd epoch and the last
    assert {p.name for p in run_dir.glob('checkpoint-*.pth.tar')} == {'checkpoint-1.pth.tar', 'checkpoint-2.pth.tar'}
    assert list(run_dir.glob('recovery-*.pth.tar'))
    assert (run_dir / 'train-batch-2.jpg').is_file()


@pytest.mark.parametrize('extra', [
    ['--mixup', '0.4', '--cutmix', '1.0'],
    ['--mixup', '0.4', '--no-prefetcher', '--mean', '0.3', '--std', '0.35', '--mixup-off-epoch', '1', '--epochs', '2'],
    ['--aug-splits', '2', '--jsd-loss', '--split-bn'],
    ['--aug-splits', '3', '--jsd-loss', '--no-prefetcher', '--mean', '0.3', '--std', '0.35'],
    ['--train-img-sizes', '64', '80', '--train-batch-sizes', '8', '6', '--variable-batch-loss-scale', 'linear'],
    ['--model-dtype', 'bfloat16'],
    ['--torchscript'],
    ['--clip-grad', '0.01', '--clip-mode', 'value', '--layer-decay', '0.7', '--opt', 'adamw'],
    ['--sched', 'multistep', '--decay-milestones', '1', '--lr-noise', '0.5', '--cooldown-epochs', '1'],
])
def test_flag_combinations_train(folders, tmp_path, extra):
    metrics = run(folders[1], tmp_path, '--in-chans', '1', *extra)
    assert 0 <= metrics['top1'] <= 100 and torch.isfinite(torch.tensor(metrics['loss']))


def test_start_epoch_overrides_the_first_epoch(folders, tmp_path):
    run(folders[1], tmp_path, '--in-chans', '1', '--epochs', '3', '--start-epoch', '2')
    with open(tmp_path / 'run' / 'summary.csv') as f:
        assert [int(r['epoch']) for r in csv.DictReader(f)] == [2]


def test_split_bn_splits_the_convolutional_batchnorms():
    from timm.layers import SplitBatchNorm2d
    _, model, _ = task_for('--aug-splits', '2', '--split-bn')
    splits = [m for m in model.modules() if isinstance(m, SplitBatchNorm2d)]
    aux = {id(a) for m in splits for a in m.aux_bn}
    assert splits and all(isinstance(m, SplitBatchNorm2d) or id(m) in aux
                          for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_sync_bn_across_cpu_processes_is_refused():
    args, _ = train.parse_args(['--sync-bn'])
    args.distributed = True
    with pytest.raises(SystemExit, match='--sync-bn on cpu: .*needs CUDA'):
        train.check_sync_bn(args, torch.device('cpu'))
    args.distributed = False
    train.check_sync_bn(args, torch.device('cpu'))  # one process: nothing to synchronise


@pytest.mark.slow
def test_grey_folder_under_torchrun(folders, tmp_path):
    """The grey-folder case of the issue under ``torchrun --nproc_per_node=2`` (gloo, CPU)."""
    import subprocess
    import sys
    result = subprocess.run([
        sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
        str(Path(__file__).parents[1] / 'train.py'), '--data-dir', str(folders[1]), '--model', 'vt_resnet18',
        '--num-classes', str(CLASSES), '--in-chans', '1', '--input-size', '1', '64', '64', '-b', '4', '--epochs', '1',
        '--workers', '0', '--output', str(tmp_path), '--experiment', 'ddp'], capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / 'ddp' / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    assert state['conv1.weight'].shape[1] == 1
