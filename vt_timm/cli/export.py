"""Command line of vt_timm.tools.export: a checkpoint to ONNX or TorchScript, checked against PyTorch.

    vt-export --model vt_resnet18 --checkpoint model_best.pth.tar --format onnx --out model.onnx
"""
import argparse
from typing import Dict, Optional, Sequence, Tuple

import torch.nn as nn

from ..tools.checkpoints import create_model_from_checkpoint
from ..tools.export import (
    ERROR_FACTOR, FORMATS, check_export, check_opset, check_output_path, export_onnx, export_torchscript,
    float32_error, image_batch, second_size,
)
from ..tools.files import replacing
from ..tools.images import load_image
from .args import check_files, check_model


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', '-m', default='vt_resnet18', metavar='NAME', help='timm model name')
    parser.add_argument('--checkpoint', default='', metavar='FILE', help='weights (.safetensors, .pth, .pth.tar)')
    parser.add_argument('--use-ema', action='store_true', help='export the checkpoint\'s EMA weights')
    parser.add_argument('--num-classes', type=int, default=None, metavar='N')
    parser.add_argument('--in-chans', type=int, default=None, metavar='N')
    parser.add_argument('--img-size', type=int, default=224, metavar='N', help='square input size exported and checked')
    parser.add_argument('--format', default='onnx', choices=FORMATS)
    parser.add_argument('--dynamic-size', action='store_true', help='ONNX: dynamic height and width axes')
    parser.add_argument('--opset', type=int, default=None, metavar='N', help='ONNX opset (default: the exporter\'s)')
    parser.add_argument('--image', default=None, metavar='FILE', help='photo to check with (default: grace_hopper.jpg)')
    parser.add_argument('--output', '-o', required=True, metavar='FILE', help='exported file')
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Fail before any work on a missing input file, an unknown model, an unwritable output path, an
    unsupported opset or ONNX-only flags given for TorchScript."""
    check_files(args, ('checkpoint', 'image'))
    check_model(args.model)
    for flag, value, check in (('--output', args.output, check_output_path), ('--opset', args.opset, check_opset)):
        try:
            check(value)
        except ValueError as e:
            raise SystemExit(f'{flag} {value}: {e}') from e
    if args.format == 'torchscript' and (args.dynamic_size or args.opset is not None):
        raise SystemExit('--dynamic-size and --opset apply to --format onnx only '
                         '(a TorchScript module takes any input size)')


def create_model(args: argparse.Namespace) -> nn.Module:
    """The model named by ``args`` in eval mode, with the checkpoint's weights if one is given."""
    try:
        return create_model_from_checkpoint(args.model, args.checkpoint, args.use_ema, args.num_classes,
                                            args.in_chans).eval()
    except ValueError as e:  # a model keyword out of range
        raise SystemExit(f'--model {args.model}: {e}') from e


def main(argv: Optional[Sequence[str]] = None) -> Dict[Tuple[int, int], float]:
    """Export and check; print and return the max abs difference to the eager model per checked (H, W).
    The file replaces ``--output`` only once it has passed the check."""
    args = create_parser().parse_args(argv)
    check_args(args)
    model = create_model(args)
    min_size = model.pretrained_cfg.get('min_input_size', (0,))[-1]
    if args.img_size < min_size:
        raise SystemExit(f'--img-size {args.img_size}: {args.model} needs at least {min_size}')
    sizes = [(args.img_size, args.img_size)]
    if args.dynamic_size or args.format == 'torchscript':
        sizes.append(second_size(args.img_size))
    try:
        image = load_image(args.image)
    except (OSError, ValueError) as e:
        raise SystemExit(f'--{e}') from e
    inputs = [image_batch(model, image, size) for size in sizes]

    with replacing(check_output_path(args.output)) as tmp:  # an export that fails its check replaces nothing
        if args.format == 'onnx':
            export_onnx(model, tmp, (model.in_chans, args.img_size, args.img_size), args.dynamic_size, args.opset)
        else:
            export_torchscript(model, tmp)
        diffs = dict(zip(sizes, check_export(model, tmp, args.format, inputs)))
        for ((h, w), diff), reference in zip(diffs.items(), float32_error(model, inputs)):
            print(f'{args.output} at {h}x{w}: max |{args.format} - PyTorch| = {diff:.3g} '
                  f'(PyTorch float32 vs float64: {reference:.3g})')
            if not diff <= ERROR_FACTOR * reference:  # also catches NaN
                raise SystemExit(f'{args.output} not written: the export differs from the PyTorch model by '
                                 f'{diff:.3g} at {h}x{w}, more than {ERROR_FACTOR:g}x PyTorch\'s float32 error')
    return diffs


if __name__ == '__main__':
    main()
