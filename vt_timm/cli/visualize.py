"""Command line of vt_timm.tools.visualize: per-token spatial attention maps of a VT model on an image."""
import argparse
from pathlib import Path
from typing import Optional, Sequence, Union

from ..tools.visualize import TokenAttention, create_vt_model, entropy_table, plot_token_attention, token_attention_maps
from .args import check_files, create_config_parser, parse_args_with_config


def _parse_module(value: str) -> Union[int, str]:
    if value == 'all':
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r}: expected a VT module index or all') from None


config_parser = create_config_parser('a run\'s args.yaml (or train.py recipe): model, num_classes, in_chans, '
                                     'img_size, mean, std, crop_pct, model_kwargs')


def create_parser() -> argparse.ArgumentParser:
    from timm.utils import ParseKwargs

    parser = argparse.ArgumentParser(
        description='Per-token spatial attention of a VT model on one image, as a PNG and an entropy table.',
        parents=[config_parser])
    parser.add_argument('--model', '-m', default='vt_resnet18', metavar='NAME', help='timm model name')
    parser.add_argument('--checkpoint', default='', metavar='FILE',
                        help='weights: train.py checkpoint, state dict (weights_only) or .safetensors')
    parser.add_argument('--use-ema', action='store_true', default=False, help='the checkpoint\'s EMA weights')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--in-chans', type=int, default=None)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='constructor keywords, e.g. num_tokens=8 num_heads=4')
    parser.add_argument('--image', required=True, metavar='FILE', help='image file (any format PIL reads)')
    parser.add_argument('--out', default='tokens.png', metavar='FILE', help='PNG to write (default tokens.png)')
    parser.add_argument('--module', default='all', type=_parse_module, metavar='N|all',
                        help='VT module index, or all (default)')
    parser.add_argument('--img-size', type=int, default=None, metavar='N', help='input size (default: the model\'s)')
    parser.add_argument('--mean', type=float, nargs='+', default=None)
    parser.add_argument('--std', type=float, nargs='+', default=None)
    parser.add_argument('--crop-pct', type=float, default=None)
    parser.add_argument('--cell-px', type=int, default=96, metavar='N', help='pixels per heat map (default 96)')
    parser.add_argument('--colors', type=int, default=None, metavar='N',
                        help='quantise the PNG to N colours (smaller file)')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Defaults from ``-c FILE.yaml`` (keys that are this command's dest names), then the command line."""

    args, config = parse_args_with_config(
        config_parser, create_parser, argv, strict=False, ignore=('config', 'image', 'out', 'checkpoint', 'module'))
    args.config = config
    return args


def main(argv: Optional[Sequence[str]] = None) -> TokenAttention:
    args = parse_args(argv)
    check_files(args, ('image', 'checkpoint'))
    out = Path(args.out)
    if not out.parent.is_dir():
        raise SystemExit(f'--out {out}: no such directory {out.parent}')
    kwargs = dict(args.model_kwargs or {})
    for key in ('num_classes', 'in_chans'):
        if getattr(args, key) is not None:
            kwargs.setdefault(key, getattr(args, key))
    try:
        model = create_vt_model(args.model, args.checkpoint or None, use_ema=args.use_ema, **kwargs)
        result = token_attention_maps(
            model, args.image, modules=args.module, img_size=args.img_size, mean=args.mean, std=args.std,
            crop_pct=args.crop_pct)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'error: {e}') from e
    print(f'{args.model} on {args.image} ({"x".join(map(str, result.input.shape))} input)')
    print(entropy_table(result))
    print(plot_token_attention(result, out, cell_px=args.cell_px, colors=args.colors))
    return result


if __name__ == '__main__':
    main()
