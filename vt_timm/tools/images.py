"""Image files in, as PIL images a model's eval transform takes: one reader for every tool."""
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

__all__ = ['load_image']

# what PIL raises for a file it cannot identify or decode (UnidentifiedImageError is an OSError; a broken
# PNG chunk can raise SyntaxError)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
GREY16_MODES = ('I;16', 'I;16B', 'I;16L', 'I')  # how PIL opens 16-bit grey files ('I' holds int32 values)


def _grey16_to_8bit(image: Image.Image, path: Path) -> Image.Image:
    """16-bit grey (0..65535) as 8-bit 'L' (0..255), 65535 -> 255: the full 16-bit range maps onto the 8-bit one."""
    array = np.asarray(image, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ValueError(f'image {path}: {image.mode} values {array.min()}..{array.max()} are outside the 16-bit '
                         f'range 0..65535; expected 8- or 16-bit grey')
    return Image.fromarray(((array * 255 + 32767) // 65535).astype(np.uint8))


def _unreadable(path: Path, error: Exception) -> ValueError:
    return ValueError(f'image {path}: not an image PIL can read: {type(error).__name__}: {error}')


def load_image(path: Optional[Union[str, Path]] = None, in_chans: int = 3) -> Image.Image:
    """An image file in any format PIL reads (by default matplotlib's bundled photograph of Grace Hopper), as
    'L' (1 channel) or 'RGB' (3 channels): RGBA drops alpha, palette and CMYK images are converted, 16-bit grey
    is scaled 0..65535 -> 0..255, animations give their first frame. Any size is returned as it is (the eval
    transform resizes). ValueError naming the file for one PIL cannot decode or a floating-point image."""
    if path is None:
        from matplotlib import cbook
        path = cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)
    path = Path(path)
    if in_chans not in (1, 3):
        raise ValueError(f'image {path}: a model with in_chans={in_chans} cannot take an image file (1 or 3 channels)')
    if not path.is_file():
        raise FileNotFoundError(f'image {path}: no such file')
    try:
        image = Image.open(path)
    except DECODE_ERRORS as e:  # not an image
        raise _unreadable(path, e) from e
    with image:
        try:
            image.seek(0)  # first frame of an animation / multi-page file
            image.load()
        except DECODE_ERRORS as e:  # truncated, undecodable
            raise _unreadable(path, e) from e
        if image.mode == 'F':
            raise ValueError(f'image {path}: 32-bit floating-point pixels have no defined range; expected an '
                             f'8- or 16-bit image')
        if image.mode in GREY16_MODES:
            image = _grey16_to_8bit(image, path)
        return image.convert('L' if in_chans == 1 else 'RGB')
