"""Image files in, as PIL images a model's eval transform takes: one reader for every tool."""
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ['load_image']


def load_image(path: Optional[Union[str, Path]] = None, in_chans: int = 3) -> Image.Image:
    """An image file in any format PIL reads (by default matplotlib's bundled photograph of Grace Hopper), as
    'L' (1 channel) or 'RGB' (3 channels); 16/32-bit grey is scaled to 8 bit, animations give their first frame."""
    if path is None:
        from matplotlib import cbook
        path = cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)
    path = Path(path)
    if in_chans not in (1, 3):
        raise ValueError(f'image {path}: a model with in_chans={in_chans} cannot take an image file (1 or 3 channels)')
    if not path.is_file():
        raise FileNotFoundError(f'image {path}: no such file')
    try:
        with Image.open(path) as image:
            image.seek(0)  # first frame of an animation / multi-page file
            if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16/32-bit grey: scale to 8 bit
                array = np.asarray(image, dtype=np.float64)
                image = Image.fromarray((255 * array / max(array.max(), 1)).astype(np.uint8))
            return image.convert('L' if in_chans == 1 else 'RGB')
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f'image {path}: not an image PIL can read: {e}') from e
