"""What the command lines share: YAML configs keyed by flag dest names and input checks that fail at once
naming the flag and what is wrong."""
import argparse
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..tools.checkpoints import is_model_name
from ..tools.configs import load_config
from ..tools.data import OFFLINE_SOURCES


def check_files(args: argparse.Namespace, file_dests: Sequence[str]) -> None:
    """Every file named by a flag in ``file_dests`` (dest names; unset flags are skipped) exists."""
    for dest in file_dests:
        path = getattr(args, dest)
        if path and not os.path.isfile(path):
            raise SystemExit(f'--{dest.replace("_", "-")} {path}: no such file')


def check_model(name: str, flag: str = '--model') -> None:
    """``name`` is a model timm can build (``is_model_name``)."""
    if not is_model_name(name):
        raise SystemExit(f'{flag} {name}: unknown model (see timm.list_models())')


def check_inputs(args: argparse.Namespace, file_dests: Sequence[str]) -> None:
    """Files named by ``file_dests`` exist, ``--data-dir`` exists (or an offline source fills it)
    and ``--model`` is a model timm can build."""
    check_files(args, file_dests)
    if args.data_dir and not os.path.isdir(args.data_dir) and args.dataset.lower() not in OFFLINE_SOURCES:
        raise SystemExit(f'--data-dir {args.data_dir}: no such directory')
    check_model(args.model)


def parse_args_with_config(
        config_parser: argparse.ArgumentParser,
        create_parser: Callable[[], argparse.ArgumentParser],
        argv: Optional[Sequence[str]] = None,
        strict: bool = True,
        rename: Optional[Dict[str, str]] = None,
        ignore: Sequence[str] = (),
) -> Tuple[argparse.Namespace, str]:
    """Defaults from ``-c FILE.yaml`` (keys are flag dest names), then the command line wins.

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
    return parser.parse_args(remaining), config_args.config
