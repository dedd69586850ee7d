"""A VT-ResNet learns real data: Fashion-MNIST (Debian's dataset-fashion-mnist), from scratch, on CPU."""
import pytest

from vt_timm.quickstart import train_fashion_mnist


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    return train_fashion_mnist(
        'vt_resnet18', data_root=str(tmp_path_factory.mktemp('data')), img_size=64, steps=200, batch_size=32,
        train_per_class=500, test_per_class=50, seed=0)


def test_vt_resnet18_beats_chance_on_fashion_mnist(trained):
    _, result = trained
    assert result.test_top1 >= 50., f'{result.test_top1:.1f}% on 500 held-out images (chance: 10%)'


def test_training_loss_falls(trained):
    _, result = trained
    assert result.last_loss < 0.75 * result.first_loss, (result.first_loss, result.last_loss)


def test_every_parameter_trained(trained):
    """Nothing is dead weight: in the last training step every parameter got a non-zero gradient."""
    model, _ = trained
    frozen = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not frozen
