"""Export a VT-ResNet (or any timm model) to ONNX or TorchScript and check the file against PyTorch.

Paper: `Visual Transformers: Token-based Image Representation and Processing for Computer Vision`
    - https://arxiv.org/abs/2006.03677 (Wu et al., ICCV 2021)

    vt-export --model vt_resnet18 --output vt_resnet18.onnx --dynamic-size
    vt-export --model vt_resnet50 --checkpoint model_best.pth.tar --format torchscript -o vt_resnet50.pt

ONNX goes through timm's ``onnx_export`` with torch's torch.export-based ("dynamo") exporter, the
default of torch >= 2.9 (the TorchScript-based one is deprecated); the batch axis is dynamic, and
``--dynamic-size`` makes height and width dynamic too. TorchScript is ``torch.jit.script``. Weights
load with timm's ``load_checkpoint``: safetensors, or ``torch.load(weights_only=True)``.

The command writes the file under a temporary name in the output directory and runs it
(onnxruntime / ``torch.jit.load``) on a real photograph (matplotlib's bundled ``grace_hopper.jpg``,
or ``--image``) at ``--img-size`` and, when the export takes any size, at a second, non-square size.
It prints the max abs difference to the eager model's outputs next to PyTorch's own float32 rounding
error on that input (its difference to a float64 copy of the model). Only if every difference is at
most ``ERROR_FACTOR`` times that error (other kernels round differently; a broken export misses by
the size of the outputs) is the file renamed to ``--output``: an existing file is never replaced by
a half-written or failing one. ONNX needs ``pip install onnx onnxruntime onnxscript``.
"""
import copy
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.utils.onnx import onnx_export, onnx_forward

from .files import replacing

FORMATS = ('onnx', 'torchscript')
# torch's exporter writes opset 18 and later; it would convert down, but fails to on VT-ResNets and
# then silently keeps 18
MIN_OPSET = 18
# how many times PyTorch's own float32 error (vs float64) an export may differ from PyTorch by
ERROR_FACTOR = 10.
PathLike = Union[str, os.PathLike]


def check_output_path(path: PathLike) -> Path:
    """``path`` as a Path if a file can be written there: its directory exists and it is no directory."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f'{path} is a directory; expected a file path')
    if not path.parent.absolute().is_dir():
        raise ValueError(f'directory {path.parent} does not exist')
    return path


def check_opset(opset: Optional[int]) -> None:
    """``opset`` is None (the exporter's default) or one the exporter writes."""
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f'opset {opset} is not supported; expected {MIN_OPSET} or later (or the default)')


def export_onnx(
        model: nn.Module,
        path: PathLike,
        input_size: Tuple[int, int, int],
        dynamic_size: bool = False,
        opset: Optional[int] = None,
) -> Path:
    """Export ``model`` (put in eval mode) to ONNX with a dynamic batch axis and, if ``dynamic_size``,
    dynamic height and width; ``input_size`` is (C, H, W) of the traced input; ``opset`` None takes
    the exporter's default. The file passes ``onnx.checker`` before it replaces ``path``."""
    check_opset(opset)
    with replacing(check_output_path(path)) as tmp:
        onnx_export(
            model, str(tmp), batch_size=2, input_size=tuple(input_size), opset=opset, dynamic_size=dynamic_size,
            use_dynamo=True,
            external_data=False,  # one self-contained file (all VT-ResNets are far below protobuf's 2 GB)
        )
    return Path(path)


def export_torchscript(model: nn.Module, path: PathLike) -> Path:
    """Script ``model`` (put in eval mode) with ``torch.jit.script`` and save it to ``path``."""
    scripted = torch.jit.script(model.eval())
    with replacing(check_output_path(path)) as tmp:
        scripted.save(str(tmp))
    return Path(path)


def image_batch(model: nn.Module, image: Image.Image, size: Tuple[int, int]) -> torch.Tensor:
    """``image`` resized and centre-cropped to ``size`` (H, W) and normalised as ``model`` expects
    (timm's eval transform of its pretrained cfg), as a batch of one with ``model.in_chans``
    channels (the grey mean repeated if that is not 3)."""
    config = resolve_data_config(model=model)
    x = create_transform(**dict(config, input_size=(3, *size)))(image)[None]
    return x if model.in_chans == 3 else x.mean(dim=1, keepdim=True).expand(-1, model.in_chans, -1, -1)


def second_size(img_size: int) -> Tuple[int, int]:
    """The non-square size a size-agnostic export is also checked at: taller and narrower than
    ``img_size`` (256x168 for 224), with a stride-16 map that is not a whole number of pixels wide."""
    return img_size + 32, img_size * 3 // 4


@torch.no_grad()
def float32_error(model: nn.Module, inputs: Sequence[torch.Tensor]) -> List[float]:
    """Max abs difference between ``model``'s eval outputs and those of a float64 copy of it, per input."""
    model.eval()
    model64 = copy.deepcopy(model).double()
    return [(model(x).double() - model64(x.double())).abs().max().item() for x in inputs]


@torch.no_grad()
def check_export(model: nn.Module, path: PathLike, fmt: str, inputs: Sequence[torch.Tensor]) -> List[float]:
    """Max abs difference between the outputs of the exported ``path`` (run by onnxruntime for
    ``fmt`` 'onnx', ``torch.jit.load`` for 'torchscript') and ``model``'s eager eval outputs, per input."""
    if fmt not in FORMATS:
        raise ValueError(f'unknown format {fmt!r}; expected one of {FORMATS}')
    model.eval()
    scripted = torch.jit.load(str(path)) if fmt == 'torchscript' else None
    diffs = []
    for x in inputs:
        exported = scripted(x) if scripted is not None else torch.from_numpy(onnx_forward(str(path), x))
        diffs.append((exported - model(x)).abs().max().item())
    return diffs
