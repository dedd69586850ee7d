"""Weight initialisation: the VT maps (``init_vt_weights``) and the convolutions of the ResNet trunk and the
FPN baseline (``init_conv_weights``)."""
import torch.nn as nn
from timm.layers import lecun_normal_

from .norms import SpatialLogitNorm
from .relations import TokenGraphConv

__all__ = ['init_vt_weights', 'init_conv_weights']


def init_conv_weights(module: nn.Module) -> None:
    """He init (fan-out, ReLU) for every conv in ``module``, zero biases: timm's ResNet and detectron2's heads."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_vt_weights(module: nn.Module) -> None:
    """Initialise every VT map in ``module``: LeCun normal (variance 1 / fan-in) for the linear maps and
    1x1 convs, the identity for the graph convolutions' adjacency A_g, and the tokenizers' temperatures
    at ``sqrt(2 ln L)`` (``SpatialLogitNorm``).

    Every map of a VT module is followed by a BatchNorm, directly or through the logits it feeds, so its
    scale sets no softmax's sharpness; fan-in scale keeps each BN's inputs near the unit variance its
    running statistics start at, so that a model in eval mode is right from the first updates.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            lecun_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, TokenGraphConv):
            nn.init.eye_(m.adjacency)
        elif isinstance(m, SpatialLogitNorm):
            m.reset_temperature()
