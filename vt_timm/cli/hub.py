"""Command line of vt_timm.tools.hub: a train.py run folder to a Hugging Face Hub folder, and its upload.

    vt-hub export output/run/model_best.pth.tar --out hub/vt_resnet18.fmnist --tag fmnist \
        [--use-ema] [--results output/run/validate.json] [--label-names classes.txt]
    vt-hub push hub/vt_resnet18.fmnist --repo-id you/vt_resnet18.fmnist [--dry-run]
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..tools.hub import check_folder, export, push


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    export_parser = commands.add_parser('export', help='train.py checkpoint -> Hub-ready folder')
    export_parser.add_argument('checkpoint', type=Path, help='train.py checkpoint (or a plain state dict)')
    export_parser.add_argument('--out', type=Path, required=True, help='folder to create')
    export_parser.add_argument('--tag', required=True, help='pretrained tag, e.g. fmnist -> vt_resnet18.fmnist')
    export_parser.add_argument('--repo-id', default='', help='Hub repo the card\'s usage names (default <model>.<tag>)')
    export_parser.add_argument('--use-ema', action='store_true', help='export the EMA weights')
    export_parser.add_argument('--args', type=Path, default=None, help='the run\'s args.yaml (default: next to it)')
    export_parser.add_argument('--results', type=Path, default=None, help='validate.py --results-format json file')
    export_parser.add_argument('--label-names', type=Path, default=None, metavar='FILE',
                               help='class names, one a line in class-index order (default: from the run\'s dataset)')
    push_parser = commands.add_parser('push', help='upload an exported folder')
    push_parser.add_argument('folder', type=Path)
    push_parser.add_argument('--repo-id', required=True, help='owner/name on the Hub')
    push_parser.add_argument('--private', action='store_true')
    push_parser.add_argument('--dry-run', action='store_true', help='check and list, upload nothing')
    args = parser.parse_args(argv)
    if args.command == 'export':
        out = export(args.checkpoint, args.out, args.tag, args.repo_id, args.use_ema, args.args, args.results,
                     args.label_names)
        print(f'wrote {out}: ' + ', '.join(p.name for p in check_folder(out)))
    else:
        print(push(args.folder, args.repo_id, args.dry_run, args.private))


if __name__ == '__main__':
    main()
