"""Segmentation data: image/mask folders, their joint transforms (torchvision v2), collation, class names.

    <root>/<split>/images/<name>.jpg|.jpeg|.png   any PIL-readable image, read as RGB (``load_image``)
    <root>/<split>/masks/<name>.png               one class index per pixel (8-bit), 255 = ignore
    <root>/classes.txt                            optional: one class name per line

An image or mask that cannot be used raises ``SegmentationDataError`` naming the file.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .images import DECODE_ERRORS, load_image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


class SegmentationDataError(ValueError):
    """An image or mask of a ``SegmentationFolder`` that cannot be used; the message names the file. A
    DataLoader worker re-raises it as this type, its message then ending in this one's (``data_error_message``)."""


def data_error_message(error: SegmentationDataError) -> str:
    """The original message of ``error``, also when a DataLoader worker wrapped it in its traceback text."""
    last = str(error).strip().splitlines()[-1]
    return last.removeprefix(f'{type(error).__module__}.{type(error).__qualname__}: ')


class _Resize(v2.Resize):
    """``v2.Resize`` (bilinear, antialiased) whose masks are resized nearest-exact, each output pixel taking
    the label at its centre as the image's resize does, or kept at their own size (``resize_masks=False``)."""

    def __init__(self, size: Sequence[int], resize_masks: bool = True):
        super().__init__(size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        self.resize_masks = resize_masks

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            if not self.resize_masks:
                return inpt
            return F.resize(inpt, self.size, interpolation=InterpolationMode.NEAREST_EXACT)
        return super().transform(inpt, params)


def create_segmentation_transform(
        img_size: Tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        hflip: float = 0.,
        resize_masks: bool = True,
) -> v2.Compose:
    """Joint transform of (PIL image, ``tv_tensors.Mask``): resize to ``img_size`` (H, W) (image bilinear
    with PIL, mask nearest-exact or, without ``resize_masks``, at its own size), a horizontal flip of both
    with probability ``hflip``, the image to a float ``tv_tensors.Image`` normalised by ``mean``/``std``."""
    flip = [v2.RandomHorizontalFlip(hflip)] if hflip else []
    return v2.Compose([
        _Resize(img_size, resize_masks=resize_masks), v2.ToImage(), *flip, v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


class SegmentationFolder(torch.utils.data.Dataset):
    """(image, mask) pairs from ``<root>/<split>/images`` and ``<root>/<split>/masks``.

    Images are resized to ``img_size`` and normalised; masks are resized with nearest neighbours when
    ``resize_masks`` (training) and kept at their own size otherwise (evaluation at full resolution).
    """

    def __init__(
            self,
            root: str,
            split: str,
            num_classes: int,
            img_size: Tuple[int, int],
            mean: Sequence[float],
            std: Sequence[float],
            ignore_index: int = 255,
            resize_masks: bool = True,
            hflip: float = 0.,
    ):
        image_dir, mask_dir = Path(root) / split / 'images', Path(root) / split / 'masks'
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f'{folder}: no such directory (expected <root>/<split>/images and '
                                        f'<root>/<split>/masks, see segment.py --help)')
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.images:
            raise FileNotFoundError(f'{image_dir}: no {"/".join(IMAGE_EXTENSIONS)} images')
        self.masks = [mask_dir / f'{p.stem}.png' for p in self.images]
        unmatched = [str(image) for image, mask in zip(self.images, self.masks) if not mask.is_file()]
        if unmatched:
            raise FileNotFoundError(f'{len(unmatched)} image(s) without a mask in {mask_dir}, e.g. {unmatched[0]} '
                                    f'(expected {mask_dir / (Path(unmatched[0]).stem + ".png")})')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.transform = create_segmentation_transform(img_size, mean, std, hflip=hflip, resize_masks=resize_masks)

    def __len__(self) -> int:
        return len(self.images)

    def read_mask(self, index: int, size: Tuple[int, int]) -> np.ndarray:
        """The mask as int64 (H, W), checked against the image ``size`` (W, H) and the class range."""
        path = self.masks[index]
        try:
            with Image.open(path) as mask:
                mask.load()
                mode, mask_size, values = mask.mode, mask.size, np.asarray(mask, dtype=np.int64)
        except DECODE_ERRORS as e:
            raise SegmentationDataError(f'{path}: not a mask PIL can read: {type(e).__name__}: {e}') from e
        if mask_size != size:
            raise SegmentationDataError(f'{path}: mask is {mask_size[0]}x{mask_size[1]}, its image '
                                        f'{self.images[index].name} {size[0]}x{size[1]}')
        if mode not in ('L', 'P', 'I', 'I;16'):
            raise SegmentationDataError(f'{path}: mode {mode}; expected a single-channel class-index PNG')
        bad = np.setdiff1d(np.unique(values), [*range(self.num_classes), self.ignore_index])
        if bad.size:
            raise SegmentationDataError(f'{path}: values {bad[:10].tolist()} are neither classes '
                                        f'0..{self.num_classes - 1} nor the ignore index {self.ignore_index}')
        return values

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        try:
            image = load_image(self.images[index], in_chans=3)
        except ValueError as e:
            raise SegmentationDataError(str(e)) from e
        mask = tv_tensors.Mask(torch.from_numpy(self.read_mask(index, image.size)))
        return self.transform(image, mask)


def collate_full_size(batch: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Stack the (same-size) images, keep the masks at their own sizes."""
    return torch.stack([image for image, _ in batch]), [mask for _, mask in batch]


def read_class_names(root: str) -> Optional[List[str]]:
    """The lines of ``<root>/classes.txt``, or None without that file."""
    path = Path(root) / 'classes.txt'
    return path.read_text().splitlines() if path.is_file() else None
