"""Publish trained VT-ResNets (Wu et al., arXiv:2006.03677) on the Hugging Face Hub, in timm's format.

    vt-hub export output/run/model_best.pth.tar --out hub/vt_resnet18.fmnist --tag fmnist \
        [--use-ema] [--results output/run/validate.json]
    vt-hub push hub/vt_resnet18.fmnist --repo-id you/vt_resnet18.fmnist [--dry-run]

``export`` reads the run's ``args.yaml`` (next to the checkpoint, or ``--args``) for the architecture,
classes, input channels, preprocessing and recipe; writes ``config.json`` and ``model.safetensors``
with timm's ``save_for_hf`` and a model card ``README.md``; then checks that timm loads the folder
back (``local-dir:``) with bit-identical outputs before it appears under ``--out``. ``push`` checks a
folder and uploads it with huggingface_hub (token: ``HF_TOKEN`` or ``hf auth login``). Anyone then
loads it with ``timm.create_model('hf-hub:you/vt_resnet18.fmnist', pretrained=True)``.
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import timm
import torch
from safetensors import safe_open
from huggingface_hub import ModelCardData
from timm.models import save_for_hf

from .checkpoints import create_model_from_checkpoint, is_model_name
from .macs import profile_model
from .configs import load_config

HUB_FILES = ('config.json', 'model.safetensors', 'README.md')
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
    return create_model_from_checkpoint(run_args['model'], str(checkpoint), use_ema, run_args.get('num_classes'),
                                        in_chans, run_args.get('model_kwargs')).eval()


def data_config(run_args: Dict[str, Any], in_chans: int) -> Dict[str, Any]:
    """The preprocessing the run was evaluated with, as timm's pretrained-cfg fields."""
    img_size = run_args['input_size'][1:] if run_args.get('input_size') else [run_args.get('img_size')] * 2
    config = {key: run_args[key] for key in ('mean', 'std', 'crop_pct', 'interpolation') if run_args.get(key)}
    if img_size[0]:
        config['input_size'] = (in_chans, *img_size)
    return config


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
        '- **Training recipe:**',
        *(f'  - {k}: {v}' for k, v in recipe.items()),
        '\n## Model Usage',
        f'```python\nimport timm\nimport vt_timm  # registers the VT-ResNet architectures\n\n'
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()\n"
        f'transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))\n```',
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
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(model(x), reloaded(x)):
            raise RuntimeError(f'{folder}: the exported weights do not reproduce the model')


def export(checkpoint: Path, out: Path, tag: str, repo_id: str = '', use_ema: bool = False,
           args_file: Optional[Path] = None, results_file: Optional[Path] = None) -> Path:
    """Write the Hub folder for a train.py checkpoint to ``out`` (which must not exist yet)."""
    args_file = args_file or checkpoint.parent / 'args.yaml'
    for flag, path in (('checkpoint', checkpoint), ('--args', args_file), ('--results', results_file)):
        if path is not None and not path.is_file():
            raise SystemExit(f'{flag} {path}: no such file (export needs the run\'s args.yaml: pass --args)')
    if out.exists():
        raise SystemExit(f'--out {out} exists: export never overwrites; remove it or choose another folder')
    run_args = load_config(str(args_file))
    results = json.loads(results_file.read_text()) if results_file else None
    model = load_trained_model(checkpoint, run_args, use_ema)
    repo_id = repo_id or f'{run_args["model"]}.{tag}'
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        save_for_hf(model, str(staging), model_config={'pretrained_cfg': {'tag': tag}},
                    data_config=data_config(run_args, model.in_chans), safe_serialization=True)
        input_size = json.loads((staging / 'config.json').read_text())['pretrained_cfg']['input_size']
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
    architecture = json.loads((folder / 'config.json').read_text()).get('architecture')
    if not isinstance(architecture, str) or not is_model_name(architecture):
        raise SystemExit(f'{folder / "config.json"}: unknown architecture {architecture!r}')
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
