"""VT-ResNets as segmentation_models_pytorch encoders (``tu-vt_resnet*``), and the timm ResNet keywords
that smp and timm's train.py pass: ``output_stride`` and ``drop_block_rate``.

smp's ``TimmUniversalEncoder`` builds ``timm.create_model(name, features_only=True,
out_indices=tuple(range(encoder_depth)), output_stride=...)`` (``output_stride`` only when it is not 32)
and puts the input image in front of the maps. A VT-ResNet has four levels (strides 2, 4, 8, 16: the stem
and layer1-3; the VT stage that replaces layer4 outputs tokens), so it serves ``encoder_depth`` <= 4;
smp's default depth 5 asks for a fifth level and gets a ValueError naming the fix. Per decoder:

- Unet: depth 4 (or 3) with as many ``decoder_channels``; no ``encoder_output_stride``.
- FPN: depth 4 with ``upsampling=2``: its decoder takes the last four maps, here strides 2-16, so it merges
  at stride 2 (the default ``upsampling=4`` assumes stride 4 and returns twice the input size).
- DeepLabV3 / DeepLabV3Plus: depth 4 with ``encoder_output_stride`` 16 (native) or 8 (layer3 dilated).
"""
from typing import Callable, Dict, Tuple

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropBlock2d

smp = pytest.importorskip('segmentation_models_pytorch')

pytestmark = pytest.mark.usefixtures('one_thread')

ENCODERS = ('tu-vt_resnet18', 'tu-vt_resnet50')
IMG_SIZE = 64
CLASSES = 3
# name -> (smp model, keywords, strides of the encoder's maps after the input)
DECODERS: Dict[str, Tuple[Callable[..., nn.Module], Dict, Tuple[int, ...]]] = {
    'unet-d4': (smp.Unet, dict(encoder_depth=4, decoder_channels=(128, 64, 32, 16)), (2, 4, 8, 16)),
    'unet-d3': (smp.Unet, dict(encoder_depth=3, decoder_channels=(64, 32, 16)), (2, 4, 8)),
    'fpn-d4': (smp.FPN, dict(encoder_depth=4, upsampling=2), (2, 4, 8, 16)),
    'deeplabv3-d4-os8': (smp.DeepLabV3, dict(encoder_depth=4, encoder_output_stride=8), (2, 4, 8, 8)),
    'deeplabv3plus-d4-os16': (smp.DeepLabV3Plus, dict(encoder_depth=4, encoder_output_stride=16), (2, 4, 8, 16)),
    'deeplabv3plus-d4-os8': (smp.DeepLabV3Plus, dict(encoder_depth=4, encoder_output_stride=8), (2, 4, 8, 8)),
}


def build(decoder: str, encoder: str, **kwargs) -> nn.Module:
    model_cls, model_kwargs, _ = DECODERS[decoder]
    torch.manual_seed(0)
    return model_cls(encoder, encoder_weights=None, classes=CLASSES, **model_kwargs, **kwargs)


@pytest.mark.parametrize('encoder', ENCODERS)
@pytest.mark.parametrize('decoder', list(DECODERS))
def test_forward_on_photos(decoder, encoder, photos):
    model = build(decoder, encoder).eval()
    x = photos((IMG_SIZE, IMG_SIZE), num=2)
    with torch.no_grad():
        features = model.encoder(x)
        logits = model(x)
    assert [x.shape[-1] // f.shape[-1] for f in features] == [1, *DECODERS[decoder][2]]
    assert model.encoder.out_channels == [3] + [f.shape[1] for f in features[1:]]
    assert logits.shape == (2, CLASSES, IMG_SIZE, IMG_SIZE)
    assert torch.isfinite(logits).all()


def photo_masks(x: torch.Tensor) -> torch.Tensor:
    """A per-pixel target of the photos themselves: the brightness tercile (3 classes)."""
    brightness = x.mean(dim=1)
    edges = torch.quantile(brightness.flatten(1), torch.tensor([1 / 3, 2 / 3]), dim=1).T  # (N, 2)
    return (brightness[:, None] > edges[:, :, None, None]).sum(dim=1)


@pytest.mark.parametrize('decoder, encoder', [('unet-d4', 'tu-vt_resnet18'),
                                              ('deeplabv3plus-d4-os8', 'tu-vt_resnet50')])
def test_training_steps_reduce_the_loss(decoder, encoder, photos):
    model = build(decoder, encoder).train()
    x = photos((IMG_SIZE, IMG_SIZE), num=2)
    target = photo_masks(x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.encoder.parameters()), 'an encoder parameter got no gradient'
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


# --- the clear errors ---------------------------------------------------------------------------

DEPTH_ERROR = r'no stride-32 level .* encoder_depth <= 4'


@pytest.mark.parametrize('model_cls, kwargs', [
    (smp.Unet, {}),  # smp's default encoder_depth=5
    (smp.FPN, {}),
    (smp.DeepLabV3, {}),
    (smp.DeepLabV3Plus, dict(encoder_output_stride=8)),
])
def test_depth_5_names_the_missing_stage(model_cls, kwargs):
    with pytest.raises(ValueError, match=DEPTH_ERROR):
        model_cls('tu-vt_resnet18', encoder_weights=None, **kwargs)


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3, 4), (4,), (-5, -1), 5, 0, ()])
def test_out_indices_beyond_the_last_level(out_indices):
    with pytest.raises(ValueError, match=r'VT-ResNet has 4 levels: 0 the stem \(stride 2\), 1-3 layer1-3'):
        timm.create_model('vt_resnet18', features_only=True, out_indices=out_indices, device='meta')


