"""MACs/params counting and the paper-calibration bounds (issue: numbers match the paper)."""
import contextlib
import io
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vt_timm.layers import Projector
from vt_timm.profile import PAPER_TABLE2, PAPER_TABLE8, main, profile_model

DOCS = Path(__file__).resolve().parents[1] / 'docs' / 'profile.md'


def test_counter_matches_paper_convention_on_resnet18():
    """The paper's ResNet-18 figure is 1.814 GMACs: conv + linear multiply-adds."""
    assert profile_model('resnet18').macs / 1e6 == pytest.approx(1814.1, abs=0.1)


def test_counter_includes_attention_matmuls():
    """A projector's MACs equal its hand count, the two attention matmuls included."""
    C, CT, d, L, H, W = 32, 48, 16, 4, 5, 7
    proj = Projector(C, CT, qk_dim=d).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        proj(torch.randn(1, C, H, W), torch.randn(1, L, CT))
    HW = H * W
    expected = HW * C * d + L * CT * d + L * CT * C + HW * L * d + HW * L * C
    assert counter.get_total_flops() / 2 == expected


@pytest.mark.parametrize('name,table,tolerance', [
    ('vt_resnet18', PAPER_TABLE2, 0.03),
    ('vt_resnet34', PAPER_TABLE2, 0.03),
    ('vt_resnet50', PAPER_TABLE8, 0.05),
    ('vt_resnet101', PAPER_TABLE8, 0.05),
])
def test_macs_and_params_match_the_paper(name, table, tolerance):
    """VT-R18/34 within 3% of Table 2, VT-R50/101 within 5% of Table 8, on MACs and on params."""
    profile = profile_model(name)
    paper_macs, paper_params = table[name]
    assert profile.macs / 1e6 == pytest.approx(paper_macs, rel=tolerance)
    assert profile.params / 1e6 == pytest.approx(paper_params, rel=tolerance)


def test_vt_stage_is_cheaper_than_layer4():
    """Table 1's claim: the VT stage costs a fraction of the stage-5 convolutions it replaces."""
    for depth in (18, 34, 50, 101):
        assert profile_model(f'resnet{depth}').stage5_macs > 2 * profile_model(f'vt_resnet{depth}').stage5_macs


def test_committed_profile_table_is_current():
    """docs/profile.md holds the script's latest output verbatim."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(['--markdown'])
    assert out.getvalue().strip() in DOCS.read_text()
