"""Run configs: YAML files of flag dest names to values (a recipe, or a train.py run's args.yaml).

The paper's recipes and the quickstart recipe ship with the package (``vt_timm/configs``) and are
named without path or extension: ``vt-train -c vt_resnet18_advanced``.
"""
import os
from pathlib import Path
from typing import Any, Dict, List

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'


def packaged_configs() -> List[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))


def resolve_config(name_or_path: str) -> Path:
    """A config file path, or the packaged recipe of that name (with or without ``.yaml``)."""
    if os.path.isfile(name_or_path):
        return Path(name_or_path)
    packaged = CONFIG_DIR / f'{name_or_path.removesuffix(".yaml")}.yaml'
    if os.sep not in name_or_path and packaged.is_file():
        return packaged
    raise SystemExit(f'--config {name_or_path}: no such file, and not a packaged recipe '
                     f'(one of {", ".join(packaged_configs())})')


def load_config(path: str) -> Dict[str, Any]:
    """The mapping of flag dest names to values in YAML file ``path`` (a file, or a packaged recipe's name)."""
    resolved = resolve_config(path)
    with open(resolved) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise SystemExit(f'--config {path}: expected a YAML mapping of flag dest names to values, '
                         f'got {type(cfg).__name__}')
    return cfg
