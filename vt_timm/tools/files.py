"""Files written so that a reader (or a killed process) never sees half of one: any file, and results tables."""
import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union


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


RESULTS_FORMATS = ('csv', 'json')


def results_format(path: Union[str, Path], fmt: Optional[str] = None) -> str:
    """The format a results file is written in: ``fmt`` if given, else the file's extension (.csv or .json)."""
    fmt = fmt or Path(path).suffix.lstrip('.').lower()
    if fmt not in RESULTS_FORMATS:
        raise ValueError(f'{path}: results are written as {" or ".join(RESULTS_FORMATS)}; name the file *.csv or '
                         f'*.json (got {fmt or "no extension"!r})')
    return fmt


def write_results(path: Union[str, Path], rows: Union[Dict[str, Any], List[Dict[str, Any]]],
                  fmt: Optional[str] = None) -> None:
    """Write one result (a dict) or a table of them (a list of dicts), atomically, as CSV or JSON
    (``results_format``). JSON keeps the given structure; CSV writes one row per dict, the header the union
    of their keys in first-seen order, nested values as JSON text."""
    fmt = results_format(path, fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        with open(tmp, 'w', newline='') as f:
            if fmt == 'json':
                json.dump(rows, f, indent=2)
                f.write('\n')
            else:
                table = [rows] if isinstance(rows, dict) else rows
                keys = list(dict.fromkeys(k for row in table for k in row))
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(
                    {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in table)
