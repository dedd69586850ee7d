"""Bad inputs to every entry point that reads a file (train.py's are tested with train.py): validate.py
--checkpoint/--data-dir, vt-export --checkpoint/--image, vt-hub export and ``local-dir:`` folders,
vt-visualize --checkpoint/--image, segment.py --checkpoint/--data-dir; and model keywords out of range.

Each input either works correctly (RGBA, palette, 16-bit grey and CMYK images are converted, a one-pixel
image is resized) or is refused with a message naming it and what was expected: SystemExit with a message
(printed without a traceback) from the command lines, ValueError/RuntimeError from the library. No input
file, and no output file that existed, is changed; a pickle whose unpickling would run a command never runs.
"""
import hashlib
import json
import os
import pickle
import re
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
from PIL import Image

from vt_timm.cli import export, hub, segment, validate, visualize
from vt_timm.models.vt_fpn import create_segmentation_model
from vt_timm.tools.hub import check_folder
from vt_timm.tools.images import load_image
from vt_timm.tools.segmentation_data import SegmentationFolder

pytestmark = [
    pytest.mark.usefixtures('one_thread'),
    pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning'),
    pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning'),
    pytest.mark.filterwarnings('ignore:Detected pickle protocol:UserWarning'),
]

NUM_CLASSES = 2
SIZE = 64  # the VT-ResNets' smallest input
SEG = ['--backbone', 'resnet18', '--fpn-chs', '16', '--head-chs', '8', '--img-size', str(SIZE), '-j', '0', '-b', '2']


class Exploit:
    """Unpickling this runs ``touch <marker>``."""
    marker: Path

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def snapshot(*roots: Path) -> Dict[str, Tuple]:
    """Every file under ``roots``: (size, mtime, inode) and, up to 1 MB, its sha256 (hashing the 40 MB
    checkpoints before and after every case would take most of the test time; any write changes the mtime,
    a replacement the inode)."""
    files = [p for root in roots for p in sorted(root.rglob('*')) if p.is_file()]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino,
                     hashlib.sha256(p.read_bytes()).hexdigest() if p.stat().st_size <= 2 ** 20 else '')
            for p in files}


def refused(run: Callable[[], object], match: str, *roots: Path, error: type = SystemExit) -> str:
    """``run()`` raises ``error`` matching ``match`` (a SystemExit with a message: printed without traceback);
    nothing under ``roots`` changes and no pickled command ran. Returns the message."""
    before = snapshot(*roots)
    with pytest.raises(error, match=f'(?s){match}') as info:
        run()
    if error is SystemExit:
        assert isinstance(info.value.code, str), 'SystemExit without a message'
    assert snapshot(*roots) == before, 'a file changed'
    assert not Exploit.marker.exists(), 'the pickled command ran'
    return str(info.value)


def save_image(path: Path, array: np.ndarray, mode: str = '') -> Path:
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def _photo(height: int = 80, width: int = 96) -> np.ndarray:
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.chelsea()).resize((width, height), Image.Resampling.BILINEAR))


