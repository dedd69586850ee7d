"""Offline real data: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``."""
import gzip
import shutil
from pathlib import Path
from typing import Optional, Union

import torch

from .files import replacing

DEBIAN_FASHION_MNIST = Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_FILES = (
    'train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte',
)
# per-pixel statistics of the 60k training images, in [0, 1] units
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def prepare_fashion_mnist(root: Union[str, Path], source: Path = DEBIAN_FASHION_MNIST) -> Path:
    """Unpack the Debian package's files into ``root/FashionMNIST/raw`` (torchvision's layout).

    Afterwards ``torchvision.datasets.FashionMNIST(root, download=False)`` and timm's
    ``create_dataset('torch/fashion_mnist', root=root)`` read them. Returns ``root``.
    """
    root = Path(root)
    raw = root / 'FashionMNIST' / 'raw'
    missing = [name for name in FASHION_MNIST_FILES if not (raw / name).exists()]
    if not missing:
        return root
    if not all((source / f'{name}.gz').exists() for name in missing):
        raise FileNotFoundError(
            f'Fashion-MNIST not found in {source}: install it with '
            f'`apt-get update && apt-get install -y dataset-fashion-mnist` (as root)')
    raw.mkdir(parents=True, exist_ok=True)
    for name in missing:
        with replacing(raw / name) as tmp, gzip.open(source / f'{name}.gz', 'rb') as src, open(tmp, 'wb') as dst:
            shutil.copyfileobj(src, dst)  # a killed run never leaves a truncated file behind
    return root


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
        **kwargs,
) -> torch.utils.data.Dataset:
    """timm's ``create_dataset`` (no downloads), plus Fashion-MNIST unpacked from the Debian package
    and an optional fixed random subset of ``num_samples`` samples."""
    from timm.data import create_dataset as timm_create_dataset

    if name.lower() in OFFLINE_SOURCES:
        OFFLINE_SOURCES[name.lower()](root)
    dataset = timm_create_dataset(name, root=str(root), split=split, is_training=is_training, download=False, **kwargs)
    if num_samples is None or num_samples >= len(dataset):
        return dataset
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_samples]
    return _Subset(dataset, indices.tolist())
