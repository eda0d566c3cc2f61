import itertools

import numpy as np
import pytest

from mpq_export.stages.allocate import AllocationSettings, allocate, candidates, for_time_only_layers, solve_01
from mpq_export.util.errors import MPQError
from mpq_export.core.model_info import QuantLayer


def _layers(params, ops=None):
    ops = ops or ["Conv"] * len(params)
    return [QuantLayer(name=f"l{i}", node_name=f"n{i}", op_type=op, weight_name=f"w{i}", weight_shape=(p,), params=p,
                       activation_input="x", output=f"y{i}", weight_axis=0, reduction_axis=-1)
            for i, (p, op) in enumerate(zip(params, ops))]


def _brute(values, costs, cap, maximize):
    best, arg = None, None
    for combo in itertools.product(*[range(len(v)) for v in values]):
        c = sum(costs[i][f] for i, f in enumerate(combo))
        if c > cap:
            continue
        v = sum(values[i][f] for i, f in enumerate(combo))
        if best is None or (v > best if maximize else v < best):
            best, arg = v, combo
    return best, arg


@pytest.mark.parametrize("seed", range(6))
def test_highs_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 8
    values = [sorted(rng.uniform(0, 1, 3)) for _ in range(n)]
    costs = [[int(p * b) for b in (4, 8, 16)] for p in rng.integers(10, 1000, n)]
    cap = int(sum(c[0] for c in costs) + rng.uniform(0.2, 0.8) * sum(c[2] - c[0] for c in costs))
    for maximize in (True, False):
        chosen, obj, status = solve_01(values, costs, cap, maximize)
        want, _ = _brute(values, costs, cap, maximize)
        assert status == "Optimal"
        assert obj == pytest.approx(want, rel=1e-9)
        assert sum(costs[i][f] for i, f in enumerate(chosen)) <= cap


def test_orm_allocation_is_optimal_and_within_budget():
    params = [100, 2000, 50, 800, 300, 1200]
    layers = _layers(params)
    theta = np.array([0.3, 0.9, 0.1, 0.5, 0.8, 0.2])
    for budget in (4.5, 5.0, 6.0, 7.5):
        a = allocate(layers, budget, "onnxruntime", AllocationSettings(min8=()), theta=theta)
        assert a.achieved_bits <= budget + 1e-12
        values = [[b * t for b in (4, 8)] for t in theta]
        costs = [[p * b for b in (4, 8)] for p in params]
        want, _ = _brute(values, costs, int(np.floor(budget * sum(params))), True)
        assert a.objective == pytest.approx(want)


def test_infeasible_budget_states_the_reachable_range():
    layers = _layers([100, 100])
    with pytest.raises(MPQError, match=r"4\.000 to 8\.000"):
        allocate(layers, 3.0, "onnxruntime", AllocationSettings(min8=()), theta=np.ones(2))
    with pytest.raises(MPQError, match=r"4\.000 to 16\.000"):
        allocate(layers, 17.0, "onnxruntime", AllocationSettings(bits=(4, 8, 16), min8=()), theta=np.ones(2))


def test_pins_are_constraints():
    layers = _layers([1000, 10, 10], ["Conv", "MatMul", "Gemm"])
    layers[0] = QuantLayer(**{**layers[0].__dict__, "name": "conv_in"})
    s = AllocationSettings(keep_fp16=(r"^l2$",), bits=(4, 8), min8=(r"^conv_in$",), default_pins=False)
    cands, pins = candidates(layers, "onnxruntime", s)
    assert [f.name for f in cands[0]] == ["w8a8"] and [f.name for f in cands[2]] == ["fp16"]
    assert [f.name for f in cands[1]] == ["w4a16", "w8a8", "w8a8-sq"]  # too narrow for a low-rank branch
    assert set(pins) == {"conv_in", "l2"}
    with pytest.raises(MPQError, match="outside"):  # conv_in alone forces ~8 bits
        allocate(layers, 4.5, "onnxruntime", s, theta=np.ones(3))


