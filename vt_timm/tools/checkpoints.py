"""Weights into models, loaded safely (safetensors, or ``torch.load(weights_only=True)``: no pickled code
runs), with errors that name the file and say what the model expected."""
import argparse
import re
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

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
ZIP_MAGIC = b'PK\x03\x04'  # torch.save's (zip) format; anything else is a legacy pickle or safetensors


def _is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` name, or the format's header: an 8-byte little-endian length, then a JSON object."""
    if path.suffix == '.safetensors':
        return True
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and 0 < int.from_bytes(head[:8], 'little') < path.stat().st_size


def _unreadable_reason(path: Path, error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` or safetensors refused ``path``, in words."""
    message = str(error)
    blocked = re.search(r'GLOBAL (\S+)', message, re.IGNORECASE)
    if blocked:
        return (f'weights_only=True blocked loading it: it pickles {blocked.group(1)}, not only tensors and '
                f'containers; nothing ran (if you trust the file, re-save its state dict as .safetensors)')
    detail = f'{type(error).__name__}: {message.splitlines()[0] if message else ""}'
    with open(path, 'rb') as f:
        is_zip = f.read(4) == ZIP_MAGIC
    if is_zip or _is_safetensors(path):
        return f'the file is truncated or corrupt ({detail})'
    return f'not a PyTorch or safetensors checkpoint ({detail})'


def read_checkpoint(checkpoint: Union[str, Path], mmap: bool = False) -> Any:
    """The contents of a ``torch.save`` file (a train.py checkpoint, a state dict) or of a safetensors file
    (a state dict), read safely: safetensors, or ``torch.load(weights_only=True)`` (no pickled code runs).
    ``mmap`` maps a zip-format file's tensors instead of reading them (cheap for looking at keys and shapes).
    Errors name the file and say why it cannot be read."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path}: no such file')
    problem = 'cannot be read as weights (torch.load weights_only=True, or safetensors)'
    if path.stat().st_size == 0:
        raise ValueError(f'checkpoint {path} {problem}: the file is empty')
    try:
        if _is_safetensors(path):
            return safetensors.torch.load_file(str(path), device='cpu')
        with open(path, 'rb') as f:
            is_zip = f.read(4) == ZIP_MAGIC
        # timm's own train.py keeps its argparse.Namespace in the checkpoint: a plain container, allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap and is_zip)
    except Exception as e:  # garbage, truncated, not a checkpoint, or a pickle that needs code to load
        raise ValueError(f'checkpoint {path} {problem}: {_unreadable_reason(path, e)}') from e


def state_dict_of(contents: Any, path: Union[str, Path], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The weights in what ``read_checkpoint`` returned: a train.py checkpoint's (raw or ``use_ema``) or the
    state dict itself, prefixes cleaned by timm's ``clean_state_dict``. ``use_ema`` fails if the file holds
    no EMA weights (timm's own ``load_state_dict`` falls back to the raw weights silently)."""
    wrapped = contents if isinstance(contents, dict) else {}
    key = next((k for k in (EMA_KEYS if use_ema else ('state_dict', 'model')) if wrapped.get(k) is not None), None)
    if use_ema and key is None:
        raise ValueError(f'checkpoint {path} holds no EMA weights (keys: {sorted(wrapped)[:8]})')
    state_dict = contents[key] if key else contents
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f'checkpoint {path}: expected a state dict of tensors (or a train.py checkpoint)')
    return clean_state_dict(state_dict)


def read_state_dict(checkpoint: Union[str, Path], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The weights in a train.py checkpoint, a state dict or a safetensors file (``read_checkpoint``,
    ``state_dict_of``). Errors name the file."""
    return state_dict_of(read_checkpoint(checkpoint), checkpoint, use_ema)


def _listed(keys: Sequence[str], shown: int = 3) -> str:
    return ', '.join(keys[:shown]) + (', ...' if len(keys) > shown else '')


def state_dict_mismatch(expected: Dict[str, torch.Tensor], found: Dict[str, torch.Tensor],
                        ignore: Sequence[str] = (), ignore_shape: Sequence[str] = ()) -> str:
    """What keeps ``found`` (a file's weights) from loading strictly into a model whose state dict is
    ``expected``: the missing and unexpected keys and the shapes that differ, in words ('' if it fits). Keys
    under an ``ignore`` prefix, and the shapes of ``ignore_shape`` keys, are not compared."""
    def kept(key: str) -> bool:
        return not any(key == p or key.startswith(f'{p}.') for p in ignore)

    missing = [k for k in expected if k not in found and kept(k)]
    unexpected = [k for k in found if k not in expected and kept(k)]
    shapes = [f'{k}: file {tuple(found[k].shape)}, model {tuple(expected[k].shape)}' for k in expected
              if k in found and kept(k) and k not in ignore_shape and found[k].shape != expected[k].shape]
    parts = [f'{len(missing)} missing key(s) ({_listed(missing)})'] if missing else []
    parts += [f'{len(unexpected)} unexpected key(s) ({_listed(unexpected)})'] if unexpected else []
    parts += [f'{len(shapes)} shape(s) differ ({"; ".join(shapes[:3])}{"; ..." if len(shapes) > 3 else ""})'] \
        if shapes else []
    return ', '.join(parts)


def model_settings(model: nn.Module) -> str:
    """'vt_resnet18 (in_chans=1, num_classes=10)': what a checkpoint has to fit."""
    return (f'{architecture_name(model)} (in_chans={getattr(model, "in_chans", "?")}, '
            f'num_classes={getattr(model, "num_classes", "?")})')


def load_weights(model: nn.Module, checkpoint: Union[str, Path], use_ema: bool = False) -> nn.Module:
    """Load ``read_state_dict(checkpoint, use_ema)`` into ``model``; the keys must match exactly. Errors name
    the file and the model's settings."""
    state_dict = read_state_dict(checkpoint, use_ema)
    mismatch = state_dict_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise ValueError(f'checkpoint {checkpoint} does not fit {model_settings(model)}'
                         f'{_checkpoint_shapes_hint(model, state_dict)}: {mismatch}')
    model.load_state_dict(state_dict, strict=True)
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
