"""Publish trained VT-ResNets (Wu et al., arXiv:2006.03677) on the Hugging Face Hub, in timm's format.

    vt-hub export output/run/model_best.pth.tar --out hub/vt_resnet18.fmnist --tag fmnist \
        [--use-ema] [--results output/run/validate.json]
    vt-hub push hub/vt_resnet18.fmnist --repo-id you/vt_resnet18.fmnist [--dry-run]

``export`` reads the run's ``args.yaml`` (next to the checkpoint, or ``--args``; vt_timm's train.py or
timm's own) for the architecture, classes, input channels, preprocessing and recipe; writes
``config.json`` and ``model.safetensors`` with timm's ``save_for_hf`` and a model card ``README.md``;
then checks that timm loads the folder back (``local-dir:``) with bit-identical outputs before it
appears under ``--out``. ``push`` checks a folder and uploads it with huggingface_hub (token:
``HF_TOKEN`` or ``hf auth login``). After ``import vt_timm`` anyone then loads it with
``timm.create_model('hf-hub:you/vt_resnet18.fmnist', pretrained=True)``, or with transformers'
``AutoModelForImageClassification`` / ``AutoImageProcessor`` / ``pipeline('image-classification')``.

Two things timm's ``save_for_hf`` alone does not give transformers (5.x, ``TimmWrapper``):

- it records ``num_classes`` in ``model_args``, and ``TimmWrapper`` calls
  ``timm.create_model(architecture, num_classes=config.num_labels, **model_args)``: a repeat is
  ``TypeError: got multiple values for keyword argument 'num_classes'``. The export keeps
  ``num_classes`` at the config's root only, where both timm and transformers read it.
- class names: the export writes ``label_names`` (transformers' ``id2label``, timm's
  ``pretrained_cfg['label_names']``) from ``--label-names``, else from the run's dataset.

transformers builds the model with ``timm.create_model(architecture)``, so the architecture must be
registered: ``import vt_timm`` first (a config cannot make transformers import it).
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import yaml
from safetensors import safe_open
from huggingface_hub import ModelCardData
from timm.models import save_for_hf

from .checkpoints import create_model_from_checkpoint, is_model_name
from .macs import profile_model
from .data import IMG_MODES

HUB_FILES = ('config.json', 'model.safetensors', 'README.md')
# keyword arguments that transformers' TimmWrapper passes to timm.create_model itself, before the config's
# model_args (num_classes=config.num_labels, or 0 for the headless TimmWrapperModel): model_args must not repeat them
WRAPPER_ARGS = ('num_classes',)
# timm 'torch/<name>' datasets whose torchvision class lists its classes in label order as a class attribute
TORCHVISION_CLASSES = {'mnist': 'MNIST', 'kmnist': 'KMNIST', 'fashion_mnist': 'FashionMNIST', 'qmnist': 'QMNIST'}
# datasets whose readers name no classes in a way worth guessing at
NO_LABEL_READERS = ('hfds/', 'hfids/', 'tfds/', 'wds/')
CITATION = """@inproceedings{wu2021visual,
  title     = {Visual Transformers: Where Do Transformers Really Belong in Vision Models?},
  author    = {Wu, Bichen and Xu, Chenfeng and Dai, Xiaoliang and Wan, Alvin and Zhang, Peizhao and
               Yan, Zhicheng and Tomizuka, Masayoshi and Gonzalez, Joseph E. and Keutzer, Kurt and Vajda, Peter},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""
# run settings worth a line in the model card, in train.py dest names
RECIPE_KEYS = ('dataset', 'train_num_samples', 'epochs', 'batch_size', 'opt', 'lr', 'lr_base', 'momentum',
               'weight_decay', 'sched', 'warmup_epochs', 'smoothing', 'aa', 'drop', 'drop_path', 'model_ema',
               'model_ema_decay', 'kd_model_name', 'seed')


def load_trained_model(checkpoint: Path, run_args: Dict[str, Any], use_ema: bool) -> torch.nn.Module:
    """The model of a train.py run (architecture from its args) with the checkpoint's raw or EMA weights."""
    in_chans = run_args['input_size'][0] if run_args.get('input_size') else run_args.get('in_chans')
    try:
        return create_model_from_checkpoint(run_args['model'], str(checkpoint), use_ema, run_args.get('num_classes'),
                                            in_chans, run_args.get('model_kwargs')).eval()
    except ValueError as e:  # a model keyword of the run out of range
        raise SystemExit(f'model {run_args["model"]} of the run\'s args: {e}') from e


def read_run_args(path: Path) -> Dict[str, Any]:
    """The run's args.yaml: a mapping that names the ``model``; SystemExit naming ``--args`` otherwise."""
    try:
        run_args = yaml.safe_load(path.read_text()) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise SystemExit(f'--args {path}: not a YAML file: {e}') from e
    if not isinstance(run_args, dict):
        raise SystemExit(f'--args {path}: expected a YAML mapping of train.py dest names, got '
                         f'{type(run_args).__name__}')
    if not isinstance(run_args.get('model'), str) or not is_model_name(run_args['model']):
        raise SystemExit(f'--args {path}: model {run_args.get("model")!r} is no model timm can build; expected the '
                         f'args.yaml of the train.py run that wrote the checkpoint')
    return run_args


RESULT_KEYS = ('samples', 'top1', 'top5', 'loss', 'img_size', 'crop_pct')  # what the model card's table shows


def read_results(path: Path) -> Dict[str, Any]:
    """validate.py's ``--results-format json`` file; SystemExit naming ``--results`` unless it has ``RESULT_KEYS``."""
    try:
        results = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f'--results {path}: not a JSON file: {e}') from e
    missing = [k for k in RESULT_KEYS if k not in results] if isinstance(results, dict) else list(RESULT_KEYS)
    if missing:
        raise SystemExit(f'--results {path}: missing {missing}; expected the output of validate.py '
                         f'--results-format json')
    return results