def bad_checkpoints(root: Path, model: nn.Module, foreign: nn.Module, wrong_head: nn.Module) -> Dict[str, Path]:
    """Broken and mismatched weights files for ``model``."""
    root.mkdir()
    weights = model.state_dict()
    torch.save({'state_dict': weights}, root / 'good.pth.tar')
    safetensors.torch.save_file(weights, root / 'good.safetensors')
    data, sdata = (root / 'good.pth.tar').read_bytes(), (root / 'good.safetensors').read_bytes()
    paths = {name: root / name for name in (
        'good.pth.tar', 'good.safetensors', 'truncated.pth', 'empty.pth', 'truncated.safetensors', 'foreign.pth',
        'wrong_head.pth', 'exploit.pth', 'exploit_pickle.pth', 'missing_key.safetensors', 'extra_key.safetensors')}
    paths['truncated.pth'].write_bytes(data[:len(data) // 2])
    paths['empty.pth'].write_bytes(b'')
    paths['truncated.safetensors'].write_bytes(sdata[:len(sdata) // 2])
    torch.save(foreign.state_dict(), paths['foreign.pth'])
    torch.save(wrong_head.state_dict(), paths['wrong_head.pth'])
    torch.save({'conv1.weight': Exploit()}, paths['exploit.pth'])  # torch's zip format
    paths['exploit_pickle.pth'].write_bytes(pickle.dumps({'conv1.weight': Exploit()}))  # a plain pickle
    missing = {k: v for k, v in weights.items() if k != next(iter(weights))}
    safetensors.torch.save_file(missing, paths['missing_key.safetensors'])
    safetensors.torch.save_file({**weights, 'extra.weight': torch.zeros(3)}, paths['extra_key.safetensors'])
    return paths


# what the message says about each kind of checkpoint (after naming the file)
CHECKPOINT_MESSAGES = {
    'truncated.pth': 'cannot be read as weights', 'empty.pth': 'cannot be read as weights',
    'truncated.safetensors': 'cannot be read as weights', 'foreign.pth': 'does not fit .*missing key',
    # the segmentation model's cfg names no classifier, so its message shows the shapes only
    'wrong_head.pth': r'does not fit .*(num_classes=5|file \(5)',
    'exploit.pth': 'cannot be read as weights.*weights_only',
    'exploit_pickle.pth': 'cannot be read as weights.*weights_only',
    'missing_key.safetensors': 'does not fit .*missing key', 'extra_key.safetensors': 'does not fit .*unexpected key',
}


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> Dict[str, Path]:
    """The inputs (under 'inputs') and output files that already exist (under 'outputs')."""
    root = tmp_path_factory.mktemp('bad_inputs')
    inputs, outputs = root / 'inputs', root / 'outputs'
    inputs.mkdir()
    outputs.mkdir()
    Exploit.marker = root / 'MARKER'
    torch.manual_seed(0)
    classifier = timm.create_model('vt_resnet18', num_classes=NUM_CLASSES)
    paths = {'root': root, 'inputs': inputs, 'outputs': outputs}
    for name, path in bad_checkpoints(inputs / 'vt', classifier, timm.create_model('resnet18', num_classes=2),
                                      timm.create_model('vt_resnet18', num_classes=5)).items():
        paths[f'vt/{name}'] = path
    seg_model = create_segmentation_model('resnet18', 'fpn', NUM_CLASSES, fpn_chs=16, head_chs=8)
    seg_wrong_head = create_segmentation_model('resnet18', 'fpn', 5, fpn_chs=16, head_chs=8)
    for name, path in bad_checkpoints(inputs / 'seg', seg_model, classifier, seg_wrong_head).items():
        paths[f'seg/{name}'] = path
    (inputs / 'args.yaml').write_text(f'model: vt_resnet18\nnum_classes: {NUM_CLASSES}\nimg_size: {SIZE}\n')

    photo = _photo()
    images = inputs / 'images'
    images.mkdir()
    paths['photo.png'] = save_image(images / 'photo.png', photo)
    save_image(images / 'photo.jpg', photo)
    for name in ('png', 'jpg'):
        data = (images / f'photo.{name}').read_bytes()
        (images / f'truncated.{name}').write_bytes(data[:len(data) // 2])
    (images / 'empty.png').write_bytes(b'')
    (images / 'notes.jpg').write_text('not an image\n')
    save_image(images / 'rgba.png', photo, 'RGBA')
    save_image(images / 'palette.png', photo, 'P')
    save_image(images / 'grey16.png', photo.mean(2).astype(np.uint8).astype(np.uint16) * 257)  # 8-bit grey x 257
    save_image(images / 'cmyk.jpg', photo, 'CMYK')
    save_image(images / 'one_pixel.png', photo[:1, :1])
    for name in IMAGE_KINDS:
        paths[name] = images / name

    folder = inputs / 'classes3' / 'validation'  # validate.py: 3 class folders
    for i, name in enumerate('abc'):
        (folder / name).mkdir(parents=True)
        save_image(folder / name / 'x.png', np.roll(photo, 10 * i, axis=1))
    paths['classes3'] = folder.parent
    paths['classes2'] = inputs / 'classes2'
    shutil.copytree(folder.parent, paths['classes2'], ignore=lambda _, names: [n for n in names if n == 'c'])
    (inputs / 'empty_folder').mkdir()
    paths['empty_folder'] = inputs / 'empty_folder'
    paths['segdata'] = segmentation_folder(inputs / 'segdata', photo)

    (outputs / 'model.pt').write_bytes(b'an earlier export')
    (outputs / 'tokens.png').write_bytes(b'an earlier figure')
    (outputs / 'results.json').write_text('{"an": "earlier result"}\n')
    return paths


def segmentation_folder(root: Path, photo: np.ndarray, num_classes: int = NUM_CLASSES, mode: str = '') -> Path:
    """segment.py's layout: train and val splits of two image/mask pairs, classes.txt."""
    rng = np.random.RandomState(0)
    for split in ('train', 'val'):
        for sub in ('images', 'masks'):
            (root / split / sub).mkdir(parents=True)
        for i in range(2):
            image = np.roll(photo, 7 * i, axis=0)
            if mode == 'I;16':
                save_image(root / split / 'images' / f'{i}.png', (image.mean(2) * 257).astype(np.uint16))
            else:
                save_image(root / split / 'images' / f'{i}.{"jpg" if mode == "CMYK" else "png"}', image, mode)
            mask = rng.randint(0, num_classes, image.shape[:2]).astype(np.uint8)
            save_image(root / split / 'masks' / f'{i}.png', mask)
    (root / 'classes.txt').write_text(''.join(f'class{c}\n' for c in range(NUM_CLASSES)))
    return root


# --------------------------------------------------------------------------------------- checkpoints


def run_validate(files: Dict[str, Path], checkpoint: Path) -> Dict:
    return validate.main(['--model', 'vt_resnet18', '--num-classes', str(NUM_CLASSES), '--checkpoint', str(checkpoint),
                          '--data-dir', str(files['classes2']), '--img-size', str(SIZE), '-b', '2', '-j', '0',
                          '--results-file', str(files['outputs'] / 'results.json'), '--results-format', 'json'])


def run_export(files: Dict[str, Path], checkpoint: Path) -> Dict:
    return export.main(['--num-classes', str(NUM_CLASSES), '--checkpoint', str(checkpoint), '--format', 'torchscript',
                        '--img-size', str(SIZE), '--output', str(files['outputs'] / 'model.pt')])


def run_hub_export(files: Dict[str, Path], checkpoint: Path) -> None:
    hub.main(['export', str(checkpoint), '--out', str(files['outputs'] / 'hub'), '--tag', 'test',
              '--args', str(files['inputs'] / 'args.yaml')])


def run_visualize(files: Dict[str, Path], checkpoint: Path) -> object:
    return visualize.main(['--num-classes', str(NUM_CLASSES), '--checkpoint', str(checkpoint), '--image',
                           str(files['photo.png']), '--img-size', str(SIZE), '--out',
                           str(files['outputs'] / 'tokens.png')])


def run_segment(files: Dict[str, Path], checkpoint: Path) -> Dict:
    return segment.main([*SEG, '--data-dir', str(files['segdata']), '--eval-only', '--checkpoint', str(checkpoint),
                         '--results-file', str(files['outputs'] / 'results.json')])


CHECKPOINT_ENTRY_POINTS = {'validate': run_validate, 'export': run_export, 'hub export': run_hub_export,
                           'visualize': run_visualize, 'segment': run_segment}


@pytest.mark.parametrize('kind', CHECKPOINT_MESSAGES)
@pytest.mark.parametrize('entry_point', CHECKPOINT_ENTRY_POINTS)
def test_bad_checkpoint_is_refused_naming_it(files, entry_point, kind):
    path = files[f'{"seg" if entry_point == "segment" else "vt"}/{kind}']
    run = CHECKPOINT_ENTRY_POINTS[entry_point]
    refused(lambda: run(files, path), f'{re.escape(str(path))} {CHECKPOINT_MESSAGES[kind]}', files['root'])
    assert not (files['outputs'] / 'hub').exists()


def test_intact_checkpoints_load(files):
    """The reference: the intact files of the same models load."""
    assert run_validate(files, files['vt/good.safetensors'])['samples'] == 2
    assert run_visualize(files, files['vt/good.pth.tar']).input.shape == (3, SIZE, SIZE)
    assert run_segment(files, files['seg/good.safetensors'])['samples'] == 2


# --------------------------------------------------------------------------------------------- images


# image file -> None if it must work, else what the refusal says
IMAGE_KINDS = {
    'truncated.png': 'not an image PIL can read', 'truncated.jpg': 'not an image PIL can read',
    'empty.png': 'not an image PIL can read', 'notes.jpg': 'not an image PIL can read',
    'rgba.png': None, 'palette.png': None, 'grey16.png': None, 'cmyk.jpg': None, 'one_pixel.png': None,
}
BROKEN_IMAGES = [name for name, message in IMAGE_KINDS.items() if message]
CONVERTED_IMAGES = [name for name, message in IMAGE_KINDS.items() if not message]


@pytest.mark.parametrize('name', BROKEN_IMAGES)
@pytest.mark.parametrize('entry_point', ['export', 'visualize'])
def test_broken_image_is_refused_naming_it(files, entry_point, name):
    path = files[name]
    if entry_point == 'export':
        argv = ['--num-classes', '2', '--image', str(path), '--format', 'torchscript', '--img-size', str(SIZE),
                '--output', str(files['outputs'] / 'model.pt')]
        refused(lambda: export.main(argv), f'--image {re.escape(str(path))}: {IMAGE_KINDS[name]}', files['root'])
    else:
        argv = ['--num-classes', '2', '--image', str(path), '--img-size', str(SIZE),
                '--out', str(files['outputs'] / 'tokens.png')]
        refused(lambda: visualize.main(argv), f'image {re.escape(str(path))}: {IMAGE_KINDS[name]}', files['root'])


def _rgb(files: Dict[str, Path], name: str) -> Image.Image:
    with Image.open(files[name]) as image:
        return image.convert('RGB')


# converted image -> (the RGB image the model must see, mean abs tolerance on the normalised input)
CONVERSIONS = {
    'rgba.png': (lambda f: _rgb(f, 'photo.png'), 0.),  # alpha dropped
    'palette.png': (lambda f: _rgb(f, 'palette.png'), 0.),  # the palette's colours
    'grey16.png': (lambda f: Image.fromarray(np.asarray(_rgb(f, 'photo.png')).mean(2).astype(np.uint8)).convert('RGB'),
                   0.),  # v / 257: the 8-bit grey it was made from
    'cmyk.jpg': (lambda f: _rgb(f, 'photo.png'), 0.1),  # JPEG's loss only (0.05; inverted CMYK: 1.2)
    'one_pixel.png': (lambda f: _rgb(f, 'one_pixel.png'), 0.),  # resized up to the input size
}


@pytest.mark.parametrize('name', CONVERTED_IMAGES)
def test_visualize_converts_any_image(files, name, tmp_path):
    """RGBA, palette, 16-bit grey, CMYK and a one-pixel image: the model sees the RGB image they hold."""
    from timm.data import create_transform

    before = snapshot(files['inputs'])
    out = tmp_path / 'tokens.png'
    result = visualize.main(['--num-classes', '2', '--image', str(files[name]), '--img-size', str(SIZE),
                             '--out', str(out)])
    reference, tolerance = CONVERSIONS[name]
    expected = create_transform(**result.data_config)(reference(files))
    assert result.input.shape == expected.shape == (3, SIZE, SIZE)
    assert (result.input - expected).abs().mean() <= tolerance
    assert all(torch.isfinite(m.attention).all() for m in result.modules)
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert snapshot(files['inputs']) == before


@pytest.mark.parametrize('name', ['grey16.png', 'one_pixel.png'])  # (the others: as in visualize, load_image)
def test_export_checks_with_any_image(files, name, tmp_path):
    out = tmp_path / 'model.pt'
    before = snapshot(files['inputs'])
    diffs = export.main(['--num-classes', '2', '--image', str(files[name]), '--format', 'torchscript',
                         '--img-size', str(SIZE), '--output', str(out)])
    assert len(diffs) == 2 and all(d <= 1e-5 for d in diffs.values())
    assert out.is_file() and snapshot(files['inputs']) == before


def test_load_image_converts_pixels_correctly(files, tmp_path):
    photo = np.asarray(Image.open(files['photo.png']))
    assert np.array_equal(np.asarray(load_image(files['rgba.png'])), photo)  # alpha dropped
    with Image.open(files['palette.png']) as palette:
        assert np.array_equal(np.asarray(load_image(files['palette.png'])), np.asarray(palette.convert('RGB')))
    cmyk = np.asarray(load_image(files['cmyk.jpg']), dtype=np.float64)
    assert np.abs(cmyk - photo).mean() < 5  # JPEG's loss only (2.7); inverted or garbled CMYK: ~70
    assert np.asarray(load_image(files['one_pixel.png'])).shape == (1, 1, 3)  # the eval transform resizes it


@pytest.mark.parametrize('in_chans', [1, 3])
def test_16_bit_grey_scales_its_full_range(tmp_path, in_chans):
    """0..65535 -> 0..255 by the 16-bit range (65535 white), not clipped (PIL's convert) nor stretched to the
    image's own maximum: a dark 16-bit image stays dark."""
    values = np.array([[0, 128, 257, 1000, 32768, 65535], [0, 50, 100, 150, 200, 255]], np.uint16)
    expected = np.array([[0, 0, 1, 4, 128, 255], [0, 0, 0, 1, 1, 1]])
    for row, want in zip(values, expected):
        image = load_image(save_image(tmp_path / 'grey16.png', row[None]), in_chans)
        got = np.asarray(image)
        assert image.mode == ('L' if in_chans == 1 else 'RGB')
        assert np.array_equal(got if in_chans == 1 else got[..., 0], want[None])


def test_images_without_a_defined_range_are_refused(tmp_path):
    save_image(tmp_path / 'float.tiff', np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(ValueError, match='float.tiff: 32-bit floating-point pixels have no defined range'):
        load_image(tmp_path / 'float.tiff')
    save_image(tmp_path / 'int32.tiff', np.array([[0, 70000]], np.int32))
    with pytest.raises(ValueError, match=r'int32.tiff: I values 0..70000 are outside the 16-bit range'):
        load_image(tmp_path / 'int32.tiff')


# -------------------------------------------------------------------------------------------- folders


def test_validate_folder_with_more_classes_than_the_model_is_refused(files):
    message = refused(lambda: validate.main(['--num-classes', '2', '--data-dir', str(files['classes3']),
                                             '--img-size', str(SIZE), '-b', '2', '-j', '0']),
                      'classes3: 3 classes \\(a, b, c\\), but the model has 2: labels from 2 on have no logit',
                      files['root'])
    assert '--num-classes 3' in message


def test_validate_valid_labels_count_as_the_models_classes(files, tmp_path):
    (tmp_path / 'valid.txt').write_text('0\n1\n')
    refused(lambda: validate.main(['--num-classes', '5', '--data-dir', str(files['classes3']), '--valid-labels',
                                   str(tmp_path / 'valid.txt'), '--img-size', str(SIZE), '-b', '2', '-j', '0']),
            'classes3: 3 classes .* but --valid-labels .* score 2', files['root'])


def test_validate_model_with_more_classes_than_the_folder_works(files):
    """As in timm: the folder's labels 0..2 index the model's first logits (e.g. a class-mapped subset)."""
    results = validate.main(['--num-classes', '5', '--data-dir', str(files['classes3']), '--img-size', str(SIZE),
                             '-b', '2', '-j', '0'])
    assert results['samples'] == 3 and np.isfinite(results['loss'])


def test_validate_empty_folder_is_refused(files):
    refused(lambda: validate.main(['--num-classes', '2', '--data-dir', str(files['empty_folder']),
                                   '--img-size', str(SIZE), '-j', '0']),
            'empty_folder .*: Found 0 images', files['root'])


def _segment(data_dir: Path, *extra: str) -> Callable[[], Dict]:
    return lambda: segment.main([*SEG, '--data-dir', str(data_dir), *extra])


@pytest.fixture
def segdata(files, tmp_path) -> Path:
    """A copy of the segmentation folder, to break."""
    return Path(shutil.copytree(files['segdata'], tmp_path / 'segdata'))


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.mark.parametrize('breaks,message', [
    (lambda d: shutil.rmtree(d / 'val'), 'val/images: no such directory'),
    (lambda d: [p.unlink() for p in (d / 'val' / 'images').iterdir()], 'val/images: no .jpg/.jpeg/.png images'),
    (lambda d: (d / 'val' / 'masks' / '1.png').unlink(), '1 image\\(s\\) without a mask'),
    (lambda d: _truncate(d / 'val' / 'images' / '0.png'), 'image .*val/images/0.png: not an image PIL can read'),
    (lambda d: (d / 'val' / 'images' / '0.png').write_bytes(b''), 'val/images/0.png: not an image PIL can read'),
    (lambda d: _truncate(d / 'val' / 'masks' / '0.png'), 'val/masks/0.png: not a mask PIL can read'),
    (lambda d: save_image(d / 'val' / 'masks' / '1.png', np.full((80, 96), 3, np.uint8)),
     r'val/masks/1.png: values \[3\] are neither classes 0..1 nor the ignore index 255'),
    (lambda d: save_image(d / 'val' / 'masks' / '1.png', np.zeros((8, 8), np.uint8)), 'mask is 8x8, its image'),
    (lambda d: (d / 'classes.txt').write_text(''), 'classes.txt is empty'),
], ids=['no val split', 'no images', 'no mask', 'truncated image', 'empty image', 'truncated mask',
        'more classes in a mask', 'mask size', 'empty classes.txt'])
def test_segment_bad_folder_is_refused_naming_it(files, segdata, breaks, message):
    breaks(segdata)
    refused(_segment(segdata, '--eval-only', '--checkpoint', str(files['seg/good.pth.tar'])), message,
            segdata, files['root'])


def test_segment_empty_folder_is_refused(files):
    refused(_segment(files['empty_folder'], '--num-classes', '2'), 'empty_folder/val/images: no such directory',
            files['root'])


def test_segment_data_error_in_a_worker_process_is_one_line(files, segdata):
    """A DataLoader worker re-raises the error with its traceback as text: the exit message is the error's own."""
    save_image(segdata / 'val' / 'masks' / '0.png', np.full((80, 96), 7, np.uint8))
    message = refused(_segment(segdata, '--eval-only', '--checkpoint', str(files['seg/good.pth.tar']), '-j', '1'),
                      r'val/masks/0.png: values \[7\]', segdata, files['root'])
    assert '\n' not in message and 'Traceback' not in message


def test_segment_model_with_more_classes_than_the_masks_works(files, tmp_path):
    """Masks using 2 of 5 classes train and evaluate; classes absent from labels and predictions get no IoU."""
    metrics = segment.main([*SEG, '--data-dir', str(files['segdata']), '--num-classes', '5', '--epochs', '1',
                            '--output', str(tmp_path), '--experiment', 'run'])
    assert metrics['samples'] == 2 and len(metrics['iou']) == 5 and np.isfinite(metrics['loss'])


@pytest.mark.parametrize('mode', ['RGBA', 'P', 'I;16', 'CMYK'])
def test_segment_converts_any_image(files, tmp_path, mode):
    data = segmentation_folder(tmp_path / 'data', _photo(), mode=mode)
    metrics = _segment(data, '--eval-only', '--checkpoint', str(files['seg/good.pth.tar']))()
    assert metrics['samples'] == 2 and 0 <= metrics['pixel_acc'] <= 1


def test_segment_one_pixel_images_are_resized(files, tmp_path):
    data = segmentation_folder(tmp_path / 'data', _photo(1, 1))
    metrics = _segment(data, '--eval-only', '--checkpoint', str(files['seg/good.pth.tar']))()
    assert metrics['samples'] == 2 and 0 <= metrics['pixel_acc'] <= 1


def test_segmentation_folder_scales_16_bit_images(tmp_path):
    """A 16-bit image gives the same input as its 8-bit version (v / 257), not PIL's clipped conversion."""
    grey8 = (_photo().mean(2)).astype(np.uint8)
    inputs = []
    for name, array in (('grey8', grey8), ('grey16', grey8.astype(np.uint16) * 257)):
        root = tmp_path / name
        for sub in ('images', 'masks'):
            (root / 'val' / sub).mkdir(parents=True)
        save_image(root / 'val' / 'images' / 'a.png', array)
        save_image(root / 'val' / 'masks' / 'a.png', np.zeros(array.shape, np.uint8))
        dataset = SegmentationFolder(str(root), 'val', 2, (SIZE, SIZE), (0.5,) * 3, (0.25,) * 3)
        inputs.append(dataset[0][0])
    torch.testing.assert_close(inputs[1], inputs[0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ hub


@pytest.fixture(scope='module')
def hub_folder(files) -> Path:
    """A good vt-hub export of the classifier (the reference the broken copies are made from)."""
    out = files['root'] / 'hub_good'
    hub.main(['export', str(files['vt/good.pth.tar']), '--out', str(out), '--tag', 'test', '--args',
              str(files['inputs'] / 'args.yaml')])
    return out


RUN_FILE_FLAGS = {'results.json': '--results', 'labels.txt': '--label-names'}  # args.yaml: always --args


@pytest.mark.parametrize('name,content,message', [
    ('args.yaml', 'model: [unclosed\n', '--args .*args.yaml: not a YAML file'),
    ('args.yaml', '- a list\n', '--args .*args.yaml: expected a YAML mapping'),
    ('args.yaml', 'num_classes: 2\n', '--args .*args.yaml: model None is no model timm can build'),
    ('args.yaml', 'model: vt_resnet18\nnum_classes: 2\nmodel_kwargs: {num_tokens: 0}\n',
     'model vt_resnet18 .*: num_tokens=0: expected an integer of at least 2'),
    ('results.json', '{"top1": ', '--results .*results.json: not a JSON file'),
    ('results.json', '{"top1": 50}', r"--results .*results.json: missing \['samples', 'top5'"),
    ('labels.txt', b'\xff\xfe\x00', '--label-names .*labels.txt: not a text file'),
    ('labels.txt', 'cat\n', '--label-names .*labels.txt: 1 names .* but the model has 2 classes'),
], ids=['yaml', 'not a mapping', 'no model', 'model kwargs', 'results json', 'results keys', 'labels binary',
        'labels count'])
def test_hub_export_refuses_bad_run_files(files, tmp_path, name, content, message):
    """The run's args.yaml, validate.py results and class names: refused before the export folder exists."""
    shutil.copy(files['inputs'] / 'args.yaml', tmp_path / 'args.yaml')
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    argv = ['export', str(files['vt/good.pth.tar']), '--out', str(tmp_path / 'out'), '--tag', 'test',
            '--args', str(tmp_path / 'args.yaml')]
    if name in RUN_FILE_FLAGS:
        argv += [RUN_FILE_FLAGS[name], str(path)]
    refused(lambda: hub.main(argv), message, tmp_path, files['root'])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({'args.yaml', name})


def _broken_copy(source: Path, target: Path, change: Callable[[Path], object]) -> Path:
    shutil.copytree(source, target)
    change(target)
    return target


def _config(folder: Path, **changes) -> None:
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps({**config, **changes}))


def _weights(folder: Path, change: Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]) -> None:
    path = folder / 'model.safetensors'
    safetensors.torch.save_file(change(safetensors.torch.load_file(path)), path)


BROKEN_WEIGHTS = {
    'no weights': (lambda d: (d / 'model.safetensors').unlink(), 'No suitable checkpoints found'),
    'truncated weights': (lambda d: _truncate(d / 'model.safetensors'), 'model.safetensors cannot be loaded'),
    'empty weights': (lambda d: (d / 'model.safetensors').write_bytes(b''), 'model.safetensors cannot be loaded'),
    'missing key': (lambda d: _weights(d, lambda w: {k: v for k, v in w.items() if k != 'fc.weight'}),
                    r"1 missing keys \['fc.weight'\]"),
    'extra key': (lambda d: _weights(d, lambda w: {**w, 'extra': torch.zeros(1)}), r"1 unexpected keys \['extra'\]"),
    'wrong head': (lambda d: _weights(d, lambda w: {**w, 'fc.weight': torch.zeros(5, 1024), 'fc.bias': torch.zeros(5)}),
                   'size mismatch for fc.weight'),
    'foreign': (lambda d: _weights(d, lambda w: timm.create_model('resnet18', num_classes=2).state_dict()),
                'missing keys .* unexpected keys .*layer4'),
}
UNREADABLE_WEIGHTS = ('no weights', 'truncated weights', 'empty weights')


@pytest.mark.parametrize('kind', BROKEN_WEIGHTS)
def test_local_dir_with_broken_weights_fails_naming_them(hub_folder, tmp_path, kind):
    change, message = BROKEN_WEIGHTS[kind]
    folder = _broken_copy(hub_folder, tmp_path / 'hub', change)
    refused(lambda: timm.create_model(f'local-dir:{folder}', pretrained=True),
            f'vt_resnet18: pretrained weights {re.escape(str(folder))}.*{message}', folder, error=RuntimeError)
    # vt-hub push checks that the weights are a readable safetensors file, not what they hold
    with pytest.raises(SystemExit, match='model.safetensors') if kind in UNREADABLE_WEIGHTS else nullcontext():
        check_folder(folder)


def test_local_dir_model_keywords_out_of_range(hub_folder, tmp_path):
    folder = _broken_copy(hub_folder, tmp_path / 'hub', lambda d: _config(d, model_args={'num_tokens': 1}))
    refused(lambda: timm.create_model(f'local-dir:{folder}', pretrained=True),
            'num_tokens=1: expected an integer of at least 2', folder, error=ValueError)


@pytest.mark.parametrize('change,timm_error,push_message', [
    (lambda d: (d / 'config.json').unlink(), FileNotFoundError, r"missing \['config.json'\]"),
    (lambda d: (d / 'config.json').write_text(''), json.JSONDecodeError, 'config.json: not a JSON file'),
    (lambda d: (d / 'config.json').write_text('{"architecture": '), json.JSONDecodeError, 'not a JSON file'),
    (lambda d: (d / 'config.json').write_text('[1, 2]'), TypeError, 'config.json: expected a JSON object, got list'),
    (lambda d: _config(d, architecture='vt_resnet99'), RuntimeError, "unknown architecture 'vt_resnet99'"),
], ids=['no config', 'empty config', 'truncated config', 'config not an object', 'unknown architecture'])
def test_broken_hub_config(hub_folder, tmp_path, change, timm_error, push_message):
    """timm reads config.json before any vt_timm code runs: its own errors (a JSONDecodeError does not name the
    file); vt-hub push (``check_folder``) names the file and the problem. Neither changes the folder."""
    folder = _broken_copy(hub_folder, tmp_path / 'hub', change)
    refused(lambda: timm.create_model(f'local-dir:{folder}', pretrained=True), '', folder, error=timm_error)
    refused(lambda: hub.main(['push', str(folder), '--repo-id', 'someone/model', '--dry-run']), push_message, folder)


# ------------------------------------------------------------------------------------- model keywords


@pytest.mark.parametrize('kwargs,message', [
    (dict(num_tokens=0), 'num_tokens=0: expected an integer of at least 2'),
    (dict(num_tokens=1), 'num_tokens=1: expected an integer of at least 2'),
    (dict(num_tokens=2.5), 'num_tokens=2.5: expected an integer'),
    (dict(token_chs=-8), 'token_chs=-8: expected an integer of at least 1'),
    (dict(token_chs=0), 'token_chs=0: expected an integer of at least 1'),
    (dict(qk_dim=-1), 'qk_dim=-1: expected an integer of at least 1'),
    (dict(num_heads=0), 'num_heads=0: expected an integer of at least 1'),
    (dict(num_heads=3), r'num_heads=3: expected a divisor of qk_dim=256, token_chs=1024, vt_chs=512 .*\[1, 2, 4'),
    (dict(num_heads=8, qk_dim=100), r'num_heads=8: expected a divisor of qk_dim=100.*one of \[1, 2, 4\]'),
    (dict(num_heads=3, projector=False), r'num_heads=3: expected a divisor of qk_dim=256, token_chs=1024 \('),
    (dict(num_heads=3, relation='none'), 'num_heads=3: expected a divisor of qk_dim=256, vt_chs=512 '),
    (dict(drop_rate=-0.1), r'drop_rate=-0.1: expected a probability in \[0, 1\)'),
    (dict(drop_rate=1.0), r'drop_rate=1.0: expected a probability in \[0, 1\)'),
    (dict(drop_rate=float('nan')), r'drop_rate=nan: expected a probability in \[0, 1\)'),
    (dict(drop_rate='0.1'), r"drop_rate='0.1': expected a probability"),
    (dict(drop_path_rate=-0.1), r'drop_path_rate=-0.1: expected a probability in \[0, 1\)'),
    (dict(drop_path_rate=1.0), r'drop_path_rate=1.0: expected a probability in \[0, 1\)'),
    (dict(drop_block_rate=-0.2), r'drop_block_rate=-0.2: expected a probability in \[0, 1\)'),
    (dict(drop_block_rate=1.5), r'drop_block_rate=1.5: expected a probability in \[0, 1\)'),
    (dict(output_stride=32), 'output_stride=32: .* must be 16 .* or 8'),
    (dict(output_stride=4), 'output_stride=4: .* must be 16 .* or 8'),
    (dict(num_classes=-1), 'num_classes=-1: expected an integer of at least 0'),
    (dict(in_chans=0), 'in_chans=0: expected an integer of at least 1'),
    (dict(vt_depth=0), 'vt_depth=0: expected an integer of at least 1'),
], ids=lambda v: ','.join(f'{k}={x}' for k, x in v.items()) if isinstance(v, dict) else None)
def test_model_keyword_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('vt_resnet18', **kwargs)


def test_model_keywords_at_the_edges_of_their_range(photos):
    model = timm.create_model('vt_resnet18', num_tokens=2, num_heads=4, drop_rate=0.99, drop_path_rate=0.,
                              drop_block_rate=0.5, output_stride=8, num_classes=0, in_chans=1).train()
    assert model(photos((SIZE, SIZE), in_chans=1)).shape == (2, 1024)
    with pytest.raises(ValueError, match='num_classes=-2: expected an integer of at least 0'):
        model.reset_classifier(-2)
    # heads split nothing without a transformer relation and projectors: any count builds, as before
    timm.create_model('vt_resnet18', num_heads=3, relation='graphconv', projector=False)


@pytest.mark.parametrize('argv,message', [
    (['--model-kwargs', 'num_tokens=0'], '--model vt_resnet18: num_tokens=0: expected an integer of at least 2'),
    (['--num-classes', '-1'], '--model vt_resnet18: num_classes=-1: expected an integer of at least 0'),
])
def test_validate_model_keywords_out_of_range(files, argv, message):
    refused(lambda: validate.main(['--data-dir', str(files['classes3']), '-j', '0', *argv]), message, files['root'])


def test_segment_model_keywords_out_of_range(files):
    refused(_segment(files['segdata'], '--backbone', 'vt_resnet18', '--model-kwargs', 'drop_path_rate=2'),
            r'--backbone vt_resnet18 --head fpn: drop_path_rate=2: expected a probability in \[0, 1\)', files['root'])

