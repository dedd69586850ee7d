"""What the command lines share: YAML configs keyed by flag dest names, timm's precision and compile flags,
and input checks that fail at once naming the flag and what is wrong."""
import argparse
import os
from contextlib import nullcontext
from functools import partial
from typing import Callable, ContextManager, Dict, Optional, Sequence, Tuple

import torch

from ..tools.checkpoints import is_model_name
from ..tools.configs import load_config
from ..tools.data import OFFLINE_SOURCES
from ..tools.files import results_format

AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}
MODEL_DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}  # --model-dtype
FUSERS = ('', 'te', 'old', 'legacy', 'nvfuser', 'nvf')  # what timm.utils.set_jit_fuser takes


def add_amp_arguments(parser: argparse.ArgumentParser) -> None:  # or an argument group
    """timm's ``--amp`` and ``--amp-dtype`` (default float16, as in timm's train.py, validate.py, benchmark.py)."""
    parser.add_argument('--amp', action='store_true', default=False, help='mixed precision (autocast)')
    parser.add_argument('--amp-dtype', default='float16', choices=tuple(AMP_DTYPES),
                        help='autocast dtype under --amp (default: float16)')


def amp_dtype(name: str) -> torch.dtype:
    """The torch dtype an ``--amp-dtype`` value names (a config file's value included)."""
    if name not in AMP_DTYPES:
        raise SystemExit(f'--amp-dtype {name}: expected one of {", ".join(AMP_DTYPES)}')
    return AMP_DTYPES[name]


def create_autocast(args: argparse.Namespace, device_type: str) -> Callable[[], ContextManager]:
    """A context factory: autocast to ``--amp-dtype`` on ``device_type`` under ``--amp``, else a no-op."""
    if not args.amp:
        return nullcontext
    return partial(torch.autocast, device_type, dtype=amp_dtype(args.amp_dtype))


def check_model_dtype(args: argparse.Namespace) -> Optional[torch.dtype]:
    """The dtype ``--model-dtype`` names (None when unset), which AMP cannot take but float32."""
    if args.model_dtype is not None and args.model_dtype not in MODEL_DTYPES:
        raise SystemExit(f'--model-dtype {args.model_dtype}: expected one of {", ".join(MODEL_DTYPES)}')
    if args.amp and args.model_dtype not in (None, 'float32'):
        raise SystemExit(f'--model-dtype {args.model_dtype} with --amp: AMP needs a float32 model')
    return MODEL_DTYPES.get(args.model_dtype)


def check_compilers(args: argparse.Namespace) -> None:
    """At most one of ``--torchscript``, ``--torchcompile``, ``--aot-autograd``; ``--fuser`` one timm knows."""
    compilers = [flag for flag, on in (('--torchscript', args.torchscript), ('--torchcompile', args.torchcompile),
                                       ('--aot-autograd', getattr(args, 'aot_autograd', False))) if on]
    if len(compilers) > 1:
        raise SystemExit(f'{" and ".join(compilers)}: choose one')
    if args.fuser not in FUSERS:
        raise SystemExit(f'--fuser {args.fuser}: expected one of {FUSERS}')


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:  # or an argument group
    """timm's ``--torchcompile [BACKEND]`` (inductor when given bare) and ``--torchcompile-mode``."""
    parser.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor', metavar='BACKEND',
                        help='torch.compile the model with this backend (default: inductor)')
    parser.add_argument('--torchcompile-mode', type=str, default=None, metavar='MODE',
                        help='torch.compile mode, e.g. max-autotune (default: None)')


def add_dataset_source_arguments(parser: argparse.ArgumentParser) -> None:  # or an argument group
    """timm's dataset-source flags shared by train.py and validate.py: downloads, class map, image mode, the
    keys of hfds/wds datasets and Hugging Face remote code."""
    parser.add_argument('--dataset-download', action='store_true', default=False,
                        help='let torch/ and tfds/ datasets download themselves')
    parser.add_argument('--class-map', default='', type=str, metavar='FILE',
                        help='class name per line (line number = class index) for folder datasets')
    parser.add_argument('--input-img-mode', default=None, type=str,
                        help='PIL mode images are read in; default from the input channels (L, RGB, RGBA)')
    parser.add_argument('--input-key', default=None, type=str, help='image key of hfds/wds datasets')
    parser.add_argument('--target-key', default=None, type=str, help='label key of hfds/wds datasets')
    parser.add_argument('--dataset-trust-remote-code', action='store_true', default=False,
                        help='allow a Hugging Face dataset to run its own code')


