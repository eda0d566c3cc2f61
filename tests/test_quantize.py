import numpy as np
import onnx
import pytest

from mpq_export.act_ranges import ActCalibSettings, choose_ranges
from mpq_export.allocate import AllocationSettings, allocate
from mpq_export.calibrate import CalibrationSettings, calibrate
from mpq_export.layers import inspect_model
from mpq_export.quantize import QuantizeSettings, count_weight_bits, quantize, quantize_weight
from mpq_export.sampler import NoiseSchedule


def _mse(w, qw):
    return float(((qw.dequantize() - w) ** 2).mean())


def test_mse_clip_search_lowers_weight_error_at_4_bits():
    rng = np.random.default_rng(0)
    w = rng.standard_t(df=3, size=(64, 32, 3, 3)).astype(np.float32)  # heavy tails, as real conv weights
    plain = quantize_weight(w, 4, axis=0, clip_search=False)
    searched = quantize_weight(w, 4, axis=0, clip_search=True)
    assert _mse(w, searched) < 0.85 * _mse(w, plain)


def test_weight_error_shrinks_with_more_bits_and_values_fit_their_range():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((256, 48)).astype(np.float32)
    q4 = quantize_weight(w, 4, axis=1, block_axis=0, block_size=128)
    q8 = quantize_weight(w, 8, axis=1)
    assert _mse(w, q8) < _mse(w, q4) / 50
    assert q4.values.min() >= -7 and q4.values.max() <= 7
    assert q4.scale.shape == (2, 48)  # one scale per block of 128 along K, per output channel
    assert q8.scale.shape == (48,)
    # Gemm with transB: weight [N, K], blocks along axis 1
    qt = quantize_weight(w.T.copy(), 4, axis=0, block_axis=1, block_size=128)
    assert qt.scale.shape == (48, 2)
    np.testing.assert_allclose(qt.dequantize(), q4.dequantize().T, rtol=1e-6)


def test_partial_last_block():
    w = np.random.default_rng(2).standard_normal((200, 8)).astype(np.float32)
    q = quantize_weight(w, 4, axis=1, block_axis=0, block_size=128)
    assert q.scale.shape == (2, 8) and q.dequantize().shape == w.shape


@pytest.fixture(scope="module")
def calibrated(unet_onnx):
    info = inspect_model(unet_onnx)
    stats = calibrate(info, CalibrationSettings(steps=10, timesteps=3, samples=8), NoiseSchedule())
    return info, stats


def test_qdq_graph_follows_the_allocation(calibrated, tmp_path):
    info, stats = calibrated
    theta = np.linspace(0.1, 1, len(info.layers))
    alloc = allocate(info.layers, AllocationSettings(budget=5.0, target="onnxruntime"), theta=theta)
    out = str(tmp_path / "q.onnx")
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    qm = quantize(info, alloc, ranges.amax, out, QuantizeSettings(target="onnxruntime"))
    counted, per_layer = count_weight_bits(out, info)
    assert counted == pytest.approx(alloc.achieved_bits, abs=1e-12)
    assert all(per_layer[n] == f.weight_bits for n, f in zip(alloc.layer_names, alloc.formats))
    m = onnx.load(out)
    assert m.opset_import[0].version == 21 and m.ir_version >= 10
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = onnx.numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and zp.item() == 0
            assert onnx.numpy_helper.to_array(inits[node.input[1]]).size == 1  # per-tensor activations
    n_int4 = sum(i.data_type == onnx.TensorProto.INT4 for i in m.graph.initializer)
    assert n_int4 == sum(f.weight_bits == 4 for f in alloc.formats)
    assert all(v["weight_sqnr_db"] > 10 for v in qm.layer_storage.values() if v["weight_sqnr_db"] is not None)
