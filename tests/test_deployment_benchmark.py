"""benchmarks/deployment.py: a row per runtime with positive times, bf16 and ONNX Runtime outputs that match
fp32 eager PyTorch, and the paper-form MAC ratio of the project's counter (VT-ResNet-18 at 64 px, batch 1)."""
import pytest

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')  # torch's ONNX exporter

from benchmarks.deployment import RUNTIMES, depth_results, ratio_table, result_table  # noqa: E402
from vt_timm.tools.macs import profile_model  # noqa: E402

IMG_SIZE = 64


@pytest.fixture(scope='module')
def results(one_thread):
    return depth_results(18, batch_size=1, img_size=IMG_SIZE, rounds=1, threads=1)


def test_every_runtime_is_timed_and_computes_the_fp32_function(results):
    by_runtime = {r.runtime: r for r in results}
    assert tuple(by_runtime) == RUNTIMES
    for r in results:
        assert r.depth == 18 and r.vt_ms > 0 and r.resnet_ms > 0
        assert r.time_ratio == pytest.approx(r.resnet_ms / r.vt_ms)
    eager, bf16, onnx = (by_runtime[runtime] for runtime in RUNTIMES)
    assert eager.vt_error is None and eager.resnet_error is None
    for error in (onnx.vt_error, onnx.resnet_error):
        assert error < 1e-4
    for error in (bf16.vt_error, bf16.resnet_error):
        assert 1e-4 < error < 5e-2  # bf16 rounding (8-bit mantissa) shows, and stays small


def test_mac_ratio_is_the_counters(results):
    vt, resnet = profile_model('vt_resnet18', IMG_SIZE), profile_model('resnet18', IMG_SIZE)
    assert [r.mac_ratio for r in results] == pytest.approx([resnet.macs / vt.macs] * len(RUNTIMES), rel=1e-6)


def test_tables(results):
    rows = result_table(results)
    assert [row[:2] for row in rows[1:]] == [['18', runtime] for runtime in RUNTIMES]
    assert rows[1][-2:] == ['-', '-']
    ratios = ratio_table(results)
    assert ratios[0][2:] == [f'time ratio, {runtime}' for runtime in RUNTIMES]
    assert ratios[1] == ['18', f'{results[0].mac_ratio:.2f}', *(f'{r.time_ratio:.2f}' for r in results)]