def add_unsupported_argument(parser: argparse.ArgumentParser, *option_strings: str, reason: str, **kwargs) -> None:
    """A flag of timm's script that cannot apply here: parsed with timm's name, type and default, and
    refused by ``refuse_unsupported`` (naming ``reason``) when it is set to anything but that default."""
    action = parser.add_argument(*option_strings, help=f'not supported here: {reason}', **kwargs)
    action.unsupported_reason, action.timm_default = reason, action.default


def refuse_unsupported(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit naming the first flag made by ``add_unsupported_argument`` that is set (command line or config)."""
    for action in parser._actions:
        reason = getattr(action, 'unsupported_reason', None)
        if reason is not None and getattr(args, action.dest) != action.timm_default:
            raise SystemExit(f'{action.option_strings[0]} {getattr(args, action.dest)!r}: {reason}')


def create_config_parser(help: str) -> argparse.ArgumentParser:
    """The ``-c/--config FILE`` parser that ``parse_args_with_config`` reads before the script's own."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE', help=help)
    return parser


def check_files(args: argparse.Namespace, file_dests: Sequence[str]) -> None:
    """Every file named by a flag in ``file_dests`` (dest names; unset flags are skipped) exists."""
    for dest in file_dests:
        path = getattr(args, dest)
        if path and not os.path.isfile(path):
            raise SystemExit(f'--{dest.replace("_", "-")} {path}: no such file')


def check_results_file(path: str, fmt: Optional[str] = None) -> None:
    """``write_results`` can write ``path`` (if set): as ``fmt`` (--results-format), else by its extension."""
    if path:
        try:
            results_format(path, fmt)
        except ValueError as e:
            raise SystemExit(f'--results-{"format" if fmt else "file"}: {e}') from None


def check_model(name: str, flag: str = '--model') -> None:
    """``name`` is a model timm can build (``is_model_name``)."""
    if not is_model_name(name):
        raise SystemExit(f'{flag} {name}: unknown model (see timm.list_models())')


def check_inputs(args: argparse.Namespace, file_dests: Sequence[str]) -> None:
    """Files named by ``file_dests`` exist, ``--data-dir`` exists (or an offline source fills it),
    ``--model`` is a model timm can build and ``--amp-dtype`` a dtype (``amp_dtype``)."""
    check_files(args, file_dests)
    if args.data_dir and not os.path.isdir(args.data_dir) and args.dataset.lower() not in OFFLINE_SOURCES:
        raise SystemExit(f'--data-dir {args.data_dir}: no such directory')
    check_model(args.model)
    amp_dtype(args.amp_dtype)


def check_mean_std(data_config: Dict, no_prefetcher: bool, model: str) -> None:
    """Without timm's prefetcher (``--no-prefetcher``) the loader normalises, and it needs one mean and std per
    input channel: the prefetcher alone adapts a model's 3-channel statistics to other channel counts."""
    channels = data_config['input_size'][0]
    if no_prefetcher and not len(data_config['mean']) == len(data_config['std']) == channels:
        raise SystemExit(f'--no-prefetcher: the mean/std of {model} have {len(data_config["mean"])} values for '
                         f'{channels} input channels (only the prefetcher adapts them): pass --mean and --std')


def parse_args_with_config(
        config_parser: argparse.ArgumentParser,
        create_parser: Callable[[], argparse.ArgumentParser],
        argv: Optional[Sequence[str]] = None,
        strict: bool = True,
        rename: Optional[Dict[str, str]] = None,
        ignore: Sequence[str] = (),
) -> Tuple[argparse.Namespace, str]:
    """Defaults from ``-c FILE.yaml`` (keys are flag dest names), then the command line wins.

    Flags made by ``add_unsupported_argument`` are refused when set (``refuse_unsupported``).
    ``strict``: a key that is no flag's dest is an error (a script's own recipe); otherwise such keys
    are skipped (taking the shared keys of another script's args.yaml). ``rename`` maps config keys to
    this parser's dest names; ``ignore`` lists dests a config never sets. Returns (args, config path).
    """
    config_args, remaining = config_parser.parse_known_args(argv)
    parser = create_parser()
    if config_args.config:
        cfg = {(rename or {}).get(k, k): v for k, v in load_config(config_args.config).items()}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(cfg) - known)
        if strict and unknown:
            parser.error(f'{config_args.config}: unknown keys {unknown} (keys are flag dest names, e.g. batch_size)')
        parser.set_defaults(**{k: v for k, v in cfg.items() if k in known and k not in ignore})
    args = parser.parse_args(remaining)
    refuse_unsupported(parser, args)
    return args, config_args.config
