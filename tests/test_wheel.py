"""The product: the wheel ``pip`` builds, installed (not editable) in a fresh virtual environment outside
the checkout, runs the documented commands with its packaged recipe on real Fashion-MNIST images.

The environment sees the machine's site-packages for torch/timm (installing torch again would take
minutes) but imports vt_timm from the wheel: the test checks where it came from.
"""
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # training runs (README: the fast set is -m 'not slow')

ROOT = Path(__file__).resolve().parents[1]


def _run(command, cwd: Path, env=None, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f'{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'
    return result


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(bin folder, environment variables, working folder) of a venv with the built wheel installed."""
    root = tmp_path_factory.mktemp('wheel')
    _run([sys.executable, '-m', 'pip', 'wheel', str(ROOT), '--no-deps', '--no-build-isolation', '-q', '-w',
          str(root / 'dist')], cwd=root)
    wheels = list((root / 'dist').glob('vt_timm-*.whl'))
    assert len(wheels) == 1, wheels
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / 'env')
    bin_dir = root / 'env' / 'bin'
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
    _run([sys.executable, '-m', 'pip', '--python', str(bin_dir / 'python'), 'install', '--no-deps', '-q',
          str(wheels[0])], cwd=root)
    work = root / 'work'
    work.mkdir()
    return bin_dir, env, work


def test_wheel_ships_package_recipes_and_scripts(installed):
    bin_dir, env, work = installed
    out = _run([str(bin_dir / 'python'), '-c', (
        'import json, vt_timm, timm; from vt_timm.tools.configs import packaged_configs; '
        'm = timm.create_model("vt_resnet50"); '
        'print(json.dumps(dict(file=vt_timm.__file__, configs=packaged_configs(), '
        'params=sum(p.numel() for p in m.parameters()))))')], cwd=work, env=env)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info['file'].startswith(str(bin_dir.parent)), f'vt_timm imported from {info["file"]}, not the wheel'
    assert {'quickstart_fashion_mnist', 'vt_resnet18_default', 'vt_resnet101_advanced'} <= set(info['configs'])
    assert 20e6 < info['params'] < 22e6  # VT-ResNet-50: 20.6 M (Table 8: 21.6 M)
    for script in ('vt-train', 'vt-validate', 'vt-benchmark', 'vt-segment', 'vt-visualize', 'vt-export', 'vt-hub',
                   'vt-macs', 'vt-segmentation-macs', 'vt-plot', 'vt-run-script'):
        assert (bin_dir / script).is_file(), script


def test_installed_commands_train_then_validate_on_real_data(installed):
    bin_dir, env, work = installed
    _run([str(bin_dir / 'vt-train'), '-c', 'quickstart_fashion_mnist', '--data-dir', str(work / 'data'),
          '--output', str(work / 'runs'), '--experiment', 'q', '--train-num-samples', '256',
          '--val-num-samples', '100', '--epochs', '1', '-b', '32'], cwd=work, env=env)
    run_dir = work / 'runs' / 'q'
    _run([str(bin_dir / 'vt-validate'), '-c', str(run_dir / 'args.yaml'), '--checkpoint',
          str(run_dir / 'model_best.pth.tar'), '--results-file', str(work / 'validate.json'), '--results-format',
          'json'], cwd=work, env=env)
    results = json.loads((work / 'validate.json').read_text())
    assert results['samples'] == 100 and 0 <= results['top1'] <= 100
    summary = (run_dir / 'summary.csv').read_text().strip().splitlines()
    assert float(summary[-1].split(',')[3]) == pytest.approx(results['top1'], abs=1e-3)