def test_uniform_random_and_smallest_first_baselines():
    params = [100, 2000, 50, 800, 300, 1200]
    layers = _layers(params)
    u = allocate(layers, 6.0, "onnxruntime", AllocationSettings(method="uniform", min8=()))
    assert {f.weight_bits for f in u.formats} == {4}
    u8 = allocate(layers, 8.0, "onnxruntime", AllocationSettings(method="uniform", min8=()))
    assert {f.weight_bits for f in u8.formats} == {8}
    draws = [allocate(layers, 6.0, "onnxruntime", AllocationSettings(method="random", seed=s, min8=())) for s in range(8)]
    assert all(d.achieved_bits <= 6.0 for d in draws)
    assert len({tuple(f.name for f in d.formats) for d in draws}) > 1
    sf = allocate(layers, 5.0, "onnxruntime", AllocationSettings(method="smallest-first", min8=()))
    eight = [p for p, f in zip(params, sf.formats) if f.weight_bits == 8]
    four = [p for p, f in zip(params, sf.formats) if f.weight_bits == 4]
    assert sf.achieved_bits <= 5.0 and max(eight) < min(four)


def test_formats_follow_the_design_table():
    layers = _layers([64, 64, 64, 64], ["Conv", "ConvTranspose", "MatMul", "Gemm"])
    a = allocate(layers, 4.0, "onnxruntime", AllocationSettings(min8=()), theta=np.ones(4))
    assert [f.name for f in a.formats] == ["w4a8", "w4a8", "w4a16", "w4a16"]
    # TensorRT stores no INT4 convolution: its convs' cheapest format is w8a8, its GEMMs' w4a16
    t = allocate(layers, 6.0, "tensorrt", AllocationSettings(min8=()), theta=np.ones(4))
    assert [f.name for f in t.formats] == ["w8a8", "w8a8", "w4a16", "w4a16"]
    assert t.achieved_bits == pytest.approx(6.0)


def test_time_only_layers_lose_the_formats_that_need_per_sample_inputs():
    """A timestep embedding's linear (one input per step) keeps plain w8a8 but not the smoothed one; the other
    GEMMs keep both."""
    layers = _layers([64, 64], ["MatMul", "MatMul"])
    cands = candidates(layers, "tensorrt", AllocationSettings(min8=()))
    assert all("w8a8-sq" in [f.name for f in c] for c in cands[0])
    formats, pins = for_time_only_layers(cands, layers, {"l0"})
    assert "w8a8-sq" not in [f.name for f in formats[0]] and "w8a8" in [f.name for f in formats[0]]
    assert formats[1] == cands[0][1] and pins == cands[1]


def test_tensorrt_budget_below_its_floor_says_why_and_what_to_do():
    layers = _layers([900, 100], ["Conv", "MatMul"])
    with pytest.raises(MPQError, match=r"7\.600 to 8\.000.*no INT4 convolution.*--target onnxruntime.*4\.000"):
        allocate(layers, 4.5, "tensorrt", AllocationSettings(min8=()), theta=np.ones(2))
    with pytest.raises(MPQError, match=r"--bits 4 leaves Conv layer l0 without a format.*no INT4 convolution"):
        candidates(layers, "tensorrt", AllocationSettings(bits=(4,), min8=()))
    with pytest.raises(MPQError, match="finite"):
        allocate(layers, float("nan"), "tensorrt", AllocationSettings(min8=()), theta=np.ones(2))


def test_sensitivity_objective_is_minimised():
    layers = _layers([100, 100, 100])
    sens = {"l0": {"w4a8": 10.0, "w8a8": 0.0}, "l1": {"w4a8": 1.0, "w8a8": 0.0}, "l2": {"w4a8": 5.0, "w8a8": 0.0}}
    a = allocate(layers, 16 / 3, "onnxruntime", AllocationSettings(min8=()), sensitivity=sens)
    assert [f.weight_bits for f in a.formats] == [8, 4, 4]
    assert a.scorer == "sensitivity"