def data_config(run_args: Dict[str, Any], in_chans: int) -> Dict[str, Any]:
    """The preprocessing the run was evaluated with, as timm's pretrained-cfg fields."""
    img_size = run_args['input_size'][1:] if run_args.get('input_size') else [run_args.get('img_size')] * 2
    config = {key: run_args[key] for key in ('mean', 'std', 'crop_pct', 'interpolation') if run_args.get(key)}
    if img_size[0]:
        config['input_size'] = (in_chans, *img_size)
    return config


def read_label_names(path: Path, num_classes: int) -> List[str]:
    """Class names from a text file, one a line in class-index order (the format of timm's ``--class-map``
    .txt files); SystemExit unless there is one non-empty, distinct name per class."""
    if not path.is_file():
        raise SystemExit(f'--label-names {path}: no such file')
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise SystemExit(f'--label-names {path}: not a text file: {e}') from e
    if len(names) != num_classes or len(set(names)) != len(names):
        raise SystemExit(f'--label-names {path}: {len(names)} names ({len(set(names))} distinct), but the model has '
                         f'{num_classes} classes; expected one distinct name a line, in class-index order')
    return names


def dataset_label_names(run_args: Dict[str, Any], num_classes: int) -> Tuple[Optional[List[str]], str]:
    """(class names in label order, '') for the run's dataset, or (None, why not): the torchvision class's
    ``classes`` for timm's ``torch/mnist``-family datasets; for image folders and tar files (timm's default
    reader, with the run's ``class_map`` if it had one) the reader's ``class_to_idx`` of the run's training
    split under its ``data_dir``, which must still be there."""
    name = (run_args.get('dataset') or '').lower()
    if name.startswith('torch/'):
        import torchvision.datasets

        names = getattr(getattr(torchvision.datasets, TORCHVISION_CLASSES.get(name[len('torch/'):], ''), None),
                        'classes', None)
        if not isinstance(names, (list, tuple)):
            return None, f'torchvision lists no classes for {name} without its files'
        names = list(names)
    elif name.startswith(NO_LABEL_READERS):
        return None, f'no class names are read from {name} datasets'
    else:
        data_dir = run_args.get('data_dir') or run_args.get('data')
        if not data_dir or not Path(data_dir).is_dir():
            return None, f'the run\'s data_dir {data_dir!r} is not a folder here'
        from timm.data import create_dataset

        try:
            dataset = create_dataset(run_args.get('dataset') or '', root=data_dir,
                                     split=run_args.get('train_split') or 'train',
                                     class_map=run_args.get('class_map') or '')
        except Exception as e:  # a split that is not there, an unreadable class map, ...
            return None, f'timm could not read {data_dir}: {type(e).__name__}: {e}'
        class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None) or {}
        names = [c for c, _ in sorted(class_to_idx.items(), key=lambda item: item[1])]
        if sorted(class_to_idx.values()) != list(range(len(names))):
            return None, f'the class indices of {data_dir} are not 0..{len(names) - 1}'
    if len(names) != num_classes:
        return None, f'{name or "the image folder"} has {len(names)} classes, the model {num_classes}'
    return names, ''


def hf_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """timm's ``save_for_hf`` config, loadable by transformers' ``TimmWrapper`` too: ``model_args`` without
    the arguments TimmWrapper passes itself (``WRAPPER_ARGS``). timm still builds the same model: it reads
    ``num_classes`` from the config's root into the pretrained cfg, the default of its model factory."""
    model_args = {k: v for k, v in (config.get('model_args') or {}).items() if k not in WRAPPER_ARGS}
    return {k: model_args if k == 'model_args' else v for k, v in config.items() if k != 'model_args' or model_args}


