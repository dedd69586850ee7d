"""Shared fixtures: real photographs (scikit-image's bundled images) as model inputs.

No test reaches the network or the user's caches: the Hugging Face Hub client runs offline against a
throwaway cache (set before anything imports huggingface_hub, which reads these once).

The suite runs under pytest-xdist (``-n auto --dist loadfile`` in pyproject.toml: one worker per core, a
test file's tests on one worker). Each worker gets an equal share of the cores as intra-op threads,
inherited by the scripts it launches: without it every worker's PyTorch would start one thread per
core and spin-wait against the others.
"""
import os
import tempfile
from typing import Callable, Tuple

os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['HF_HOME'] = tempfile.mkdtemp(prefix='vt_timm-tests-hf-')

import pytest
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import vt_timm  # noqa: F401  registers the models

if 'PYTEST_XDIST_WORKER_COUNT' in os.environ:
    worker_threads = max(1, (os.cpu_count() or 1) // int(os.environ['PYTEST_XDIST_WORKER_COUNT']))
    torch.set_num_threads(worker_threads)
    os.environ['OMP_NUM_THREADS'] = str(worker_threads)  # for the scripts a test launches

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket')


def load_photos(size: Tuple[int, int], num: int = 2, in_chans: int = 3) -> torch.Tensor:
    """The first ``num`` bundled scikit-image photos, resized to ``size`` and ImageNet-normalised."""
    import skimage.data

    images = []
    for name in (PHOTOS * num)[:num]:
        image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255.
        images.append(F.interpolate(image[None], size=size, mode='bilinear', antialias=True, align_corners=False)[0])
    batch = torch.stack(images)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    batch = (batch - mean) / std
    return batch.mean(dim=1, keepdim=True) if in_chans == 1 else batch


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for a module of small-input tests, restored afterwards: at 64-224 px and small
    batches threads gain little, and on a shared 2-core machine spin-waiting OpenMP workers made such
    files 7-50x slower (measured). A file opts in with ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='session')
def photos() -> Callable[..., torch.Tensor]:
    """``photos(size, num=2, in_chans=3)`` -> a normalised batch of real photographs."""
    return load_photos


TIMM_SCRIPTS = ('train.py', 'validate.py', 'benchmark.py', 'inference.py')
TIMM_REPO_ENV = 'VT_TIMM_TIMM_REPO'
DEFAULT_TIMM_REPO = '/work/.mirror/huggingface+pytorch-image-models/repo'


@pytest.fixture(scope='session')
def timm_scripts(tmp_path_factory):
    """timm's own ``train.py``, ``validate.py``, ``benchmark.py`` and ``inference.py`` (they are not in timm's
    wheel), at the commit that ``tests/data/timm_script_flags.json`` was read from, copied out of a git clone
    of huggingface/pytorch-image-models named by ``VT_TIMM_TIMM_REPO`` (a work tree or bare git dir) into a
    folder of their own, so the installed timm is imported. Tests that need them skip without a clone."""
    import json
    import subprocess
    from pathlib import Path

    repo = os.environ.get(TIMM_REPO_ENV, DEFAULT_TIMM_REPO)
    commit = json.loads((Path(__file__).parent / 'data' / 'timm_script_flags.json').read_text())['commit']
    if not os.path.isdir(repo):
        pytest.skip(f'no clone of pytorch-image-models at {repo} (set {TIMM_REPO_ENV})')
    folder = tmp_path_factory.mktemp('timm_scripts')
    for name in TIMM_SCRIPTS:
        text = subprocess.run(['git', '-C', repo, 'show', f'{commit}:{name}'], check=True, capture_output=True,
                              text=True).stdout
        (folder / name).write_text(text)
    return folder
