"""Quickstart: train a VT-ResNet on real Fashion-MNIST images on a CPU and evaluate it.

    python -m vt_timm.quickstart [--model vt_resnet18] [--steps 300] [--img-size 64]

A few hundred SGD steps on a class-balanced subset of the 60k training images, then top-1 on
held-out test images. Everything comes from timm (model, optimizer, scheduler, loss).
"""
import argparse
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import vt_timm  # noqa: F401  registers the models
from vt_timm.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist


@dataclass
class QuickstartResult:
    model: str
    steps: int
    first_loss: float  # mean training loss over the first 10% of steps
    last_loss: float  # mean training loss over the last 10% of steps
    test_top1: float  # percent
    train_img_per_sec: float


def balanced_subset(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``per_class`` random samples of every class, shuffled."""
    picks = [
        torch.nonzero(labels == c).flatten()[torch.randperm(int((labels == c).sum()), generator=generator)[:per_class]]
        for c in labels.unique()
    ]
    subset = torch.cat(picks)
    return subset[torch.randperm(len(subset), generator=generator)]


def to_model_input(images: torch.Tensor, img_size: int) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised float (N, 1, img_size, img_size)."""
    x = images[:, None].float().div_(255)
    x = F.interpolate(x, size=(img_size, img_size), mode='bilinear', align_corners=False)
    return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, img_size: int,
             batch_size: int = 200) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(to_model_input(images[start:start + batch_size], img_size))
        correct += int((logits.argmax(dim=1) == labels[start:start + batch_size]).sum())
    return 100. * correct / len(images)


def train_fashion_mnist(
        model_name: str = 'vt_resnet18',
        data_root: str = 'data',
        img_size: int = 64,
        steps: int = 300,
        batch_size: int = 64,
        lr: Optional[float] = None,
        train_per_class: int = 1000,
        test_per_class: int = 100,
        seed: int = 0,
        log_every: int = 0,
        **model_kwargs,
) -> Tuple[torch.nn.Module, QuickstartResult]:
    """Train ``model_name`` from scratch on a Fashion-MNIST subset; return it and its scores.

    ``lr`` defaults to the paper's default recipe, 0.1 per 256 images, scaled linearly to the batch.
    """
    lr = lr if lr is not None else 0.1 * batch_size / 256
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = load_fashion_mnist(data_root, train=True)
    test_x, test_y = load_fashion_mnist(data_root, train=False)
    train_idx = balanced_subset(train_y, train_per_class, generator)
    test_idx = balanced_subset(test_y, test_per_class, generator)
    train_x, train_y, test_x, test_y = train_x[train_idx], train_y[train_idx], test_x[test_idx], test_y[test_idx]

    model = timm.create_model(model_name, num_classes=10, in_chans=1, **model_kwargs)
    optimizer = create_optimizer_v2(model, 'sgd', lr=lr, momentum=0.9, weight_decay=4e-5)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=steps, warmup_t=steps // 10, warmup_lr_init=lr / 10, t_in_epochs=False)
    criterion = LabelSmoothingCrossEntropy(smoothing=0.1)

    losses = []
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(len(train_x), (batch_size,), generator=generator)
        loss = criterion(model(to_model_input(train_x[batch], img_size)), train_y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f'step {step + 1}/{steps}  loss {sum(losses[-log_every:]) / log_every:.3f}  '
                  f'lr {optimizer.param_groups[0]["lr"]:.4f}', flush=True)
    elapsed = time.perf_counter() - start

    window = max(steps // 10, 1)
    result = QuickstartResult(
        model=model_name,
        steps=steps,
        first_loss=sum(losses[:window]) / window,
        last_loss=sum(losses[-window:]) / window,
        test_top1=evaluate(model, test_x, test_y, img_size),
        train_img_per_sec=steps * batch_size / elapsed,
    )
    return model, result


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--model', default='vt_resnet18', help='any timm model name')
    parser.add_argument('--data-dir', default='data', help='where Fashion-MNIST is unpacked')
    parser.add_argument('--img-size', type=int, default=64, help='images are resized to this square size')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('-b', '--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=None, help='default: 0.1 x batch size / 256 (the paper\'s)')
    parser.add_argument('--train-per-class', type=int, default=1000)
    parser.add_argument('--test-per-class', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    print(f'training {args.model} on {10 * args.train_per_class} Fashion-MNIST images at {args.img_size} px '
          f'for {args.steps} steps of {args.batch_size}', flush=True)
    _, result = train_fashion_mnist(
        args.model, args.data_dir, args.img_size, args.steps, args.batch_size, args.lr,
        args.train_per_class, args.test_per_class, args.seed, log_every=max(args.steps // 10, 1))
    print(f'test top-1 on {10 * args.test_per_class} held-out images: {result.test_top1:.1f}% (chance 10%)')
    print(' '.join(f'{k}={v:.3f}' if isinstance(v, float) else f'{k}={v}' for k, v in asdict(result).items()))


if __name__ == '__main__':
    main()
