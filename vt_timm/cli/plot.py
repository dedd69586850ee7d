"""Command line of vt_timm.tools.plot: a run's summary.csv to its loss/accuracy curves PNG."""
import argparse
from typing import Optional, Sequence

from ..tools.plot import plot_summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('summary', help='a run\'s summary.csv')
    parser.add_argument('--out', default=None, help='PNG path (default: curves.png beside the CSV)')
    args = parser.parse_args(argv)
    print(plot_summary(args.summary, args.out))


if __name__ == '__main__':
    main()
