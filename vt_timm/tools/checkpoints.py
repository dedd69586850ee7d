"""Weights into models, loaded safely (safetensors, or ``torch.load(weights_only=True)``: no pickled code
runs), with errors that name the file and say what the model expected."""
import argparse
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import safetensors.torch
import timm
import torch
import torch.nn as nn
from timm.models import clean_state_dict


def is_model_name(name: str) -> bool:
    """A model ``timm.create_model`` can build: registered in timm (``import vt_timm`` adds the VT-ResNets)
    or a ``hf-hub:`` / ``local-dir:`` source."""
    return name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(name)


def architecture_name(model: nn.Module) -> str:
    """The model's timm architecture name (its class name where it has none)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def _checkpoint_shapes_hint(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> str:
    """'(the file has in_chans=1, num_classes=10)' from the stem conv and classifier shapes, if present."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    hints = []
    first_conv, classifier = cfg.get('first_conv'), cfg.get('classifier')
    if isinstance(first_conv, str) and getattr(state_dict.get(f'{first_conv}.weight'), 'ndim', 0) == 4:
        hints.append(f'in_chans={state_dict[f"{first_conv}.weight"].shape[1]}')
    if isinstance(classifier, str) and getattr(state_dict.get(f'{classifier}.weight'), 'ndim', 0) == 2:
        hints.append(f'num_classes={state_dict[f"{classifier}.weight"].shape[0]}')
    return f' (the file has {", ".join(hints)}: pass them as model kwargs)' if hints else ''


EMA_KEYS = ('state_dict_ema', 'model_ema')  # where timm's CheckpointSaver and others keep EMA weights


def read_state_dict(checkpoint: Union[str, Path], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The weights in a train.py checkpoint, a state dict or a ``.safetensors`` file, read safely
    (safetensors, or ``torch.load(weights_only=True)``: no pickled code runs), prefixes cleaned by timm's
    ``clean_state_dict``. ``use_ema`` takes the EMA weights and fails if the file holds none (timm's own
    ``load_state_dict`` falls back to the raw weights silently). Errors name the file."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path}: no such file')
    try:
        if path.suffix == '.safetensors':
            contents = safetensors.torch.load_file(str(path), device='cpu')
        else:
            # timm's own train.py keeps its argparse.Namespace in the checkpoint: a plain container, allowed
            with torch.serialization.safe_globals([argparse.Namespace]):
                contents = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # garbage, truncated, not a checkpoint, or a pickle that needs code to load
        blocked = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
        reason = (f'weights_only=True blocked loading it: it pickles {blocked.group(1)}, not only tensors and '
                  f'containers; nothing ran (if you trust the file, re-save its state dict as .safetensors)'
                  if blocked else f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
        raise ValueError(f'checkpoint {path} cannot be read as weights (torch.load weights_only=True, or '
                         f'safetensors): {reason}') from e
    wrapped = contents if isinstance(contents, dict) else {}
    key = next((k for k in (EMA_KEYS if use_ema else ('state_dict', 'model')) if wrapped.get(k) is not None), None)
    if use_ema and key is None:
        raise ValueError(f'checkpoint {path} holds no EMA weights (keys: {sorted(wrapped)[:8]})')
    state_dict = contents[key] if key else contents
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f'checkpoint {path}: expected a state dict of tensors (or a train.py checkpoint)')
    return clean_state_dict(state_dict)


def load_weights(model: nn.Module, checkpoint: Union[str, Path], use_ema: bool = False) -> nn.Module:
    """Load ``read_state_dict(checkpoint, use_ema)`` into ``model``; the keys must match exactly. Errors name
    the file and the model's settings."""
    state_dict = read_state_dict(checkpoint, use_ema)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ValueError(f'checkpoint {checkpoint} does not fit {architecture_name(model)} (in_chans='
                         f'{getattr(model, "in_chans", "?")}, num_classes={getattr(model, "num_classes", "?")})'
                         f'{_checkpoint_shapes_hint(model, state_dict)}: {e}') from e
    return model


def create_model_from_checkpoint(
        model_name: str,
        checkpoint: str = '',
        use_ema: bool = False,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        pretrained: bool = False,
) -> nn.Module:
    """A timm model with ``checkpoint``'s raw or EMA weights (``load_weights``), for the command lines: a
    file that does not load exits naming the ``--checkpoint`` flag, the file and the model's settings."""
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes,
                              **({'in_chans': in_chans} if in_chans else {}), **(model_kwargs or {}))
    if checkpoint:
        try:
            load_weights(model, checkpoint, use_ema=use_ema)
        except (OSError, ValueError) as e:
            raise SystemExit(f'--{e}') from e
    return model
