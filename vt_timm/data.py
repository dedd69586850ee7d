"""Offline real data: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``."""
import gzip
import shutil
from pathlib import Path
from typing import Tuple, Union

import torch

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
        partial = raw / f'{name}.partial'
        with gzip.open(source / f'{name}.gz', 'rb') as src, open(partial, 'wb') as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(raw / name)  # atomic: a killed run never leaves a truncated file behind
    return root


def load_fashion_mnist(root: Union[str, Path], train: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """All images (N, 28, 28) uint8 and labels (N,) int64 of one Fashion-MNIST split."""
    from torchvision.datasets import FashionMNIST

    dataset = FashionMNIST(str(prepare_fashion_mnist(root)), train=train, download=False)
    return dataset.data, dataset.targets
