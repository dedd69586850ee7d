"""vt_timm.cli.run_script: a script that never imports vt_timm still sees the VT-ResNets."""
import subprocess
import sys


def test_foreign_script_sees_registered_models(tmp_path):
    script = tmp_path / 'foreign.py'
    script.write_text(
        'import sys, timm\n'
        'model = timm.create_model(sys.argv[1], num_classes=int(sys.argv[2]), device="meta")\n'
        'print(type(model).__name__, model.num_classes)\n')
    out = subprocess.run([sys.executable, '-m', 'vt_timm.cli.run_script', str(script), 'vt_resnet34', '7'],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == 'VTResNet 7'


def test_without_it_the_script_fails(tmp_path):
    script = tmp_path / 'foreign.py'
    script.write_text('import timm\ntimm.create_model("vt_resnet34", device="meta")\n')
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode != 0 and 'Unknown model' in result.stderr
