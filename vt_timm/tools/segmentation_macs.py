"""MACs of the segmentation necks against the paper's Tables 9-10 (FPN vs VT-FPN on ResNet backbones)."""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..models.vt_fpn import HEADS, create_segmentation_model
from .macs import count_macs


def segmentation_macs(backbone: str, head: str, img_size: Tuple[int, int], num_classes: int) -> Dict[str, float]:
    """MACs of the neck (the paper's "FPN FLOPs" column), the backbone, the semantic head and the whole model."""
    model = create_segmentation_model(backbone, head, num_classes, device='meta').eval()
    total, per_module = count_macs(model, img_size)
    parts = {part: per_module.get(f'SegmentationModel.{part}', 0.) for part in ('backbone', 'neck', 'head')}
    return dict(parts, total=total)


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's segmentation tables: its setting and its GMACs."""
    img_size: Tuple[int, int]
    num_classes: int  # COCO-stuff: Panoptic FPN's 53 stuff classes + 1 "things"; LIP: 19 parts + background
    backbones: Tuple[str, ...]  # those the table reports
    fpn: float  # neck ("FPN FLOPs" column)
    vt_fpn: float
    totals: Dict[str, Tuple[float, float]]  # whole model, FPN and VT-FPN, where reported


PAPER_TABLES = {
    'Table 9, COCO-stuff': PaperTable(
        (800, 1216), 54, ('resnet50', 'resnet101'), 55.1, 8.5, {'resnet50': (159., 113.)}),
    'Table 10, LIP': PaperTable((473, 473), 20, ('resnet50',), 12.8, 2.0, {}),
}


def macs_table(backbones: Sequence[str] = ('resnet50', 'resnet101')) -> List[List[str]]:
    """Rows of neck and whole-model GMACs, FPN vs VT-FPN, next to the paper's Tables 9-10."""
    rows = [['table', 'backbone', 'input', 'FPN', 'VT-FPN', 'ratio', 'paper FPN', 'paper VT-FPN', 'paper ratio',
             'dev FPN', 'dev VT-FPN', 'total FPN', 'total VT-FPN', 'paper totals']]
    for name, table in PAPER_TABLES.items():
        for backbone in backbones:
            macs = {head: segmentation_macs(backbone, head, table.img_size, table.num_classes) for head in HEADS}
            fpn, vt = (macs[head]['neck'] / 1e9 for head in HEADS)
            fpn_total, vt_total = (macs[head]['total'] / 1e9 for head in HEADS)
            reported = backbone in table.backbones
            totals = table.totals.get(backbone)
            rows.append([
                name, backbone, f'{table.img_size[0]}x{table.img_size[1]}',
                f'{fpn:.2f}', f'{vt:.2f}', f'{fpn / vt:.2f}x',
                *([f'{table.fpn:g}', f'{table.vt_fpn:g}', f'{table.fpn / table.vt_fpn:.2f}x',
                   f'{100 * (fpn / table.fpn - 1):+.1f}%', f'{100 * (vt / table.vt_fpn - 1):+.1f}%']
                  if reported else ['-'] * 5),
                f'{fpn_total:.1f}', f'{vt_total:.1f}', f'{totals[0]:g} -> {totals[1]:g}' if totals else '-',
            ])
    return rows


