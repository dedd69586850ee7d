#!/usr/bin/env python3
"""segment.py in a checkout: vt_timm's ``vt_timm.cli.segment`` command line (installed as ``vt-segment``)."""
from vt_timm.cli.segment import main

if __name__ == '__main__':
    main()
