"""benchmark.py: its rows, the --compare ratios, the exact CPU memory count, results files and bad input."""
import json

import pytest
import torch

from vt_timm.cli import benchmark
from vt_timm.tools.macs import profile_model

FAST = ['-b', '2', '--img-size', '64', '--num-warm-iter', '1', '--num-bench-iter', '2', '--threads', '1']


def test_compare_rows_and_ratios(tmp_path):
    results = tmp_path / 'r.json'
    rows = benchmark.main(['--compare', '--model-list', 'vt_resnet18', '--bench', 'both', *FAST,
                           '--results-file', str(results), '--results-format', 'json'])
    assert json.loads(results.read_text()) == rows
    by_key = {(r['model'], r['bench']): r for r in rows}
    for bench in ('infer', 'train'):
        vt, resnet = by_key['vt_resnet18', bench], by_key['resnet18', bench]
        ratio = by_key['vt_resnet18 / resnet18', bench]
        assert ratio['throughput_ratio'] == pytest.approx(vt['img_per_sec'] / resnet['img_per_sec'], rel=2e-2)
        assert ratio['mac_ratio'] == pytest.approx(resnet['gmacs'] / vt['gmacs'], rel=2e-2)
        assert vt['img_per_sec'] == pytest.approx(2 / (vt['step_ms'] / 1e3), rel=2e-2)
        # the stage the VT replaces, timed inside the same steps: a positive part of each step, more in training
        assert 0 < vt['stage_ms'] < vt['step_ms'] and 0 < resnet['stage_ms'] < resnet['step_ms']
        assert ratio['stage_time_ratio'] == pytest.approx(resnet['stage_ms'] / vt['stage_ms'], rel=2e-2)
        profiles = [profile_model(name, 64) for name in ('resnet18', 'vt_resnet18')]
        assert ratio['stage_mac_ratio'] == pytest.approx(profiles[0].stage5_macs / profiles[1].stage5_macs, rel=1e-3)
    assert by_key['vt_resnet18', 'train']['stage_ms'] > by_key['vt_resnet18', 'infer']['stage_ms']
    assert by_key['vt_resnet18', 'train']['mparams'] == 11.70


def test_compare_leaves_out_stage_times_where_hooks_would_mislead():
    """--grad-checkpointing reruns forwards in backward: no stage columns rather than double-counted ones."""
    rows = benchmark.main(['--compare', '--model-list', 'vt_resnet18', '--bench', 'train', '--grad-checkpointing',
                           *FAST])
    assert not any('stage_ms' in r or 'stage_time_ratio' in r for r in rows)
    assert 'throughput_ratio' in rows[-1]


def test_compare_times_the_resnet_at_the_vt_resnets_input_size():
    """Without --img-size each model's cfg decides; timm's resnet18 is tested at 288 px, vt_resnet18 at 224."""
    rows = benchmark.main(['--compare', '--model', 'vt_resnet18', '--bench', 'infer', '-b', '1', '--num-warm-iter', '0',
                           '--num-bench-iter', '1', '--threads', '1'])
    assert [(r['model'], r.get('img_size')) for r in rows] == [
        ('vt_resnet18', 224), ('resnet18', 224), ('vt_resnet18 / resnet18', None)]


def test_cpu_training_memory_is_counted_exactly():
    """Weights + grads + SGD momentum + the tensors autograd saves: checked on a model small enough to
    count by hand (a 3x3 conv then a linear head)."""
    args = benchmark.parse_args(['--model', 'resnet18', *FAST, '--opt', 'momentum', '--smoothing', '0'])
    bench = benchmark.Bench('resnet18', 'train', args)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.Flatten(), torch.nn.Linear(4 * 62 * 62, 10))
    bench.model = bench.forward = model
    bench.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bench.input, bench.target = torch.randn(2, 3, 64, 64), torch.zeros(2, dtype=torch.long)
    bench.measure_memory()
    params = sum(p.numel() for p in model.parameters())
    # saved float32: conv input (2x3x64x64), linear input (2x4x62x62, a view of the conv output),
    # log-softmax output (2x10), nll_loss's total weight (1); int64: the targets (2)
    saved = 4 * (2 * 3 * 64 * 64 + 2 * 4 * 62 * 62 + 2 * 10 + 1) + 8 * 2
    assert bench.peak_bytes == 4 * 3 * params + saved


