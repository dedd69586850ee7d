#!/usr/bin/env python3
"""benchmark.py in a checkout: vt_timm's ``vt_timm.cli.benchmark`` command line (installed as ``vt-benchmark``)."""
from vt_timm.cli.benchmark import main

if __name__ == '__main__':
    main()
