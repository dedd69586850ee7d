"""Training curves: loss and accuracy per epoch from a run's ``summary.csv``, as a PNG.

    vt-plot output/<run>/summary.csv [--out curves.png]
"""
import csv
from pathlib import Path
from typing import Dict, List, Optional, Union

from .files import replacing


def read_summary(path: Union[str, Path]) -> Dict[str, List[float]]:
    """Columns of a timm ``summary.csv`` (epoch, train_*, eval_*, lr) as float lists."""
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f'{path}: no epochs recorded yet')
    return {key: [float(row[key]) for row in rows] for key in rows[0]}


def plot_summary(summary_csv: Union[str, Path], out_png: Optional[Union[str, Path]] = None) -> Path:
    """Write loss (left) and top-1/top-5 accuracy (right) against epoch; returns the PNG's path.

    The PNG is written to a temporary name and renamed, so a reader never sees a partial file.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    columns = read_summary(summary_csv)
    out_png = Path(out_png) if out_png else Path(summary_csv).with_name('curves.png')
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key in (k for k in columns if k.endswith('loss')):
        ax_loss.plot(columns['epoch'], columns[key], marker='o', label=key)
    for key in (k for k in columns if k.endswith(('top1', 'top5'))):
        ax_acc.plot(columns['epoch'], columns[key], marker='o', label=key)
    ax_loss.set(xlabel='epoch', ylabel='loss', title='loss')
    ax_acc.set(xlabel='epoch', ylabel='accuracy (%)', title='validation accuracy')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=.3)
        ax.legend()
    fig.tight_layout()
    with replacing(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out_png
