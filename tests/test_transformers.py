"""A folder written by ``vt-hub export`` loads in Hugging Face transformers (5.x), offline, bit for bit.

transformers wraps timm models as ``TimmWrapperForImageClassification`` / ``TimmWrapperModel`` (built with
``timm.create_model(config.architecture, num_classes=..., **config.model_args)``, so ``import vt_timm``
must come first) and ``TimmWrapperImageProcessor`` (timm's eval transform from ``config.json``); its
``TimmBackbone`` builds a timm model by name. The models here are VT-ResNet-18s after a few real SGD steps
on photographs (weights and BatchNorm statistics off their init), exported through the project's
``vt-hub export`` with class names.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

transformers = pytest.importorskip('transformers')
from transformers import (  # noqa: E402
    AutoImageProcessor, AutoModel, AutoModelForImageClassification, TimmBackbone, TimmBackboneConfig, pipeline,
)
from transformers.models.timm_wrapper import TimmWrapperForImageClassification, TimmWrapperModel  # noqa: E402

from vt_timm.cli import hub  # noqa: E402
from vt_timm.tools import hub as hub_tools  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')

LABELS = ['astronaut', 'cat', 'coffee', 'rocket', 'something else']
GREY_LABELS = ['dark', 'light', 'textured']
REPO = 'vt-timm-test/vt_resnet18.photos'
SIZE = 64
# the stem and layer1-3 maps of a VT-ResNet-18 at 64 px (layer4 is the VT stage: tokens, not a map)
MAP_SHAPES = [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]
PHOTO_NAMES = ('astronaut', 'chelsea', 'coffee', 'rocket')


def _pil_photos(mode: str = 'RGB'):
    import skimage.data

    return [Image.fromarray(getattr(skimage.data, name)()).convert(mode) for name in PHOTO_NAMES]


def _trained(in_chans: int, num_classes: int, photos) -> torch.nn.Module:
    """vt_resnet18 after 3 SGD steps on 4 photos (seeded)."""
    torch.manual_seed(0)
    model = timm.create_model('vt_resnet18', num_classes=num_classes, in_chans=in_chans)
    x, y = photos((SIZE, SIZE), num=4, in_chans=in_chans), torch.arange(4) % num_classes
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model.train()(x), y).backward()
        optimizer.step()
    return model.eval()


def _export(root: Path, model: torch.nn.Module, labels, **data) -> Path:
    """``vt-hub export`` of ``model``'s state dict, with a run args.yaml and a --label-names file."""
    safetensors.torch.save_file(model.state_dict(), root / 'weights.safetensors')
    run_args = {'model': 'vt_resnet18', 'num_classes': model.num_classes,
                'input_size': [model.in_chans, SIZE, SIZE], 'crop_pct': 1.0, **data}
    (root / 'args.yaml').write_text(yaml.safe_dump(run_args))
    (root / 'labels.txt').write_text('\n'.join(labels) + '\n')
    hub.main(['export', str(root / 'weights.safetensors'), '--out', str(root / 'export'), '--tag', 'photos',
              '--repo-id', REPO, '--label-names', str(root / 'labels.txt')])
    return root / 'export'


@pytest.fixture(scope='module')
def rgb(tmp_path_factory, photos):
    """(exported folder, the model) for a 3-channel, 5-class VT-ResNet-18."""
    model = _trained(3, len(LABELS), photos)
    return _export(tmp_path_factory.mktemp('rgb'), model, LABELS), model


@pytest.fixture(scope='module')
def grey(tmp_path_factory, photos):
    """(exported folder, the model) for a 1-channel, 3-class VT-ResNet-18 (Fashion-MNIST statistics)."""
    model = _trained(1, len(GREY_LABELS), photos)
    return _export(tmp_path_factory.mktemp('grey'), model, GREY_LABELS, mean=[0.286], std=[0.353]), model


@pytest.fixture(scope='module')
def hf_rgb(rgb):
    return AutoModelForImageClassification.from_pretrained(rgb[0]).eval()


