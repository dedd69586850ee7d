"""MACs/params counting and the paper-calibration bounds (issue: numbers match the paper)."""
import contextlib
import io
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vt_timm.layers import ClusteringTokenizer, Projector
from vt_timm.tools.macs import (
    ABLATION_DEPTHS, PAPER_ABLATIONS, PAPER_TABLE2, PAPER_TABLE8, Profile, profile_model, reference_paths,
)
from vt_timm.cli.macs import main

DOCS = Path(__file__).resolve().parents[1] / 'docs' / 'profile.md'


def test_counter_matches_paper_convention_on_resnet18():
    """The paper's ResNet-18 figure is 1.814 GMACs: conv + linear multiply-adds."""
    assert profile_model('resnet18').macs / 1e6 == pytest.approx(1814.1, abs=0.1)


def test_counter_includes_attention_matmuls():
    """A projector's MACs in the paper's form equal its hand count, the two attention matmuls included; its
    inference path executes the logits as X (W_Q K^T): L d C for the filters instead of HW C d for the query."""
    C, CT, d, L, H, W = 32, 48, 16, 4, 5, 7
    proj = Projector(C, CT, qk_dim=d).eval()
    x, tokens = torch.randn(1, C, H, W), torch.randn(1, L, CT)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), reference_paths(proj):
        proj(x, tokens)
    HW = H * W
    expected = HW * C * d + L * CT * d + L * CT * C + HW * L * d + HW * L * C
    assert counter.get_total_flops() / 2 == expected
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        proj(x, tokens)
    assert counter.get_total_flops() / 2 == expected - HW * C * d - HW * L * d + L * d * C + HW * C * L


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


# --- ablation variants (paper Tables 3-7) -----------------------------------------------------

# (MACs, params) tolerance per row where our design is meant to match the paper; None where it cannot:
# the paper's pooling, relation-none and no-projector params disagree with its other rows or with any
# tokenizer/projector that fits Table 2 (arithmetic: docs/architecture.md, "Ablation variants")
ABLATION_BOUNDS = {
    'first tokenizer: pooling': (0.025, None),
    'first tokenizer: clustering': (0.03, 0.01),
    'first tokenizer: filter': (0.01, 0.01),
    'without recurrent tokenizer': (0.025, 0.01),
    'relation: none': (0.02, None),
    'relation: graph conv': (0.01, 0.01),
    'relation: transformer': (0.01, 0.01),
    'L = 32 tokens': (0.01, 0.015),
    'L = 64 tokens': (0.01, 0.015),
    'without projector': (0.035, None),
}
MAP_PIXELS, VT_CHS, TOKENS, KMEANS_ITERS = 14 * 14, 512, 16, 3  # VT-R18/34 at 224 px


@pytest.fixture(scope='module')
def ablation_profiles() -> dict:
    """{(depth, variant): Profile} for every Table 3-7 row of VT-R18/34."""
    return {(depth, a.variant): profile_model(f'vt_resnet{depth}', **a.kwargs)
            for depth in ABLATION_DEPTHS for a in PAPER_ABLATIONS}


def test_every_ablation_row_has_bounds():
    assert sorted(ABLATION_BOUNDS) == sorted(a.variant for a in PAPER_ABLATIONS)
    assert all(set(a.paper) == set(ABLATION_DEPTHS) for a in PAPER_ABLATIONS)


@pytest.mark.parametrize('depth', ABLATION_DEPTHS)
@pytest.mark.parametrize('ablation', PAPER_ABLATIONS, ids=lambda a: a.variant)
def test_ablation_macs_and_params_match_the_paper(ablation_profiles, ablation, depth):
    profile: Profile = ablation_profiles[depth, ablation.variant]
    paper_macs, paper_params = ablation.paper[depth]
    macs_tol, params_tol = ABLATION_BOUNDS[ablation.variant]
    assert profile.macs / 1e6 == pytest.approx(paper_macs, rel=macs_tol)
    if params_tol is not None:
        assert profile.params / 1e6 == pytest.approx(paper_params, rel=params_tol)


@pytest.mark.parametrize('depth', ABLATION_DEPTHS)
def test_ablation_deltas_where_the_paper_is_consistent(ablation_profiles, depth):
    """The paper's differences that our design reproduces (each within 3% or 0.1 M)."""
    ours = {variant: (p.macs / 1e6, p.params / 1e6) for (d, variant), p in ablation_profiles.items() if d == depth}
    paper = {a.variant: a.paper[depth] for a in PAPER_ABLATIONS}

    def delta(table, a, b, idx):
        return table[a][idx] - table[b][idx]

    # transformer vs graph conv: MACs and params
    for idx, tol in ((0, 2.), (1, 0.1)):
        assert delta(ours, 'relation: transformer', 'relation: graph conv', idx) == pytest.approx(
            delta(paper, 'relation: transformer', 'relation: graph conv', idx), abs=tol)
    # the recurrent tokenizers' W_T->R: params
    assert delta(ours, 'without recurrent tokenizer', 'first tokenizer: filter', 1) == pytest.approx(
        delta(paper, 'without recurrent tokenizer', 'first tokenizer: filter', 1), abs=0.1)
    # the cost of 16 and 48 more tokens
    for variant in ('L = 32 tokens', 'L = 64 tokens'):
        assert delta(ours, variant, 'first tokenizer: filter', 0) == pytest.approx(
            delta(paper, variant, 'first tokenizer: filter', 0), rel=0.03)


@pytest.mark.parametrize('depth', ABLATION_DEPTHS)
def test_tokenizer_macs_are_counted_as_run(ablation_profiles, depth):
    """Against the filter tokenizer (X W_A + the gather, HW x C x L each): K-means adds two matmuls
    of HW x C x L per Lloyd step; pooling replaces both by its resize W_rows X W_cols^T."""
    assert ClusteringTokenizer(8, 8).iters == KMEANS_ITERS
    macs = {variant: p.macs for (d, variant), p in ablation_profiles.items() if d == depth}
    filter_macs = macs['first tokenizer: filter']
    step = MAP_PIXELS * VT_CHS * TOKENS
    assert macs['first tokenizer: clustering'] - filter_macs == KMEANS_ITERS * 2 * step
    resize = VT_CHS * (4 * MAP_PIXELS + 4 * 14 * 4)  # (4 x 14) @ (14 x 14), then (4 x 14) @ (14 x 4), per channel
    assert macs['first tokenizer: pooling'] - filter_macs == resize - 2 * step