def usage_snippets(repo_id: str, in_chans: int) -> List[str]:
    """The model card's usage, from timm and from transformers; each snippet starts with ``import vt_timm``
    (transformers builds the model with timm, which knows the VT-ResNets only once vt_timm registered them)."""
    timm_snippet = '\n'.join([
        '```python',
        'import vt_timm  # registers the VT-ResNet architectures with timm',
        'import timm',
        '',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        'transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))',
        '```',
    ])
    header = 'import vt_timm  # first: transformers builds the model with timm, which then knows the VT-ResNets'
    if in_chans == 3:
        transformers_snippet = '\n'.join([
            '```python', header,
            'from PIL import Image',
            'from transformers import pipeline',
            '',
            f"classifier = pipeline('image-classification', model='{repo_id}')",
            "print(classifier(Image.open('photo.jpg'), top_k=5))",
            '```',
        ])
    else:  # transformers' pipeline converts every image to RGB; its timm processor keeps the mode it is given
        transformers_snippet = '\n'.join([
            '```python', header,
            'import torch',
            'from PIL import Image',
            'from transformers import AutoImageProcessor, AutoModelForImageClassification',
            '',
            f"processor = AutoImageProcessor.from_pretrained('{repo_id}')",
            f"model = AutoModelForImageClassification.from_pretrained('{repo_id}').eval()",
            f"inputs = processor(Image.open('photo.jpg').convert('{IMG_MODES.get(in_chans, 'L')}'))"
            f'  # {in_chans}-channel input',
            'with torch.no_grad():',
            '    probs = model(**inputs).logits.softmax(-1)[0]',
            'print({model.config.id2label[i]: round(p, 4) for i, p in enumerate(probs.tolist())})',
            '```',
        ])
    note = ('the pipeline preprocesses with the timm transform in `config.json`' if in_chans == 3 else
            f'the model takes {in_chans}-channel images, and transformers\' pipeline converts every image to RGB: '
            'use the image processor (the timm transform in `config.json`) and the model')
    return ['\n## Model Usage', '### timm', timm_snippet, f'\n### transformers\n`transformers>=5`; {note}.',
            transformers_snippet]


def model_card(model: torch.nn.Module, input_size: Sequence[int], repo_id: str, tag: str, run_args: Dict[str, Any],
               use_ema: bool, results: Optional[Dict[str, Any]]) -> str:
    """README.md for the Hub: metadata (huggingface_hub's ``ModelCardData``), what the weights are, how they were
    trained and evaluated, how to load them."""
    stats = profile_model(run_args['model'], input_size[-1], num_classes=model.num_classes, in_chans=model.in_chans,
                          **(run_args.get('model_kwargs') or {}))
    dataset = run_args.get('dataset') or 'image folder'
    metadata = ModelCardData(
        license=model.pretrained_cfg.get('license', 'apache-2.0'), library_name='timm',
        pipeline_tag='image-classification', tags=['image-classification', 'timm', 'vt_timm'],
        datasets=[dataset.lower()] if run_args.get('dataset') else None)
    recipe = {k: run_args[k] for k in RECIPE_KEYS if run_args.get(k) not in (None, '', False)}
    lines = [
        f'---\n{metadata.to_yaml()}\n---',
        f'# Model card for {repo_id}\n',
        f'A VT-ResNet (Visual Transformer on ResNet stages 1-4) trained with vt_timm\'s train.py on {dataset}; '
        f'{"EMA" if use_ema else "raw (non-EMA)"} weights, tag `{tag}`.\n',
        '## Model Details',
        '- **Model Type:** Image classification / feature backbone',
        '- **Model Stats:**',
        f'  - Params (M): {stats.params / 1e6:.2f}',
        f'  - GMACs: {stats.macs / 1e9:.3f} (multiply-adds incl. matmuls, at {input_size[-1]} px)',
        f'  - Image size: {"x".join(str(s) for s in input_size)}',
        '- **Papers:**',
        '  - Visual Transformers: Token-based Image Representation and Processing for Computer Vision: '
        'https://arxiv.org/abs/2006.03677',
        f'- **Dataset:** {dataset}',
        *(['- **Training recipe:**'] if recipe else []),
        *(f'  - {k}: {v}' for k, v in recipe.items()),
        *usage_snippets(repo_id, model.in_chans),
    ]
    if results:
        lines += [
            '\n## Model Comparison',
            '| split | samples | top-1 | top-5 | loss | img size | crop pct |\n|---|---|---|---|---|---|---|',
            f'| {run_args.get("val_split", "validation")} | {results["samples"]} | {results["top1"]:.2f} | '
            f'{results["top5"]:.2f} | {results["loss"]:.4f} | {results["img_size"]} | {results["crop_pct"]} |\n',
            'Measured with vt_timm\'s validate.py.',
        ]
    lines += ['\n## Citation', f'```bibtex\n{CITATION}\n```']
    return '\n'.join(lines) + '\n'


