"""Training behaviour on real data: the CI side of ``benchmarks/training_parity.py`` (docs/training.md).

One short AdamW run of ResNet-18 and VT-ResNet-18 on the same real Fashion-MNIST images at 112 px (a
7x7 stride-16 map), same seed, batches and recipe (``vt_timm.tools.parity``): VT-ResNet-18's training loss
must keep up with ResNet-18's, and the tokens of every VT module, the recurrent last one included, must
stay distinct. Measured with this file's settings (one thread): ResNet-18 1.223; VT-ResNet-18 1.300,
map cosine 0.23 / 0.60 in modules 0 / 1, token effective rank 6.9 / 3.6; the model before the fix of
docs/training.md (commit c81487e) 1.575, cosine 0.93 / 0.997, effective rank 1.5 / 1.2, which fails
all three tests below. The feature extractors must give every parameter they keep a gradient.
"""
import pytest
import timm
import torch

from vt_timm.tools.parity import load_fashion_mnist, train_run

pytestmark = pytest.mark.slow  # training runs (README: the fast set is -m 'not slow')

# the short run: 600 images x 2 epochs at batch 30 = 40 AdamW updates per model (about a minute each)
TRAIN, TEST, BATCH, EPOCHS, TAIL = 600, 200, 30, 2, 10
# VT-ResNet-18's mean training loss over the last 10 updates may exceed ResNet-18's by at most this
# much: measured +0.077 (not yet parity, docs/training_parity.md); before the fix +0.352
LOSS_MARGIN = 0.15
# mean pairwise cosine of a module's L spatial attention maps (1 = all read the same pixels): the
# parity benchmark's target 0.5 for the first module; the recurrent module, measured at 0.60 after
# this short run (0.45-0.51 after the benchmark's 100 updates), must stay well clear of its collapse
MAX_COSINE = (0.5, 0.8)


@pytest.fixture(scope='module')
def runs():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    data = load_fashion_mnist(TRAIN, TEST, img_size=112, seed=0)
    try:
        yield {name: train_run(name, 'adamw', 0, data, epochs=EPOCHS, batch_size=BATCH, tail=TAIL)[0]
               for name in ('resnet18', 'vt_resnet18')}
    finally:
        torch.set_num_threads(previous)


def test_vt_training_loss_keeps_up_with_resnet_under_adamw(runs):
    reference, vt = runs['resnet18'], runs['vt_resnet18']
    assert reference.losses[-1] < reference.losses[0] - 0.5, 'ResNet-18 should learn in this run'
    assert vt.train_loss <= reference.train_loss + LOSS_MARGIN, (
        f'VT-ResNet-18 train loss {vt.train_loss:.3f} trails ResNet-18 {reference.train_loss:.3f} '
        f'by more than {LOSS_MARGIN}')


def test_tokens_stay_distinct_after_training(runs):
    diversity = runs['vt_resnet18'].diversity
    assert len(diversity) == 2
    for index, (module, max_cosine) in enumerate(zip(diversity, MAX_COSINE)):
        assert module['cosine'] < max_cosine, f'module {index}: its 16 token maps collapsed ({module})'
        assert module['erank'] > 2, f'module {index}: tokens nearly parallel ({module})'
        assert 0.1 < module['entropy'] < 0.95, f'module {index}: attention one-hot or uniform ({module})'


@pytest.mark.parametrize('feature_cls', ['hook', 'getter', 'fx'])
def test_feature_extractors_give_every_parameter_a_gradient(photos, feature_cls):
    # zero_init_last=False: a zero-initialised closing BN would block its branch's gradient at init
    features = timm.create_model('vt_resnet18', features_only=True, feature_cls=feature_cls,
                                 zero_init_last=False).train()
    outputs = features(photos((64, 64)))
    assert len(outputs) == 4
    sum((out * torch.randn_like(out)).sum() for out in outputs).backward()
    without = [name for name, p in features.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without, f'{len(without)} parameters get no gradient, e.g. {without[:3]}'
