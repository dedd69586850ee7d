"""The models: VT-ResNet (registered in timm) and the VT-FPN segmentation neck with its FPN baseline."""
from .vt_fpn import FPN, VTFPN, SegmentationModel, create_segmentation_model
from .vt_resnet import VTResNet

__all__ = ['VTResNet', 'FPN', 'VTFPN', 'SegmentationModel', 'create_segmentation_model']