def check_reload(folder: Path, model: torch.nn.Module, input_size: Sequence[int]) -> None:
    """timm loads ``folder`` as ``local-dir:`` and gives bit-identical outputs to ``model``."""
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    if (reloaded.num_classes, reloaded.in_chans) != (model.num_classes, model.in_chans):
        raise RuntimeError(f'{folder}: timm rebuilds {reloaded.num_classes} classes and {reloaded.in_chans} input '
                           f'channels, the model has {model.num_classes} and {model.in_chans}')
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(model(x), reloaded(x)):
            raise RuntimeError(f'{folder}: the exported weights do not reproduce the model')


def export(checkpoint: Path, out: Path, tag: str, repo_id: str = '', use_ema: bool = False,
           args_file: Optional[Path] = None, results_file: Optional[Path] = None,
           label_names_file: Optional[Path] = None) -> Path:
    """Write the Hub folder for a train.py checkpoint to ``out`` (which must not exist yet). Class names come
    from ``label_names_file`` (one a line), else from the run's dataset (``dataset_label_names``); without
    them, transformers names the classes LABEL_0, LABEL_1, ... (ImageNet's names for 1000 classes)."""
    args_file = args_file or checkpoint.parent / 'args.yaml'
    for flag, path in (('checkpoint', checkpoint), ('--args', args_file), ('--results', results_file)):
        if path is not None and not path.is_file():
            raise SystemExit(f'{flag} {path}: no such file (export needs the run\'s args.yaml: pass --args)')
    if out.exists():
        raise SystemExit(f'--out {out} exists: export never overwrites; remove it or choose another folder')
    run_args = read_run_args(args_file)
    results = read_results(results_file) if results_file else None
    model = load_trained_model(checkpoint, run_args, use_ema)
    if label_names_file is not None:
        label_names = read_label_names(label_names_file, model.num_classes)
    else:
        label_names, why = dataset_label_names(run_args, model.num_classes)
        if label_names is None:
            print(f'note: no class names in the export ({why}); pass --label-names FILE (one a line)')
    repo_id = repo_id or f'{run_args["model"]}.{tag}'
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        model_config = {'pretrained_cfg': {'tag': tag}, **({'label_names': label_names} if label_names else {})}
        save_for_hf(model, str(staging), model_config=model_config,
                    data_config=data_config(run_args, model.in_chans), safe_serialization=True)
        config = hf_config(json.loads((staging / 'config.json').read_text()))
        (staging / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
        input_size = config['pretrained_cfg']['input_size']
        (staging / 'README.md').write_text(model_card(model, input_size, repo_id, tag, run_args, use_ema, results))
        check_reload(staging, model, input_size)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def check_folder(folder: Path) -> List[Path]:
    """The files of an exported folder, after checking it is complete and readable."""
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f'{folder}: missing {missing}; expected the output of `vt-hub export`')
    try:
        config = json.loads((folder / 'config.json').read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f'{folder / "config.json"}: not a JSON file: {e}') from e
    if not isinstance(config, dict):
        raise SystemExit(f'{folder / "config.json"}: expected a JSON object, got {type(config).__name__}')
    architecture = config.get('architecture')
    if not isinstance(architecture, str) or not is_model_name(architecture):
        raise SystemExit(f'{folder / "config.json"}: unknown architecture {architecture!r}')
    repeated = [k for k in WRAPPER_ARGS if k in (config.get('model_args') or {})]
    if repeated:
        raise SystemExit(f'{folder / "config.json"}: model_args repeats {repeated}, which transformers\' TimmWrapper '
                         'passes itself (it would fail with "got multiple values for keyword argument"); '
                         're-export the folder with `vt-hub export`')
    try:
        with safe_open(str(folder / 'model.safetensors'), framework='pt') as weights:
            weights.keys()
    except Exception as e:
        raise SystemExit(f'{folder / "model.safetensors"}: not a readable safetensors file: {e}') from e
    return sorted(p for p in folder.iterdir() if p.is_file())


def push(folder: Path, repo_id: str, dry_run: bool = False, private: bool = False,
         commit_message: str = 'Add VT-ResNet weights') -> str:
    """Upload an exported folder to the Hub model repo ``repo_id`` (created if needed); returns its URL."""
    files = check_folder(folder)
    url = f'https://huggingface.co/{repo_id}'
    print(f'{"would upload" if dry_run else "uploading"} to {url}' + ' (private)' * private + ':')
    for path in files:
        print(f'  {path.name}  {path.stat().st_size / 1e6:.2f} MB')
    if not dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                          allow_patterns=[p.name for p in files])
    return url
