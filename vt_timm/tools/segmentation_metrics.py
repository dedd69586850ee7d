"""Segmentation metrics: a pixel confusion matrix, its pixel accuracy, mIoU and per-class IoU."""
from typing import Dict

import torch


class ConfusionMatrix:
    """Pixel counts (label, prediction) over the non-ignored pixels."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of one prediction (class indices) against its ``target`` of the same shape."""
        valid = target != self.ignore_index
        index = target[valid] * self.num_classes + pred[valid]
        self.counts += torch.bincount(index.cpu(), minlength=self.num_classes ** 2).view_as(self.counts)

    def compute(self) -> Dict:
        """pixel_acc, miou (over classes present in labels or predictions) and per-class IoU (None if absent)."""
        hits = self.counts.diag().double()
        union = self.counts.sum(0) + self.counts.sum(1) - self.counts.diag()
        iou = hits / union.clamp(min=1)
        present = union > 0
        return dict(
            pixel_acc=(hits.sum() / self.counts.sum().clamp(min=1)).item(),
            miou=iou[present].mean().item() if present.any() else 0.,
            iou=[v if p else None for v, p in zip(iou.tolist(), present.tolist())],
        )
