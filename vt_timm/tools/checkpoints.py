"""Models built with a checkpoint's weights, loaded safely (safetensors or ``weights_only=True``)."""
from typing import Any, Dict, Optional

import timm
import torch.nn as nn
from timm.models import load_checkpoint


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
