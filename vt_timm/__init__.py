"""vt_timm: Visual Transformers (Wu et al., arXiv:2006.03677) as timm models.

Importing the package registers ``vt_resnet18/34/50/101`` in timm's model registry.
"""
from .layers import FilterTokenizer, Projector, RecurrentTokenizer, TokenTransformer, VTBlock, VTStage
from .models import VTResNet

__version__ = '0.1.0'

__all__ = [
    'FilterTokenizer', 'Projector', 'RecurrentTokenizer', 'TokenTransformer', 'VTBlock', 'VTStage', 'VTResNet',
    '__version__',
]
