#!/usr/bin/env python3
"""validate.py in a checkout: vt_timm's ``vt_timm.cli.validate`` command line (installed as ``vt-validate``)."""
from vt_timm.cli.validate import main

if __name__ == '__main__':
    main()
