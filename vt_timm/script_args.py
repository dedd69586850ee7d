"""What the command lines share: YAML configs keyed by flag dest names, input checks that fail at once
naming the flag and what is wrong, and models built with a checkpoint's weights."""
import argparse
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import timm
import torch.nn as nn
import yaml
from timm.models import load_checkpoint

from .data import OFFLINE_SOURCES


def check_inputs(args: argparse.Namespace, file_dests: Sequence[str]) -> None:
    """Files named by ``file_dests`` exist, ``--data-dir`` exists (or an offline source fills it)
    and ``--model`` is a registered or hub/local-dir model."""
    for dest in file_dests:
        path = getattr(args, dest)
        if path and not os.path.isfile(path):
            raise SystemExit(f'--{dest.replace("_", "-")} {path}: no such file')
    if args.data_dir and not os.path.isdir(args.data_dir) and args.dataset.lower() not in OFFLINE_SOURCES:
        raise SystemExit(f'--data-dir {args.data_dir}: no such directory')
    if args.model not in timm.list_models() and not args.model.startswith(('hf-hub:', 'local-dir:')):
        raise SystemExit(f'--model {args.model}: unknown model (see timm.list_models())')


def load_config(path: str) -> Dict[str, Any]:
    """The mapping of flag dest names to values in YAML file ``path`` (a recipe or a run's args.yaml)."""
    if not os.path.isfile(path):
        raise SystemExit(f'--config {path}: no such file')
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise SystemExit(f'--config {path}: expected a YAML mapping of flag dest names to values, '
                         f'got {type(cfg).__name__}')
    return cfg


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


def create_model_from_checkpoint(
        model_name: str,
        checkpoint: str = '',
        use_ema: bool = False,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        pretrained: bool = False,
) -> nn.Module:
    """A timm model with ``checkpoint``'s raw or EMA weights (timm's ``load_checkpoint``: safetensors or
    ``weights_only=True``); a file that does not load exits naming it and the model's settings."""
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes,
                              **({'in_chans': in_chans} if in_chans else {}), **(model_kwargs or {}))
    if checkpoint:
        try:
            load_checkpoint(model, str(checkpoint), use_ema=use_ema, weights_only=True)
        except Exception as e:  # truncated or tampered file, other architecture, other head size
            raise SystemExit(f'--checkpoint {checkpoint} does not load into {model_name} '
                             f'(num_classes={model.num_classes}, in_chans={model.in_chans}): {e}') from e
    return model