def test_config_keeps_num_classes_out_of_model_args(rgb, photos):
    """What TimmWrapper passes itself (num_classes) is only at the config's root; timm still rebuilds the model."""
    out, model = rgb
    config = json.loads((out / 'config.json').read_text())
    assert config['model_args'] == {'in_chans': 3, 'global_pool': 'avg'}
    assert (config['architecture'], config['num_classes'], config['label_names']) == ('vt_resnet18', 5, LABELS)
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert (loaded.num_classes, loaded.in_chans, loaded.pretrained_cfg['label_names']) == (5, 3, LABELS)
    x = photos((SIZE, SIZE), num=4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_timm_save_for_hf_alone_fails_in_transformers_and_push_refuses_it(rgb, tmp_path):
    """The root cause: timm's save_for_hf records num_classes in model_args, TimmWrapper passes it too."""
    _, model = rgb
    timm.models.save_for_hf(model, str(tmp_path), safe_serialization=True)
    assert json.loads((tmp_path / 'config.json').read_text())['model_args']['num_classes'] == 5
    with pytest.raises(TypeError, match="got multiple values for keyword argument 'num_classes'"):
        AutoModelForImageClassification.from_pretrained(tmp_path)
    (tmp_path / 'README.md').write_text('card\n')
    with pytest.raises(SystemExit, match=r"model_args repeats \['num_classes'\].*re-export"):
        hub_tools.push(tmp_path, 'someone/x', dry_run=True)


def test_auto_model_for_image_classification_is_bit_identical(rgb, hf_rgb, photos):
    out, model = rgb
    assert isinstance(hf_rgb, TimmWrapperForImageClassification)
    assert hf_rgb.config.id2label == dict(enumerate(LABELS))
    assert hf_rgb.config.label2id == {name: i for i, name in enumerate(LABELS)}
    x = photos((SIZE, SIZE), num=4)
    with torch.no_grad():
        logits = hf_rgb(pixel_values=x).logits
        assert torch.equal(logits, model(x))
    assert logits.shape == (4, 5) and not torch.allclose(logits[0], logits[1])


def test_image_processor_and_pipeline_on_real_photos(rgb, hf_rgb):
    """The processor is timm's eval transform of the exported config; the pipeline's labels are the class names
    and its scores the model's softmax."""
    out, model = rgb
    processor = AutoImageProcessor.from_pretrained(out)
    images = _pil_photos()
    pixel_values = processor(images)['pixel_values']
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=loaded))
    assert pixel_values.shape == (4, 3, SIZE, SIZE)
    assert torch.equal(pixel_values, torch.stack([transform(image) for image in images]))
    with torch.no_grad():
        probs = model(pixel_values).softmax(-1)

    classifier = pipeline('image-classification', model=hf_rgb, image_processor=processor)
    predictions = classifier(images, top_k=5)
    assert len(predictions) == 4
    for prediction, expected in zip(predictions, probs):
        assert sorted(p['label'] for p in prediction) == sorted(LABELS)
        scores = [p['score'] for p in prediction]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-5)
        for p in prediction:
            assert p['score'] == pytest.approx(expected[LABELS.index(p['label'])].item(), abs=1e-6)
    assert classifier(images[0], top_k=1)[0]['label'] == LABELS[int(probs[0].argmax())]


def test_output_hidden_states_are_the_feature_maps(rgb, hf_rgb, photos):
    """TimmWrapper's hidden states come from VT-ResNet's forward_intermediates: the stem and layer1-3 maps;
    the last hidden state of the headless TimmWrapperModel is the VT stage's tokens."""
    out, model = rgb
    x = photos((SIZE, SIZE), num=2)
    with torch.no_grad():
        outputs = hf_rgb(pixel_values=x, output_hidden_states=True)
        tokens, maps = model.forward_intermediates(x)
        selected = hf_rgb(pixel_values=x, output_hidden_states=[1, 3]).hidden_states
        assert torch.equal(outputs.logits, model(x))
        assert [tuple(h.shape) for h in outputs.hidden_states] == [(2, *shape) for shape in MAP_SHAPES]
        assert [h.shape[1] for h in outputs.hidden_states] == [info['num_chs'] for info in model.feature_info]
        assert all(torch.equal(a, b) for a, b in zip(outputs.hidden_states, maps))
        assert len(selected) == 2 and torch.equal(selected[0], maps[1]) and torch.equal(selected[1], maps[3])

        base = AutoModel.from_pretrained(out).eval()
        assert isinstance(base, TimmWrapperModel) and base.timm_model.num_classes == 0
        features = base(pixel_values=x, output_hidden_states=True)
        assert features.last_hidden_state.shape == (2, 16, model.num_features)  # VT tokens (N, L, C)
        assert torch.equal(features.last_hidden_state, tokens)
        assert torch.equal(features.pooler_output, model.forward_head(tokens, pre_logits=True))
        assert all(torch.equal(a, b) for a, b in zip(features.hidden_states, maps))


