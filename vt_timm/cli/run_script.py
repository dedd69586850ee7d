"""Run a script that knows nothing of vt_timm (timm's own validate.py, benchmark.py, ...) with the
VT-ResNets registered:

    python -m vt_timm.cli.run_script path/to/timm/validate.py --model vt_resnet18 --data-dir /data/imagenet

The script runs as ``__main__`` with ``sys.argv`` set to it and its arguments, after ``import vt_timm``.
"""
import runpy
import sys
from typing import Optional, Sequence

import vt_timm  # noqa: F401  registers the VT-ResNets


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        raise SystemExit(__doc__)
    sys.argv = argv
    runpy.run_path(argv[0], run_name='__main__')


if __name__ == '__main__':
    main()
