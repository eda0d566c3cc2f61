"""lowrank: INT4 block weights plus a low-rank FP16 branch. The branch lowers a layer's output error at its
cost, the budget and the file count its factors at 16 bits, the graph passes TensorRT's rules and onnxruntime
runs it as the effective weight says."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mpq_export.core.model_info import ModelInfo, QuantLayer
from mpq_export.formats import LOW_RANK_LADDER, W4A16, QuantizeSettings
from mpq_export.formats.gptq import output_error, weight_matrix
from mpq_export.formats.lowrank import EXACT_SVD_MAX_DIM, LowRankFormat, low_rank_factors, weighted_svd
from mpq_export.stages.act_ranges import ActCalibSettings, ActivationRanges
from mpq_export.stages.allocate import AllocationSettings, allocate
from mpq_export.stages.quantize import count_weight_bits, quantize
from mpq_export.targets.trt_rules import check_model

K, N = 256, 192


def _layer():
    return QuantLayer(name="proj", node_name="proj", op_type="MatMul", weight_name="w", weight_shape=(K, N),
                      params=K * N, activation_input="x", output="y", weight_axis=1, reduction_axis=0)


def _problem(seed=0):
    """A weight with a few strong directions (what trained layers have) and correlated inputs."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((K, N)) * 0.02 + rng.standard_normal((K, 4)) @ rng.standard_normal((4, N)) * 0.2)
    mix = rng.standard_normal((K, K)) / np.sqrt(K)
    x = (rng.standard_normal((4096, K)) * np.linspace(0.1, 3, K)) @ mix
    h = (x.T @ x / np.trace(x.T @ x)).astype(np.float32)
    return w.astype(np.float32), x.astype(np.float32), h


def test_each_rank_lowers_the_output_error_and_costs_what_the_budget_counts():
    w, _, h = _problem()
    layer = _layer()
    wm = weight_matrix(w, layer)
    settings = QuantizeSettings()
    errors, bits = [], []
    for fmt in (W4A16, *LOW_RANK_LADDER):
        w_hat = fmt.effective_weight(layer, w, settings, h)
        errors.append(output_error(wm, weight_matrix(w_hat, layer), h) / output_error(wm, 0 * wm, h))
        bits.append(fmt.layer_bits(layer) / layer.params)
    assert bits == sorted(bits) and bits[0] == 4.0
    for fmt, b in zip(LOW_RANK_LADDER, bits[1:]):  # 4 + 16 r (K + N) / (K N), near the ladder's target
        r = fmt.rank(layer)
        per_rank = 16 * (K + N) / (K * N)
        assert b == pytest.approx(4 + r * per_rank) and abs(b - 4 - fmt.extra_bits) <= per_rank / 2 + 1e-9
    assert all(a > b for a, b in zip(errors, errors[1:])), errors  # every step of the ladder lowers the error
    assert errors[-1] < errors[0] / 3


def test_the_weighted_svd_beats_the_plain_one_on_the_output():
    w, _, h = _problem(1)
    wm = weight_matrix(w, _layer()).astype(np.float64)
    for rank in (2, 8):
        err = {}
        for name, hh in (("weighted", h), ("plain", None)):
            a, b = low_rank_factors(wm, rank, hh)
            err[name] = output_error(wm, (a @ b).T, h)
        assert err["weighted"] <= err["plain"] * 1.0001, err


def _write(tmp_path, fmt, target="tensorrt"):
    w, x, h = _problem(2)
    src = str(tmp_path / "mm.onnx")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    layer = _layer()
    info = ModelInfo(path=src, sample=None, timestep=None, conditioning=[], output="y", layers=[layer], opset=17,
                     sample_size=None)
    alloc = allocate([layer], fmt.bits_per_weight(layer) + 1e-9, target, AllocationSettings(formats=(fmt.name,)),
                     theta=np.ones(1))
    out = str(tmp_path / f"q-{target}.onnx")
    amax = float(np.abs(x).max())
    quantize(info, alloc, ActivationRanges({"x": amax}, {"x": amax}, ActCalibSettings()), out,
             QuantizeSettings(rounding="nearest"), target)
    return out, info, alloc, w, x


def test_wide_layers_take_a_randomized_svd_within_a_percent_of_the_exact_one():
    """Past EXACT_SVD_MAX_DIM the weighted SVD is randomized (Cholesky of H, a range finder with power
    iterations): on a flat spectrum, its worst case, its rank-r output error stays within 1% of the
    exact one's, and the same weight gives the same factors."""
    from mpq_export.formats.lowrank import _exact_weighted_svd

    rng = np.random.default_rng(0)
    n = k = EXACT_SVD_MAX_DIM + 64
    wm = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((2 * k, k))
    x[:, :8] *= 10.0  # outlier input channels, as transformers have
    h = (x.T @ x / len(x)).astype(np.float32)

    def err(svd):
        u, s, v = svd
        d = wm.astype(np.float64) - (u * s) @ v.T
        return float(np.einsum("nk,kl,nl->", d, h.astype(np.float64), d))

    rank = 24
    fast, exact = weighted_svd(wm, h, rank), _exact_weighted_svd(wm, h, rank)
    assert fast[0].shape == (n, rank) and fast[2].shape == (k, rank)
    assert err(exact) <= err(fast) < 1.01 * err(exact)
    assert np.array_equal(weighted_svd(wm, h, rank)[2], fast[2])


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_the_file_holds_the_branch_counts_its_factors_and_runs(tmp_path, target):
    import onnxruntime as ort

    fmt = LOW_RANK_LADDER[-1]
    out, info, alloc, w, x = _write(tmp_path, fmt, target)
    counted, per_layer = count_weight_bits(out, info)
    assert counted == pytest.approx(alloc.achieved_bits) and counted > 4.5  # factors at 16 bits each
    m = onnx.load(out)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MatMul") == 3 and "Add" in ops
    if target == "tensorrt":
        assert check_model(out) == []
        factors = [i for i in m.graph.initializer if i.name.startswith("proj.lowrank_")]
        assert {i.data_type for i in factors} == {TensorProto.FLOAT16}
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": x[:64]})[0]
    w_hat = fmt.effective_weight(info.layers[0], w, QuantizeSettings(rounding="nearest"), None)
    ref = x[:64] @ w_hat
    assert np.abs(got - ref).max() < 2e-2 * np.abs(ref).max()
    plain = x[:64] @ W4A16.effective_weight(info.layers[0], w, QuantizeSettings(rounding="nearest"), None)
    exact = x[:64] @ w
    assert ((got - exact) ** 2).sum() < 0.6 * ((plain - exact) ** 2).sum()  # the branch pays in the graph too


def test_uniform_lands_on_the_budget_with_one_branch_size():
    layers = [QuantLayer(name=f"l{i}", node_name=f"l{i}", op_type="MatMul", weight_name=f"w{i}", weight_shape=(k, k),
                         params=k * k, activation_input="x", output=f"y{i}", weight_axis=1, reduction_axis=0)
              for i, k in enumerate((64, 128, 256, 512))]
    for budget in (4.3, 4.6, 5.5):
        a = allocate(layers, budget, "tensorrt", AllocationSettings(method="uniform"))
        assert budget - 0.05 < a.achieved_bits <= budget + 1e-9
        assert all(isinstance(f, LowRankFormat) for f in a.formats[1:])
