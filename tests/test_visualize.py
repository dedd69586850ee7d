"""Token attention maps (vt_timm.tools.visualize, paper section 7) on real photographs.

Photos: scikit-image's astronaut/chelsea/coffee written as PNG/JPEG files, and foolbox's ImageNet
samples. Most checks run at 128 px (an 8x8 stride-16 map) to stay fast on 2 CPU cores.
"""
import copy
import glob
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from vt_timm.layers import FilterTokenizer, RecurrentTokenizer, TokenTransformer, VTBlock
from vt_timm.tools.visualize import (
    attention_entropy, capture_vt_modules, create_vt_model, entropy_table, load_weights, plot_token_attention,
    token_attention_maps, vt_blocks,
)
from vt_timm.cli.visualize import main

pytestmark = pytest.mark.usefixtures('one_thread')

SIZE = 128  # input px: an 8x8 map of 64 pixels per token map
HW = (SIZE // 16) ** 2
REPO = Path(__file__).resolve().parents[1]


def foolbox_imagenet_photos():
    spec = importlib.util.find_spec('foolbox')
    if spec is None:
        return []
    return sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], 'data', 'imagenet_*.jpg')))


def sharpen(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights far from initialisation and BN statistics of real activations, so that maps and relation
    weights are far from uniform.

    A freshly initialised VT-ResNet in eval mode attends almost uniformly: its BN running statistics
    are the initial ones (mean 0, variance 1) while its activations are far smaller, so every softmax
    is flat. Wider K/Q weights make W far from uniform; a few train-mode passes (cumulative BN
    averages) then give every BN, the tokenizers' logit norms included, the statistics of the
    activations it sees, as training would.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TokenTransformer):
                m.key.fc.weight.normal_(std=.3, generator=gen)
                m.query.fc.weight.normal_(std=.3, generator=gen)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        in_chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
        for _ in range(2):
            model(torch.randn(8, in_chans, SIZE, SIZE, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
    return model.eval()


@pytest.fixture(scope='module')
def photo_files(tmp_path_factory):
    """name -> image file: scikit-image photos (PNG and JPEG, various sizes), foolbox ImageNet JPEGs."""
    import skimage.data

    root = tmp_path_factory.mktemp('photos')
    files = {}
    for name, ext in (('astronaut', 'png'), ('chelsea', 'jpg'), ('coffee', 'jpg')):
        files[name] = root / f'{name}.{ext}'
        Image.fromarray(getattr(skimage.data, name)()).save(files[name])
    for path in foolbox_imagenet_photos()[:2]:
        files[Path(path).stem] = Path(path)
    return files


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return sharpen(timm.create_model('vt_resnet18'))


def test_foolbox_photos_are_used(photo_files):
    assert any(name.startswith('imagenet_') for name in photo_files), 'foolbox ImageNet samples not found'


@pytest.mark.parametrize('num_heads', [1, 4])
def test_attention_weights_are_the_forward_weights(num_heads):
    """``TokenTransformer.attention_weights`` equals the weights its forward applies, per head."""
    torch.manual_seed(0)
    transformer = TokenTransformer(64, 32, num_heads).eval()
    with torch.no_grad():
        transformer.key.fc.weight.normal_(std=.3)
        transformer.query.fc.weight.normal_(std=.3)
        transformer.attn_norm.bn.eps = 0.  # eval-mode BN with the initial statistics: the identity
        nn.init.ones_(transformer.attn_norm.bn.weight)
        nn.init.zeros_(transformer.ffn_out.norm.bn.weight)  # FFN branch = 0: forward(T) = T + attention
        nn.init.zeros_(transformer.ffn_out.norm.bn.bias)
        tokens = torch.randn(2, 16, 64)
        weights = transformer.attention_weights(tokens)
        attended = transformer(tokens) - tokens
    assert weights.shape == (2, num_heads, 16, 16)
    assert torch.allclose(weights.sum(-1), torch.ones(2, num_heads, 16), atol=1e-6)
    assert weights.min() >= 0 and weights.std() > .05  # far from uniform (1/16)
    heads = tokens.reshape(2, 16, num_heads, -1).transpose(1, 2)  # head h mixes channel slice h
    expected = (weights @ heads).transpose(1, 2).reshape(2, 16, 64)
    torch.testing.assert_close(attended, expected, atol=1e-5, rtol=1e-5)
    # the explicit math, written out: row i = token i's softmax over (T_i K)(T_j Q) / sqrt(d)
    k = transformer.key(tokens).reshape(2, 16, num_heads, -1).transpose(1, 2)
    q = transformer.query(tokens).reshape(2, 16, num_heads, -1).transpose(1, 2)
    explicit = (k @ q.transpose(-2, -1) / math.sqrt(k.shape[-1])).softmax(-1)
    torch.testing.assert_close(weights, explicit.detach(), atol=1e-6, rtol=1e-5)


def test_maps_are_distributions_on_real_photos(model, photo_files):
    results = {name: token_attention_maps(model, path, img_size=SIZE) for name, path in photo_files.items()}
    for name, result in results.items():
        assert result.input.shape == (3, SIZE, SIZE)
        assert result.display.shape == (SIZE, SIZE, 3) and 0 <= result.display.min() <= result.display.max() <= 1
        assert [m.name for m in result.modules] == ['vt.blocks.0', 'vt.blocks.1']
        for m in result.modules:
            for maps in (m.attention, m.propagated):
                assert maps.shape == (16, SIZE // 16, SIZE // 16), name
                assert maps.min() >= 0
                torch.testing.assert_close(maps.flatten(1).sum(1), torch.ones(16), atol=1e-5, rtol=0)
            assert m.weights.shape == (16, 16) and m.weights.min() >= 0
            torch.testing.assert_close(m.weights.sum(1), torch.ones(16), atol=1e-5, rtol=0)
            torch.testing.assert_close(m.propagated.flatten(1), m.weights @ m.attention.flatten(1))
            entropy = attention_entropy(m.attention)
            assert (entropy > 0).all() and (entropy <= math.log(HW) + 1e-9).all()
            assert entropy.min() < .9 * math.log(HW), 'maps should not be uniform for this model'
            assert (attention_entropy(m.propagated) <= math.log(HW) + 1e-9).all()
    # the maps depend on the image
    first, second = results['astronaut'].modules[0].attention, results['chelsea'].modules[0].attention
    assert (first - second).abs().max() > 10 / HW


def eval_bn(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, dim: int) -> torch.Tensor:
    """Eval-mode BatchNorm along ``dim``, from its running statistics and affine parameters."""
    shape = [1] * x.ndim
    shape[dim] = -1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(shape)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def test_propagated_equals_W_A_computed_independently(model, photo_files):
    """A, W and W A from the model's weights, by hand, without hooks or ``attention_weights``."""
    result = token_attention_maps(model, photo_files['coffee'], img_size=SIZE)
    with torch.no_grad():
        x = model.vt.lift(model.forward_intermediates(result.input[None], intermediates_only=True)[-1])
        tokens = None
        for block, maps in zip(model.vt.blocks, result.modules):
            tokenizer, transformer = block.tokenizer, block.relation
            pixels = x.flatten(2)  # (1, C, HW)
            if tokens is None:  # filter tokenizer: X W_A
                logits = tokenizer.attn.weight[:, :, 0, 0] @ pixels
            else:  # recurrent: X (T_in W_T->R)^T / sqrt(C)
                logits = (tokens @ tokenizer.token_to_filter.weight.t()) @ pixels / math.sqrt(x.shape[1])
            logits = eval_bn(logits - logits.mean(1, keepdim=True), tokenizer.logit_norm.norm, dim=1)  # S(Z)
            A = logits.softmax(-1)[0]  # (L, HW)
            t = tokenizer.value((A @ pixels[0].t())[None])[0]  # (L, C_T)
            k = eval_bn(t @ transformer.key.fc.weight.t(), transformer.key.norm.bn, dim=1)
            q = eval_bn(t @ transformer.query.fc.weight.t(), transformer.query.norm.bn, dim=1)
            W = (k @ q.t() / math.sqrt(k.shape[1])).softmax(-1)
            torch.testing.assert_close(maps.attention.flatten(1), A, atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(maps.weights, W, atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(maps.propagated.flatten(1), W @ A, atol=1e-6, rtol=1e-4)
            assert (maps.propagated - maps.attention).abs().max() > 1 / HW  # W is not the identity
            x, tokens = block(x, tokens)


def test_uniform_attention_has_entropy_ln_hw(model, photo_files):
    """Zeroed tokenizer weights: every token averages all pixels, entropy exactly ln(HW)."""
    uniform = copy.deepcopy(model)
    with torch.no_grad():
        for m in uniform.modules():
            if isinstance(m, FilterTokenizer):
                m.attn.weight.zero_()
            elif isinstance(m, RecurrentTokenizer):
                m.token_to_filter.weight.zero_()
    result = token_attention_maps(uniform, photo_files['astronaut'], img_size=SIZE)
    for m in result.modules:
        torch.testing.assert_close(m.attention, torch.full_like(m.attention, 1 / HW))
        for maps in (m.attention, m.propagated):
            torch.testing.assert_close(attention_entropy(maps), torch.full((16,), math.log(HW), dtype=torch.float64))
    table = entropy_table(result)
    assert table.count(f'| {math.log(HW):.3f} | 1.000 | {math.log(HW):.3f} | 1.000 |') == 2 * 17  # 16 tokens + mean


def test_attention_entropy_values():
    maps = torch.tensor([[1., 0, 0, 0], [.25, .25, .25, .25], [.5, .25, .25, 0]])
    torch.testing.assert_close(attention_entropy(maps), torch.tensor([0., math.log(4), 1.5 * math.log(2)],
                                                                     dtype=torch.float64))


def test_png_pixel_size_and_content(model, photo_files, tmp_path):
    pngs = []
    for name in ('astronaut', 'chelsea'):
        result = token_attention_maps(model, photo_files[name], img_size=SIZE)
        pngs.append(plot_token_attention(result, tmp_path / f'{name}.png', cell_px=32))
    quantised = plot_token_attention(result, tmp_path / 'q.png', cell_px=32, colors=64)
    assert sorted(os.listdir(tmp_path)) == ['astronaut.png', 'chelsea.png', 'q.png']  # no partial files left
    images = []
    for path in pngs + [quantised]:
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        with Image.open(path) as image:
            assert image.format == 'PNG'
            assert image.size == ((1 + 16) * 32, 4 * 32)  # image + 16 tokens; A and W A rows for 2 modules
            images.append(np.asarray(image.convert('RGB'), dtype=np.float64))
    assert np.abs(images[0] - images[1]).mean() > 10  # two photos: different pictures
    assert len(np.unique(images[2].reshape(-1, 3), axis=0)) <= 64


def test_one_channel_model_any_format(photo_files, tmp_path):
    """A 1-channel model takes RGB, RGBA, palette and 16-bit grey files, preprocessed by timm's transform."""
    torch.manual_seed(0)
    grey = sharpen(timm.create_model('vt_resnet18', in_chans=1, num_classes=10))
    rgb = np.asarray(Image.open(photo_files['chelsea']))
    files = [photo_files['chelsea'], tmp_path / 'rgba.png', tmp_path / 'palette.gif', tmp_path / 'grey16.png']
    Image.fromarray(rgb).convert('RGBA').save(files[1])
    Image.fromarray(rgb).convert('P').save(files[2])
    Image.fromarray((rgb.mean(2) * 257).astype(np.uint16)).save(files[3])
    results = [token_attention_maps(grey, path, img_size=96) for path in files]
    for result in results:
        assert result.input.shape == (1, 96, 96)
        assert result.data_config['mean'] == (pytest.approx(np.mean([0.485, 0.456, 0.406])),)
        assert np.allclose(result.display[..., 0], result.display[..., 2])
        assert [m.attention.shape for m in result.modules] == [(16, 6, 6)] * 2
    # RGBA converts to the same grey image as RGB (alpha ignored): identical maps
    torch.testing.assert_close(results[1].modules[0].attention, results[0].modules[0].attention)
    assert results[2].data_config == results[0].data_config


def test_variants_and_relations_without_attention(photo_files):
    """Models built with variant kwargs; a relation without L x L attention gets no second row."""
    image = photo_files['coffee']
    torch.manual_seed(0)
    heads = sharpen(timm.create_model('vt_resnet18', num_tokens=8, num_heads=4))
    result = token_attention_maps(heads, image, img_size=SIZE)
    for m in result.modules:
        assert m.attention.shape == (8, 8, 8) and m.weights.shape == (8, 8)
        torch.testing.assert_close(m.weights.sum(1), torch.ones(8), atol=1e-5, rtol=0)
        torch.testing.assert_close(m.propagated.flatten(1), m.weights @ m.attention.flatten(1))

    no_attention = sharpen(timm.create_model('vt_resnet18'))
    no_attention.vt.blocks[1].relation = nn.Identity()
    result = token_attention_maps(no_attention, image, img_size=SIZE)
    assert result.modules[0].propagated is not None
    assert result.modules[1].propagated is None and result.modules[1].weights is None
    assert 'Identity has no L x L attention' in result.modules[1].note
    assert 'Identity has no L x L attention' in entropy_table(result)

    for kwargs in (dict(relation='none'), dict(relation='graphconv'), dict(first_tokenizer='pooling'),
                   dict(first_tokenizer='clustering'), dict(projector=False)):
        variant = sharpen(timm.create_model('vt_resnet18', **kwargs))
        result = token_attention_maps(variant, image, img_size=SIZE)
        assert len(result.modules) == 2, kwargs
        for m in result.modules:
            assert m.attention.shape == (16, 8, 8) and m.attention.min() >= 0, kwargs
            torch.testing.assert_close(m.attention.flatten(1).sum(1), torch.ones(16), atol=1e-5, rtol=0)
            has_attention = kwargs.get('relation', 'transformer') == 'transformer'
            assert (m.propagated is not None) == has_attention, kwargs


def test_module_selection_and_mode_restored(model, photo_files):
    model.train()
    state = copy.deepcopy(model.state_dict())
    try:
        result = token_attention_maps(model, photo_files['astronaut'], modules=1, img_size=SIZE)
        assert model.training  # restored
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key  # eval-mode pass: BN statistics untouched
    finally:
        model.eval()
    assert [m.index for m in result.modules] == [1]
    full = token_attention_maps(model, photo_files['astronaut'], img_size=SIZE)
    torch.testing.assert_close(result.modules[0].attention, full.modules[1].attention)
    with pytest.raises(ValueError, match='the model has 2 VT modules'):
        token_attention_maps(model, photo_files['astronaut'], modules=2)


def test_capture_in_train_mode_changes_nothing(model, photo_files):
    """A captured training pass gives the output and the BN statistics of an uncaptured one (the hooks
    recompute logits and attention weights, and restore the statistics that recomputation moves), and
    what it records is what the modules computed."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({'input_size': (3, SIZE, SIZE)}, model=model)
    transform = create_transform(**config)
    batch = torch.stack([transform(Image.open(photo_files[name]).convert('RGB')) for name in ('astronaut', 'coffee')])
    captured, plain = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    computed = {}  # what the plain model's modules computed, read from their outputs
    for i, (_, block) in enumerate(vt_blocks(plain)):
        block.tokenizer.logit_norm.register_forward_hook(lambda m, a, o, i=i: computed.__setitem__(('logits', i), o))
        block.tokenizer.register_forward_hook(lambda m, a, o, i=i: computed.__setitem__(('tokens', i), o))
    with capture_vt_modules(captured) as captures:
        out = captured(batch)
    torch.testing.assert_close(out, plain(batch), rtol=0, atol=0)
    plain_state = plain.state_dict()
    for key, value in captured.state_dict().items():
        assert torch.equal(value, plain_state[key]), key
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in captured.modules())  # hooks removed
    for i, capture in enumerate(captures):
        assert capture.map_size == (SIZE // 16, SIZE // 16)
        torch.testing.assert_close(capture.logits, computed['logits', i], rtol=0, atol=0)
        torch.testing.assert_close(capture.tokens, computed['tokens', i], rtol=0, atol=0)
        assert capture.relation_weights.shape == (2, 1, 16, 16)
        torch.testing.assert_close(capture.relation_weights.sum(-1), torch.ones(2, 1, 16))


def test_checkpoints_load_safely(model, photo_files, tmp_path):
    from safetensors.torch import save_file

    expected = token_attention_maps(model, photo_files['chelsea'], img_size=SIZE)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / 'model.safetensors')
    torch.save({'state_dict': state, 'epoch': 3}, tmp_path / 'checkpoint.pth.tar')  # train.py layout
    for name in ('model.safetensors', 'checkpoint.pth.tar'):
        result = token_attention_maps('vt_resnet18', photo_files['chelsea'], checkpoint=tmp_path / name,
                                      img_size=SIZE)
        for got, want in zip(result.modules, expected.modules):
            torch.testing.assert_close(got.attention, want.attention)
            torch.testing.assert_close(got.propagated, want.propagated)

    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(os.urandom(1000))
    pickled_code = tmp_path / 'code.pth'
    torch.save({'state_dict': {'fc.weight': torch.zeros(1)}, 'object': Path('x')}, pickled_code)
    for path in (garbage, pickled_code):
        with pytest.raises(ValueError, match=f'checkpoint {re.escape(str(path))} cannot be read as weights'):
            load_weights(timm.create_model('vt_resnet18'), path)
    with pytest.raises(FileNotFoundError, match='no_such.pth: no such file'):
        load_weights(model, tmp_path / 'no_such.pth')
    wrong = tmp_path / 'ten_classes.pth'
    torch.save(timm.create_model('vt_resnet18', num_classes=10, in_chans=1).state_dict(), wrong)
    with pytest.raises(ValueError, match=r'ten_classes.pth does not fit vt_resnet18 .*in_chans=1, num_classes=10'):
        create_vt_model('vt_resnet18', wrong)


def test_bad_inputs(model, photo_files, tmp_path):
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image')
    with pytest.raises(ValueError, match='notes.jpg: not an image PIL can read'):
        token_attention_maps(model, text)
    with pytest.raises(FileNotFoundError, match='missing.jpg: no such file'):
        token_attention_maps(model, tmp_path / 'missing.jpg')
    with pytest.raises(ValueError, match='resnet18 has no VT modules'):
        create_vt_model('resnet18')
    with pytest.raises(ValueError, match='has no VT modules'):
        token_attention_maps(nn.Sequential(nn.Conv2d(3, 8, 3)), photo_files['chelsea'])
    with pytest.raises(ValueError, match='vt_resnet9: unknown model'):
        create_vt_model('vt_resnet9')
    assert [name for name, _ in vt_blocks(model)] == ['vt.blocks.0', 'vt.blocks.1']
    assert all(isinstance(block, VTBlock) for _, block in vt_blocks(model))


def test_cli_in_process(model, photo_files, tmp_path, capsys):
    checkpoint = tmp_path / 'model.pth'
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / 'tokens.png'
    result = main(['--model', 'vt_resnet18', '--checkpoint', str(checkpoint), '--image', str(photo_files['coffee']),
                   '--out', str(out), '--img-size', str(SIZE), '--cell-px', '24'])
    printed = capsys.readouterr().out
    assert printed.strip().endswith(str(out))
    with Image.open(out) as image:
        assert image.size == (17 * 24, 4 * 24)
    # the printed table: each token's H(A), H(A)/ln(HW), H(W A), H(W A)/ln(HW), as computed
    assert printed.count(f'uniform ln(HW) = {math.log(HW):.3f}') == 2
    rows = re.findall(r'^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$', printed, re.M)
    assert len(rows) == 32
    for module, start in zip(result.modules, (0, 16)):
        entropy = attention_entropy(module.attention)
        for token in range(16):
            row = rows[start + token]
            assert int(row[0]) == token
            assert float(row[1]) == pytest.approx(entropy[token].item(), abs=6e-4)
            assert float(row[2]) == pytest.approx(entropy[token].item() / math.log(HW), abs=6e-4)
            assert float(row[2]) <= 1

    main(['--image', str(photo_files['coffee']), '--out', str(out), '--img-size', str(SIZE), '--module', '0',
          '--checkpoint', str(checkpoint), '--cell-px', '24'])
    assert 'module 1' not in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size == (17 * 24, 2 * 24)

    result = main(['--image', str(photo_files['coffee']), '--out', str(out), '--img-size', '64', '--cell-px', '24',
                   '--model-kwargs', 'num_tokens=8', 'num_heads=2'])
    assert '8 tokens on a 4x4 map' in capsys.readouterr().out
    assert [m.attention.shape for m in result.modules] == [(8, 4, 4)] * 2
    with Image.open(out) as image:
        assert image.size == (9 * 24, 4 * 24)


def test_cli_errors(photo_files, tmp_path):
    image, out = str(photo_files['chelsea']), str(tmp_path / 'tokens.png')
    cases = [
        (['--image', str(tmp_path / 'nope.jpg'), '--out', out], '--image .*nope.jpg: no such file'),
        (['--image', image, '--checkpoint', str(tmp_path / 'nope.pth'), '--out', out],
         '--checkpoint .*nope.pth: no such file'),
        (['--image', image, '--model', 'resnet18', '--out', out], 'resnet18 has no VT modules'),
        (['--image', image, '--module', '7', '--out', out, '--img-size', '64'], 'module 7: the model has 2 VT modules'),
        (['--image', image, '--out', str(tmp_path / 'no' / 'dir.png')], 'no such directory'),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message):
            main(argv)
    assert not os.path.exists(out)


def test_cli_end_to_end_with_run_config(photo_files, tmp_path):
    """``python -m vt_timm.cli.visualize -c args.yaml --checkpoint ...``: a 1-channel 10-class run, as the quickstart."""
    torch.manual_seed(1)
    trained = sharpen(timm.create_model('vt_resnet18', in_chans=1, num_classes=10))
    torch.save({'state_dict': trained.state_dict(), 'epoch': 1}, tmp_path / 'model_best.pth.tar')
    (tmp_path / 'args.yaml').write_text(
        'model: vt_resnet18\nnum_classes: 10\nin_chans: 1\nimg_size: 64\nmean:\n- 0.286\nstd:\n- 0.353\n'
        'crop_pct: 1.0\nmodel_kwargs: {}\nepochs: 2\n')
    out = tmp_path / 'tokens.png'
    run = subprocess.run(
        [sys.executable, '-m', 'vt_timm.cli.visualize', '-c', str(tmp_path / 'args.yaml'), '--checkpoint',
         str(tmp_path / 'model_best.pth.tar'), '--image', str(photo_files['astronaut']), '--out', str(out),
         '--cell-px', '20'],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr
    assert '1x64x64 input' in run.stdout
    assert run.stdout.count(f'uniform ln(HW) = {math.log(16):.3f}') == 2  # 64 px: a 4x4 map
    with Image.open(out) as image:
        assert image.format == 'PNG' and image.size == (17 * 20, 4 * 20)