@pytest.mark.parametrize('argv, message', [
    (['--model', 'no_such_model'], 'unknown models'),
    (['--compare', '--model', 'resnet18'], 'pairs vt_resnetN with resnetN'),
    (['--results-file', 'r.txt', '--results-format', 'xml'], '2'),  # argparse: invalid choice
    (['--model-list', 'missing.txt'], '--model-list missing.txt: no such file'),
    (['--amp-dtype', 'bf16'], '2'),  # argparse: invalid choice
])
def test_bad_input(argv, message):
    with pytest.raises(SystemExit, match=message):
        benchmark.main(argv)


def test_torchcompile_compiles_the_timed_model(monkeypatch):
    """--torchcompile BACKEND --torchcompile-mode MODE reach torch.compile (timm's flags); --amp-dtype is
    timm's float16 unless given."""
    calls = []
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: calls.append(kwargs) or model)
    args = benchmark.parse_args(['--torchcompile', 'eager', '--torchcompile-mode', 'max-autotune', '-b', '1'])
    assert args.amp_dtype == 'float16'
    benchmark.Bench('resnet18', 'infer', args)
    assert calls == [{'backend': 'eager', 'mode': 'max-autotune'}]
    assert benchmark.parse_args(['--torchcompile']).torchcompile == 'inductor'


def test_vt_stage_table_parts_add_up():
    """benchmarks/vt_stage.py: the parts' MACs add up to the VT stage's, which (and layer4's) equal the
    model counter's stage-5 figures times the batch, and every timing is positive."""
    from benchmarks.vt_stage import stage_table
    from vt_timm.tools.macs import profile_model
    rows = {r[0]: r[1:] for r in stage_table([18], batch_size=2, rounds=1)[1:]}
    mmacs = {name: float(r[0]) for name, r in rows.items()}
    parts = sum(v for name, v in mmacs.items() if name.startswith('- '))
    assert parts == pytest.approx(mmacs['vt_resnet18 vt'], rel=1e-3)
    assert mmacs['vt_resnet18 vt'] == pytest.approx(2 * profile_model('vt_resnet18').stage5_macs / 1e6, rel=1e-3)
    assert mmacs['resnet18 layer4'] == pytest.approx(2 * 411.0, rel=1e-2)  # the paper's 411 MMACs per image
    assert len([n for n in rows if n.startswith('- ')]) == 6  # lift + 2 modules x (tokenizer, relation) + 1 projector
    assert all(float(r[1]) > 0 for r in rows.values())


def test_vt_stage_compile_times_compiled_stages_and_counts_their_macs(monkeypatch):
    """benchmarks/vt_stage.py --compile: the stage rows (no parts) are timed through torch.compile (recorded
    here; test_compile.py checks the compiled stage itself) and counted on the uncompiled modules."""
    from benchmarks import vt_stage
    compiled_types = []

    def recording_compile(module):
        compiled_types.append(type(module).__name__)
        return module
    monkeypatch.setattr(vt_stage.torch, 'compile', recording_compile)
    main_args = []
    monkeypatch.setattr(vt_stage, 'stage_table', lambda *args: main_args.append(args) or [['part'] * 6])
    monkeypatch.setattr(vt_stage, 'ratio_table', lambda rows, depths: [['depth']])
    vt_stage.main(['--depths', '18', '--compile'])
    assert main_args[0][-1] is True  # the flag reaches the table
    monkeypatch.undo()
    monkeypatch.setattr(vt_stage.torch, 'compile', recording_compile)
    compiled = {r[0]: r[1:] for r in vt_stage.stage_table([18], batch_size=2, rounds=1, compiled=True)[1:]}
    assert sorted(compiled_types) == ['Sequential', 'Sequential', 'VTStage', 'VTStage']  # layer4 and VT, infer + train
    assert list(compiled) == ['resnet18 layer4', 'vt_resnet18 vt', 'vt_resnet18 vt, reference paths',
                              'resnet18 layer4, training step', 'vt_resnet18 vt, training step']
    monkeypatch.undo()
    eager = {r[0]: r[1:] for r in vt_stage.stage_table([18], batch_size=2, rounds=1)[1:]}
    for name, row in compiled.items():
        assert (row[0], row[3]) == (eager[name][0], eager[name][3]), name  # MMACs: paper form, executed
        assert float(row[1]) > 0
