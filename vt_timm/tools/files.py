"""Files written so that a reader (or a killed process) never sees half of one."""
import contextlib
import os
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def replacing(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same folder and suffix); the block writes it, and it is
    renamed over ``path`` (atomic) if the block succeeds, deleted otherwise: the old file stays intact."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp{path.suffix}')
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
