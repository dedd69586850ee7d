"""What train.py and validate.py share: YAML configs keyed by flag dest names, and input checks that fail
at once, naming the flag and what is wrong."""
import argparse
import os
from typing import Any, Dict, Sequence

import timm
import yaml

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
