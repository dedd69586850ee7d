"""torch.hub entry points for the VT-ResNets (Wu et al., arXiv:2006.03677), built by timm.

    model = torch.hub.load('<checkout or owner/vt_timm>', 'vt_resnet18', source='local', pretrained=False)

Every entry takes timm's ``create_model`` keyword arguments (``num_classes``, ``in_chans``,
``drop_path_rate``, ``pretrained_cfg_overlay=dict(file=...)``, ...).
"""
import timm as _timm

import vt_timm as _vt_timm

dependencies = ['torch', 'timm', 'huggingface_hub', 'safetensors']


def _entry(name: str):
    def entry(pretrained: bool = False, **kwargs) -> _vt_timm.VTResNet:
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    model_fn = _timm.models.model_entrypoint(name)
    cfg = _timm.models.get_pretrained_cfg(name)
    weights = f'load the published weights of the default tag ({cfg.hf_hub_id})' if cfg.has_weights else (
        'no weights are published yet (raises); load your own with pretrained_cfg_overlay=dict(file=...)')
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f'{model_fn.__doc__}\n\n    pretrained: {weights}.\n    kwargs: passed to timm.create_model.'
    return entry


vt_resnet18 = _entry('vt_resnet18')
vt_resnet34 = _entry('vt_resnet34')
vt_resnet50 = _entry('vt_resnet50')
vt_resnet101 = _entry('vt_resnet101')
