"""Command line of vt_timm.tools.segmentation_macs: the FPN / VT-FPN MAC table against Tables 9-10.

    python -m vt_timm.cli.segmentation_macs [--markdown]
"""
import argparse
from typing import Optional, Sequence

from ..tools.macs import format_table
from ..tools.segmentation_macs import macs_table


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='VT-FPN vs FPN MACs next to the paper\'s Tables 9-10')
    parser.add_argument('--backbones', nargs='+', default=['resnet50', 'resnet101'], help='timm backbones')
    parser.add_argument('--markdown', action='store_true', help='print a markdown table')
    args = parser.parse_args(argv)
    print('GMACs (multiply-adds) of one image; FPN/VT-FPN = the neck (the paper\'s "FPN FLOPs" column), '
          'total = backbone + neck + semantic head\n')
    print(format_table(macs_table(args.backbones), args.markdown))


if __name__ == '__main__':
    main()
