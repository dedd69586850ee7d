"""The evaluation loop of train.py and validate.py: a model over a loader into one of timm's evaluators."""
from contextlib import nullcontext
from typing import Callable, ContextManager, Dict, Iterable, Optional, Tuple

import torch
from timm.task import ClassificationEvaluator


@torch.no_grad()
def evaluate(
        model: torch.nn.Module,
        loader: Iterable[Tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
        evaluator: Optional[ClassificationEvaluator] = None,
        autocast: Callable[[], ContextManager] = nullcontext,
        channels_last: bool = False,
        distributed: bool = False,
        dtype: Optional[torch.dtype] = None,
) -> Dict[str, float]:
    """Loss, top-1 and top-5 (percent) of ``model`` in eval mode over ``loader``.

    ``evaluator``: a fresh timm evaluator, e.g. ``task.create_evaluator()``; default timm's
    ``ClassificationEvaluator`` on ``device``. ``distributed``: the metrics of all processes' samples together.
    ``dtype``: the input's dtype (timm's ``--model-dtype``); default as the loader gives it.
    """
    evaluator = evaluator if evaluator is not None else ClassificationEvaluator(device=device)
    model.eval()
    for input, target in loader:
        input, target = input.to(device=device, dtype=dtype), target.to(device)
        if channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with autocast():
            output = model(input)
        evaluator.update(output.float(), target)
    return dict(evaluator.compute(distributed=distributed))