def test_timm_backbone_builds_vt_resnet_feature_maps(photos):
    x = photos((SIZE, SIZE), num=2)
    backbone = TimmBackbone(TimmBackboneConfig(backbone='vt_resnet18', out_indices=(0, 1, 2, 3),
                                               use_pretrained_backbone=False)).eval()
    reference = timm.create_model('vt_resnet18', features_only=True, out_indices=(0, 1, 2, 3)).eval()
    backbone._backbone.load_state_dict(reference.state_dict())
    with torch.no_grad():
        maps = backbone(x).feature_maps
        assert [tuple(m.shape) for m in maps] == [(2, *shape) for shape in MAP_SHAPES]
        assert all(torch.equal(a, b) for a, b in zip(maps, reference(x)))
        last = TimmBackbone(TimmBackboneConfig(backbone='vt_resnet18', use_pretrained_backbone=False)).eval()
        assert [tuple(m.shape) for m in last(x).feature_maps] == [(2, *MAP_SHAPES[-1])]  # default out_indices (-1,)
        grey = TimmBackbone(TimmBackboneConfig(backbone='vt_resnet18', num_channels=1, out_indices=(3,),
                                               use_pretrained_backbone=False)).eval()
        assert [tuple(m.shape) for m in grey(x[:, :1]).feature_maps] == [(2, *MAP_SHAPES[-1])]


def test_grey_model_with_the_image_processor(grey):
    """A 1-channel export: the processor keeps an 'L' image's one channel, and the logits are timm's."""
    out, model = grey
    hf = AutoModelForImageClassification.from_pretrained(out).eval()
    assert hf.config.id2label == dict(enumerate(GREY_LABELS)) and hf.timm_model.in_chans == 1
    images = _pil_photos('L')
    pixel_values = AutoImageProcessor.from_pretrained(out)(images)['pixel_values']
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=loaded))
    assert pixel_values.shape == (4, 1, SIZE, SIZE)
    assert torch.equal(pixel_values, torch.stack([transform(image) for image in images]))
    with torch.no_grad():
        assert torch.equal(hf(pixel_values=pixel_values).logits, model(pixel_values))


CARD_CHECK = r"""
import json, sys
from transformers import AutoModelForImageClassification
folders, snippets = json.loads(sys.argv[1]), json.loads(sys.argv[2])
try:  # without vt_timm, timm does not know the architecture transformers asks it for
    AutoModelForImageClassification.from_pretrained(folders[0])
    raise SystemExit('loaded without import vt_timm')
except ImportError as e:
    assert "'vt_resnet18' is not supported in your version of timm" in str(e), e
    print('without vt_timm: ImportError')
for snippet in snippets:
    exec(snippet, {})
"""


def test_model_card_snippets_start_with_import_vt_timm_and_run(rgb, grey, tmp_path):
    """Every usage snippet of the cards starts with `import vt_timm`; run as written (the repo id pointed at the
    folder), in a fresh process where a load before `import vt_timm` fails, they load and classify a photo."""
    snippets = []
    for out in (rgb[0], grey[0]):
        card = (out / 'README.md').read_text()
        blocks = re.findall(r'```python\n(.*?)```', card, flags=re.S)
        assert len(blocks) == 2 and all(block.startswith('import vt_timm  #') for block in blocks), blocks
        assert "timm.create_model('hf-hub:" in blocks[0] and 'from transformers import' in blocks[1]
        snippets += [blocks[0].replace(f'hf-hub:{REPO}', f'local-dir:{out}'), blocks[1].replace(REPO, str(out))]
    assert "pipeline('image-classification'" in snippets[1] and ".convert('L')" in snippets[3]
    _pil_photos()[1].save(tmp_path / 'photo.jpg')
    result = subprocess.run([sys.executable, '-c', CARD_CHECK, json.dumps([str(rgb[0])]), json.dumps(snippets)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == 'without vt_timm: ImportError'
    pipeline_out = [line for line in lines if line.startswith('[{')]
    assert len(pipeline_out) == 1 and all(label in pipeline_out[0] for label in LABELS)
    grey_out = [line for line in lines if line.startswith("{'dark'")]
    assert len(grey_out) == 1 and all(f"'{label}'" in grey_out[0] for label in GREY_LABELS)
