"""benchmarks/resolution.py: the token side's MACs do not grow with the image, the VT's advantage over the part it
replaces does, the table's figures are the model counter's, and a (tiny) timed run writes its plot."""
import pytest

from benchmarks.resolution import SIZES, classification_pair, main, measure, model_table, segmentation_pair
from vt_timm.tools.macs import profile_model


@pytest.fixture(scope='module')
def results():
    """MACs only (meta device) of VT-ResNet-18 vs ResNet-18 and VT-FPN vs FPN at every default size."""
    return measure([classification_pair(18), segmentation_pair()], SIZES)


def _by_pair(results):
    pairs = {}
    for r in results:
        pairs.setdefault(r.pair.name, []).append(r)
    return pairs


def test_token_side_is_constant_and_the_part_ratio_grows(results):
    assert SIZES[0] == (224, 224) and SIZES[-1] == (800, 1216)
    for name, rows in _by_pair(results).items():
        vt = [r.costs[1] for r in rows]
        assert vt[0].token_macs > 0 and vt[0].token_macs == vt[-1].token_macs, name
        assert all(r.costs[0].token_macs == 0 for r in rows), name  # the baselines have no tokens
        part_ratios = [r.costs[0].part_macs / r.costs[1].part_macs for r in rows]
        assert all(a < b for a, b in zip(part_ratios, part_ratios[1:])), name
        shares = [c.token_macs / c.part_macs for c in vt]
        assert all(a > b for a, b in zip(shares, shares[1:])), name


def test_table_holds_the_profile_macs(results):
    rows = model_table(results)
    header, body = rows[0], {(r[0], r[1]): r for r in rows[1:]}
    row = body['resnet18 / vt_resnet18', '224x224']
    for model, column in (('resnet18', 'GMACs base'), ('vt_resnet18', 'GMACs VT')):
        assert row[header.index(column)] == f'{profile_model(model).macs / 1e9:.3f}'
    vt18 = next(r for r in results if r.pair.name == 'resnet18 / vt_resnet18' and r.size == (224, 224)).costs[1]
    assert vt18.macs == profile_model('vt_resnet18').macs
    assert vt18.part_macs == profile_model('vt_resnet18').stage5_macs


def test_timed_run_prints_times_and_writes_the_plot(tmp_path, capsys):
    png = tmp_path / 'resolution.png'
    main(['--depths', '18', '--sizes', '64', '--rounds', '1', '--threads', '1', '--markdown', '--plot', str(png)])
    out = capsys.readouterr().out
    assert '| time ratio |' in out and '(constant)' in out
    assert png.read_bytes().startswith(b'\x89PNG\r\n\x1a\n') and png.stat().st_size > 1000
