"""Short, controlled training runs on real data: does a model train as well as the one it replaces?

The protocol behind ``benchmarks/training_parity.py``, ``benchmarks/training_diagnosis.py``,
``benchmarks/mini_table2.py`` and the training tests: a fixed subset of real Fashion-MNIST (Debian's
``dataset-fashion-mnist``) held in memory at 112 px (the stride-16 map is 7x7), the same images, batch
order and initialisation seed for every model, and the three optimiser families of the paper's recipes
built with timm's own ``create_optimizer_v2`` / ``create_scheduler_v2`` (so parameter groups, weight
decay exemptions and warm-up are what ``train.py`` gives). Per run: the training loss curve, the mean
loss and top-1 of the last updates (train mode), held-out top-1 (eval mode) and, for VT models, how
distinct the tokens of every module are (``token_diversity``).
"""
import gzip
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import VTBlock
from .data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, fashion_mnist_files
from .files import replacing

__all__ = [
    'RECIPES', 'Recipe', 'RunResult', 'TrainCallbacks', 'load_fashion_mnist', 'train_run', 'cached_train_run',
    'token_diversity', 'diversity_stats', 'evaluate',
]


@dataclass(frozen=True)
class Recipe:
    """One optimiser family: timm optimizer name and keywords, peak lr at ``batch_size``, warm-up share."""
    opt: str
    lr: float
    weight_decay: float
    opt_kwargs: Dict[str, Any] = field(default_factory=dict)
    warmup_frac: float = 0.1
    note: str = ''


# lr at the protocol's batch of 50; every schedule is timm's cosine with linear warm-up, stepped per update
RECIPES: Dict[str, Recipe] = {
    'sgd': Recipe('sgd', 0.05, 4e-5, dict(momentum=0.9), warmup_frac=0.1,
                  note="paper default (Table 2): Nesterov SGD, momentum 0.9, wd 4e-5"),
    'adamw': Recipe('adamw', 2e-3, 0.05, warmup_frac=0.15,
                    note='AdamW, wd 0.05 (what a timm user reaches for first)'),
    'rmsproptf': Recipe('rmsproptf', 4e-3, 1e-5, dict(momentum=0.9, eps=1e-3), warmup_frac=0.15,
                        note='paper advanced (Table 8): TF RMSProp, eps 1e-3, momentum 0.9, wd 1e-5, '
                             'lr 0.16 per 2048 images (0.0039 at 50) after a warm-up'),
}


def _read_idx(path: Path, offset: int) -> torch.Tensor:
    with gzip.open(path, 'rb') as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)[offset:]


