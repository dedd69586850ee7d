#!/usr/bin/env python3
"""train.py in a checkout: vt_timm's ``vt_timm.cli.train`` command line (installed as ``vt-train``)."""
from vt_timm.cli.train import main

if __name__ == '__main__':
    main()
