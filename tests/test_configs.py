"""The paper's recipes as config files: their values and the schedules timm builds from them."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

from vt_timm.cli.train import create_parser

CONFIGS = Path(__file__).resolve().parents[1] / 'vt_timm' / 'configs'
MODELS = ('vt_resnet18', 'vt_resnet34', 'vt_resnet50', 'vt_resnet101')
PROCESSES = 8  # the paper trains on 8 GPUs; the configs' batch_size is per process

TRAIN_DESTS = {action.dest for action in create_parser()._actions}


def load(name: str) -> SimpleNamespace:
    with open(CONFIGS / f'{name}.yaml') as f:
        return SimpleNamespace(**yaml.safe_load(f))


def lr_per_epoch(cfg: SimpleNamespace) -> list:
    """The learning rate timm's optimizer/scheduler factories give each epoch of the run ``cfg``."""
    optimizer = create_optimizer_v2(torch.nn.Linear(2, 2), **optimizer_kwargs(cfg))
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(cfg))
    lrs = []
    for epoch in range(num_epochs):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]['lr'])
    return lrs


@pytest.mark.parametrize('model', MODELS)
def test_advanced_schedule_warms_up_then_decays(model):
    """0.01 at epoch 0, linear warm-up to 0.16 at epoch 5, then x0.9875 per epoch."""
    lrs = lr_per_epoch(load(f'{model}_advanced'))
    assert len(lrs) == 400
    assert lrs[0] == pytest.approx(0.01)
    for epoch in range(6):
        assert lrs[epoch] == pytest.approx(0.01 + epoch * (0.16 - 0.01) / 5)
    for epoch in range(5, 400):
        assert lrs[epoch] == pytest.approx(0.16 * 0.9875 ** (epoch - 5), rel=1e-9)


@pytest.mark.parametrize('model', MODELS)
def test_default_schedule_steps_every_30_epochs(model):
    lrs = lr_per_epoch(load(f'{model}_default'))
    assert lrs == pytest.approx([0.1] * 30 + [0.01] * 30 + [0.001] * 30)


@pytest.mark.parametrize('model', MODELS)
def test_default_recipe_values(model):
    cfg = load(f'{model}_default')
    assert cfg.model == model
    assert (cfg.opt, cfg.momentum, cfg.weight_decay) == ('sgd', 0.9, 4e-5)  # timm's sgd is Nesterov
    assert cfg.batch_size * PROCESSES == 256 and cfg.epochs == 90
    assert cfg.smoothing == 0.0


@pytest.mark.parametrize('model', MODELS)
def test_advanced_recipe_values(model):
    cfg = load(f'{model}_advanced')
    assert cfg.model == model
    assert cfg.opt == 'rmsproptf' and cfg.batch_size * PROCESSES == 2048
    assert cfg.warmup_prefix and cfg.warmup_epochs + cfg.epochs == 400
    assert cfg.sync_bn and cfg.smoothing > 0 and cfg.aa
    assert (cfg.drop_path, cfg.drop) == (0.1, 0.2)
    assert cfg.model_ema and cfg.model_ema_decay == 0.99985
    assert (cfg.kd_model_name, cfg.distill_loss_weight, cfg.task_loss_weight) == ('fbnetv3_g', 0.8, 0.2)


@pytest.mark.parametrize('path', sorted(CONFIGS.glob('*.yaml')), ids=lambda p: p.stem)
def test_config_keys_are_train_flags(path):
    with open(path) as f:
        keys = set(yaml.safe_load(f))
    assert keys <= TRAIN_DESTS, f'{path.name}: not train.py flags: {sorted(keys - TRAIN_DESTS)}'


def test_quickstart_normalisation_is_the_training_set_statistics(tmp_path):
    """The quickstart's mean/std are Fashion-MNIST's measured per-pixel statistics (60k training images)."""
    from torchvision.datasets import FashionMNIST

    from vt_timm.tools.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, prepare_fashion_mnist

    pixels = FashionMNIST(str(prepare_fashion_mnist(tmp_path)), train=True).data.double() / 255
    assert (round(pixels.mean().item(), 4), round(pixels.std().item(), 4)) == (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    cfg = load('quickstart_fashion_mnist')
    assert (cfg.mean, cfg.std) == ([FASHION_MNIST_MEAN], [FASHION_MNIST_STD])


def test_fashion_mnist_location_follows_the_environment(tmp_path, monkeypatch):
    """``VT_TIMM_FASHION_MNIST`` names another folder of the four official files; a wrong one fails clearly."""
    from vt_timm.tools.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, prepare_fashion_mnist

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    for name in FASHION_MNIST_FILES:
        (elsewhere / f'{name}.gz').symlink_to(DEBIAN_FASHION_MNIST / f'{name}.gz')
    monkeypatch.setenv('VT_TIMM_FASHION_MNIST', str(elsewhere))
    raw = prepare_fashion_mnist(tmp_path / 'a') / 'FashionMNIST' / 'raw'
    assert sorted(p.name for p in raw.iterdir()) == sorted(FASHION_MNIST_FILES)
    assert (raw / 't10k-labels-idx1-ubyte').stat().st_size == 10008  # 8-byte header + 10,000 labels
    (elsewhere / 't10k-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(FileNotFoundError, match=f'not found in {elsewhere} .*t10k-labels-idx1-ubyte.gz.*VT_TIMM'):
        prepare_fashion_mnist(tmp_path / 'b')
    assert not (tmp_path / 'b' / 'FashionMNIST' / 'raw').exists()