def load_fashion_mnist(
        num_train: int = 2500,
        num_test: int = 1000,
        img_size: int = 112,
        seed: int = 0,
        source: Optional[Union[str, Path]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed random subset of real Fashion-MNIST in memory: (train images, labels, test images, labels).

    Images are (N, 1, img_size, img_size) float32, bilinearly upsampled from 28 px and normalised with
    the training set's mean/std; ``seed`` picks the subsets (train from the train split, test from the
    held-out t10k split); ``source`` as in ``data.fashion_mnist_files``.
    """
    files = fashion_mnist_files(source)
    generator = torch.Generator().manual_seed(seed)
    splits = []
    for images_file, labels_file, count in ((files[0], files[1], num_train), (files[2], files[3], num_test)):
        images = _read_idx(images_file, 16).reshape(-1, 1, 28, 28)
        labels = _read_idx(labels_file, 8).long()
        if count > len(labels):
            raise ValueError(f'{images_file.name} has {len(labels)} images, fewer than the {count} asked for')
        picked = torch.randperm(len(labels), generator=generator)[:count]
        x = (images[picked].float() / 255. - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        splits += [F.interpolate(x, size=img_size, mode='bilinear', align_corners=False), labels[picked]]
    return tuple(splits)


@dataclass
class RunResult:
    """Outcome of one ``train_run``."""
    model: str
    recipe: str
    seed: int
    losses: List[float]  # per update, train mode
    train_loss: float  # mean of the last ``tail`` updates
    train_top1: float  # mean batch top-1 of the last ``tail`` updates (train mode), %
    test_top1: float  # held-out top-1 (eval mode), %
    seconds: float
    diversity: List[Dict[str, float]] = field(default_factory=list)


class TrainCallbacks:
    """Hooks into ``train_run`` (no-ops here; the diagnosis overrides them)."""

    def model_created(self, model: nn.Module) -> None:
        """Called once the model is built, before the first forward pass."""

    def before_forward(self, step: int, model: nn.Module) -> None:
        """Called before the forward pass of update ``step``."""

    def after_backward(self, step: int, model: nn.Module, loss: torch.Tensor) -> None:
        """Called after the backward pass, before the optimiser step (gradients are in ``.grad``)."""

    def after_update(self, step: int, model: nn.Module) -> None:
        """Called after the optimiser step."""


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250) -> float:
    """Top-1 (%) in eval mode."""
    was_training = model.training
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(labels), batch_size))
    model.train(was_training)
    return 100. * correct / len(labels)


def train_run(
        model_name: str,
        recipe: Union[str, Recipe],
        seed: int,
        data: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        epochs: int = 2,
        batch_size: int = 50,
        tail: int = 20,
        model_kwargs: Optional[Dict[str, Any]] = None,
        callbacks: Optional[TrainCallbacks] = None,
        diversity_images: int = 100,
) -> Tuple[RunResult, nn.Module]:
    """Train ``model_name`` from scratch with ``recipe`` on ``data`` (see ``load_fashion_mnist``).

    ``seed`` fixes the initialisation and the batch order; the same seed gives every model the same
    batches. ``callbacks`` see the model at each stage of every update (the diagnosis reads gradients,
    updates and attention there). Returns the result and the trained model (eval mode).
    """
    import timm
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    recipe_name = recipe if isinstance(recipe, str) else recipe.opt
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f'recipe must be one of {sorted(RECIPES)}, got {recipe!r}')
        recipe = RECIPES[recipe]
    train_x, train_y, test_x, test_y = data
    updates_per_epoch = len(train_y) // batch_size
    if updates_per_epoch < 1 or updates_per_epoch * epochs <= tail:
        raise ValueError(f'{len(train_y)} images x {epochs} epochs at batch {batch_size} give fewer than {tail + 1} updates')
    torch.manual_seed(seed)
    model = timm.create_model(model_name, num_classes=int(train_y.max()) + 1, in_chans=train_x.shape[1],
                              **(model_kwargs or {}))
    callbacks = callbacks or TrainCallbacks()
    callbacks.model_created(model)
    optimizer = create_optimizer_v2(model, recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                    **recipe.opt_kwargs)
    total = updates_per_epoch * epochs
    warmup = max(1, round(recipe.warmup_frac * total))
    scheduler, _ = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=epochs, warmup_epochs=warmup / updates_per_epoch, warmup_lr=recipe.lr / 100,
        min_lr=0., step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    order = torch.Generator().manual_seed(seed)
    losses, hits = [], []
    start = time.time()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(train_y), generator=order)
        for i in range(updates_per_epoch):
            step = epoch * updates_per_epoch + i
            idx = perm[i * batch_size:(i + 1) * batch_size]
            callbacks.before_forward(step, model)
            logits = model(train_x[idx])
            loss = F.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            callbacks.after_backward(step, model, loss.detach())
            optimizer.step()
            callbacks.after_update(step, model)
            scheduler.step_update(num_updates=step + 1)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f'{model_name} ({recipe_name}, seed {seed}): loss {loss.item()} at update {step}')
            losses.append(loss.item())
            hits.append((logits.argmax(1) == train_y[idx]).float().mean().item())
    seconds = time.time() - start
    model.eval()
    result = RunResult(
        model_name, recipe_name, seed, losses, sum(losses[-tail:]) / tail, 100. * sum(hits[-tail:]) / tail,
        evaluate(model, test_x, test_y), seconds)
    if any(isinstance(m, VTBlock) for m in model.modules()):
        result.diversity = token_diversity(model, test_x[:diversity_images])
    return result, model


def cached_train_run(
        model_name: str,
        recipe: str,
        seed: int,
        data: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        runs_dir: Union[str, Path],
        epochs: int = 2,
        batch_size: int = 50,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> RunResult:
    """``train_run``, its result kept as JSON under ``runs_dir`` and reused by any later call with the same
    model, keywords, recipe, seed, data sizes, epochs and batch (the benchmarks share finished runs)."""
    kwargs = ''.join(f'[{k}={v}]' for k, v in sorted((model_kwargs or {}).items()))
    train_x, _, test_x, _ = data
    key = (f'{model_name}{kwargs}-{recipe}-s{seed}-{len(train_x)}x{epochs}-b{batch_size}-'
           f'{len(test_x)}test-{train_x.shape[-1]}px')
    path = Path(runs_dir) / f'{key}.json'
    if path.is_file():
        return RunResult(**json.loads(path.read_text()))
    result, _ = train_run(model_name, recipe, seed, data, epochs=epochs, batch_size=batch_size, model_kwargs=model_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(asdict(result)))
    print(f'{key}: train loss {result.train_loss:.3f}  train top-1 {result.train_top1:.1f}  '
          f'held-out top-1 {result.test_top1:.1f}  ({result.seconds:.0f}s)', flush=True)
    return result


def _mean_pairwise_cosine(maps: torch.Tensor) -> torch.Tensor:
    """(N, L, P) -> (N,) mean cosine similarity over the L (L - 1) ordered pairs of distinct rows."""
    unit = F.normalize(maps.double(), dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    num = maps.shape[1]
    return (similarity.sum((1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(-1)) / (num * (num - 1))


def diversity_stats(logits: torch.Tensor, tokens: torch.Tensor) -> Dict[str, float]:
    """How distinct the L tokens of one VT module are, from its tokenizer's (N, L, HW) spatial logits
    and the (N, L, C_T) tokens it gathered (see ``token_diversity``)."""
    from .visualize import attention_entropy

    attention = logits.float().softmax(dim=-1)
    singular = torch.linalg.svdvals(tokens.double())
    p = singular / singular.sum(-1, keepdim=True)
    erank = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    entropy = torch.stack([attention_entropy(a) for a in attention]) / math.log(attention.shape[-1])
    return dict(cosine=_mean_pairwise_cosine(attention).mean().item(), entropy=entropy.mean().item(),
                erank=erank.mean().item())


@torch.no_grad()
def token_diversity(model: nn.Module, images: torch.Tensor) -> List[Dict[str, float]]:
    """How distinct the visual tokens of every VT module are, on ``images`` (eval mode), one dict each:

    - ``cosine``: mean pairwise cosine similarity of the L spatial attention maps of an image (1 when
      all tokens read the same pixels), mean over images;
    - ``entropy``: mean attention entropy -sum A log A divided by the uniform ln(HW);
    - ``erank``: effective rank (exp of the entropy of the normalised singular values) of the L x C_T
      tokens the tokenizer gathers, mean over images (1: all tokens parallel; L: all independent).
    """
    from .visualize import capture_vt_modules, forward_eval

    with capture_vt_modules(model) as captures:
        forward_eval(model, images)
    return [diversity_stats(capture.logits, capture.tokens) for capture in captures]