@pytest.mark.parametrize('out_indices, strides', [((0, 1, 2, 3), [2, 4, 8, 16]), ((-2, -1), [8, 16]),
                                                  (2, [8, 16]), ((3,), [16])])
def test_valid_out_indices(out_indices, strides):
    model = timm.create_model('vt_resnet18', features_only=True, out_indices=out_indices, device='meta')
    assert model.feature_info.reduction() == strides


@pytest.mark.parametrize('output_stride', [32, 4, 64, 0])
def test_unsupported_output_stride(output_stride):
    for kwargs in ({}, dict(features_only=True)):
        with pytest.raises(ValueError, match=r'has no stride-32 stage .* must be 16 \(native\) or 8'):
            timm.create_model('vt_resnet18', output_stride=output_stride, device='meta', **kwargs)


def test_pretrained_encoder_has_no_weights():
    with pytest.raises(RuntimeError, match='no pretrained weights are published'):
        smp.Unet('tu-vt_resnet18', encoder_weights=True, encoder_depth=4, decoder_channels=(128, 64, 32, 16))


# --- output_stride and drop_block_rate, as timm's ResNet ----------------------------------------

def same_model(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize('kwargs', [dict(output_stride=16), dict(drop_block_rate=None), dict(drop_block_rate=0.)])
def test_defaults_build_the_same_model(kwargs, photos):
    """The new keywords at their defaults change nothing: names, values (same seed) and outputs."""
    torch.manual_seed(0)
    default = timm.create_model('vt_resnet18')
    torch.manual_seed(0)
    same_model(default, timm.create_model('vt_resnet18', **kwargs), photos((IMG_SIZE, IMG_SIZE)))


@pytest.mark.parametrize('name, reference', [('vt_resnet18', 'resnet18'), ('vt_resnet50', 'resnet50')])
def test_output_stride_8_dilates_layer3_as_timms_resnet(name, reference, photos):
    """layer1-3 are timm's own at output_stride=8 (stride 1, dilation 2 in layer3): the same modules, and
    timm's ResNet weights give the same maps."""
    ours = timm.create_model(name, output_stride=8, features_only=True).eval()
    theirs = timm.create_model(reference, output_stride=8, features_only=True, out_indices=(0, 1, 2, 3)).eval()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction() == [2, 4, 8, 8]
    assert repr(ours.layer3) == repr(theirs.layer3)
    ours.load_state_dict(theirs.state_dict())
    x = photos((IMG_SIZE, IMG_SIZE))
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            assert torch.equal(a, b)


def test_output_stride_8_runs_the_vt_stage_on_the_stride_8_map(photos):
    from vt_timm.tools.macs import count_macs

    model = timm.create_model('vt_resnet18', output_stride=8).eval()
    assert [info['reduction'] for info in model.feature_info] == [2, 4, 8, 8]
    native = timm.create_model('vt_resnet18').eval()
    assert model.state_dict().keys() == native.state_dict().keys()  # same parameters, other strides
    x = photos((IMG_SIZE, IMG_SIZE))
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
        assert maps[-1].shape[-2:] == (IMG_SIZE // 8, IMG_SIZE // 8)
        assert model.forward_features(x).shape == (2, 16, 1024)  # the same L tokens from a 4x larger map
        assert model(photos((32, 32))).shape == (2, 1000)  # 4x4 stride-8 map: 16 pixels for 16 tokens
    with pytest.raises(AssertionError, match='its stride-8 map has 9 pixels.* at least 32x32 px'):
        model(photos((24, 24)))
    macs, _ = count_macs(timm.create_model('vt_resnet18', output_stride=8, device='meta').eval(), 224)
    native_macs, _ = count_macs(timm.create_model('vt_resnet18', device='meta').eval(), 224)
    assert 1.5 < macs / native_macs < 2.5  # layer3 and the VT stage's pixel-wise maps at 4x the pixels


def test_drop_block_rate_as_timms_resnet(photos):
    """timm's train.py passes ``drop_block_rate=args.drop_block``; DropBlock goes where timm's ResNet puts it
    for its layer3 (block size 5, gamma scale 0.25), and has no parameters."""
    torch.manual_seed(0)
    model = timm.create_model('vt_resnet18', drop_block_rate=0.2)
    theirs = timm.create_model('resnet18', drop_block_rate=0.2)
    assert repr(model.layer3) == repr(theirs.layer3)
    for layer in (model.layer1, model.layer2):
        assert not any(isinstance(m, DropBlock2d) for m in layer.modules())
    blocks = [block.drop_block for block in model.layer3]
    assert all(isinstance(b, DropBlock2d) and (b.drop_prob, b.block_size, b.gamma_scale) == (0.2, 5, 0.25)
               for b in blocks)
    torch.manual_seed(0)
    default = timm.create_model('vt_resnet18')
    x = photos((IMG_SIZE, IMG_SIZE))
    same_model(default, model, x)  # eval: DropBlock is the identity
    model.train()
    for module in model.modules():  # train mode, but keep the BN statistics out of it
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        assert not torch.equal(model(x), default.eval()(x))
