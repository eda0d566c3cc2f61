"""allocate stage: one format per layer from an exact 0/1 program solved by HiGHS.

Binary z[i, f]: layer i takes candidate format f. sum_f z[i, f] = 1 for every layer;
sum_{i,f} z[i, f] * bits_f * P_i <= B * sum_i P_i (B = --budget, average weight bits);
the objective is the scorer's: maximise sum z * bits_f * theta_i (ORM, the paper's), or minimise
sum z * s[i, f] (measured sensitivity). Pins are constraints (a layer's candidate set shrinks).
Baselines (uniform, random, smallest-first) produce the same BitAllocation type.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from mpq_export.errors import MPQError, require_int, require_number
from mpq_export.inspect import QuantLayer
from mpq_export.targets import DEFAULT_TARGET, FP16, WHY_NOT, Format, check_target, format_for, formats_for

METHODS = ("mpq", "uniform", "random", "smallest-first")
# Layers the literature keeps at >= 8 bits: the first and last convs and the time embedding.
DEFAULT_MIN8 = (r"^conv_in$", r"^conv_out$", r"^time_embedding\.")
# conv_in reads the network input, whose noise near t = 0 (std sqrt(1 - alpha_bar_t), 0.006 at t = 0 for a
# cosine schedule) is far below the INT8 step of the one static scale that must also cover x_T (|x| ~ 5):
# quantizing that input erases what the model must predict at the last steps (measured on the bundled
# model: noise SQNR at t = 0 from 0.2 dB with conv_in at W8A8). Its weights are a few hundred parameters.
# conv_out writes the noise prediction itself: nothing after it dilutes its error, and its input (a SiLU
# output, about [-0.28, 7.5]) wastes half of a symmetric INT8 range. Keeping it FP16 raised W8A8's
# final-sample PSNR by 3.2 +- 0.5 dB (digits) and 4.5 +- 0.5 dB (patches), paired over 32 seeds, for
# 0.002-0.004 more average bits (docs/quality.md).
DEFAULT_KEEP_FP16 = (r"^conv_in$", r"^conv_out$")


@dataclass(frozen=True)
class AllocationSettings:
    budget: float
    bits: tuple[int, ...] = (4, 8)
    method: str = "mpq"
    seed: int = 0
    keep_fp16: tuple[str, ...] = DEFAULT_KEEP_FP16  # regexes (re.search on the layer name) pinned to FP16
    min8: tuple[str, ...] = DEFAULT_MIN8  # regexes held at >= 8 bits
    target: str = DEFAULT_TARGET  # whose format table the candidates come from (targets.py)

    def __post_init__(self):
        require_number(self.budget, "--budget")
        check_target(self.target)
        if self.method not in METHODS:
            raise MPQError(f"--allocation must be one of {', '.join(METHODS)}, got '{self.method}'")
        bad = [b for b in self.bits if b not in (4, 8, 16)]
        if bad or not self.bits:
            raise MPQError(f"--bits takes a comma list of 4, 8, 16 (got {','.join(map(str, self.bits)) or 'nothing'})")
        for option, patterns in (("--keep-fp16", self.keep_fp16), ("--min8", self.min8)):
            for rx in patterns:
                try:
                    re.compile(rx)
                except re.error as e:
                    raise MPQError(f"{option} '{rx}' is not a regular expression ({e}); escape special characters "
                                   f"with a backslash, e.g. '\\.' for a dot") from None
        require_int(self.seed, "--seed", 0)  # numpy's generators take no negative seeds


@dataclass(frozen=True)
class AllocationSummary:
    """allocation.json, and the report's `allocation`."""
    budget: float
    achieved_bits: float
    method: str
    scorer: str
    objective: float | None
    solver_status: str
    layers: dict[str, str]  # layer -> format name
    pins: dict[str, str]  # layer -> why its candidates were restricted


@dataclass
class BitAllocation:
    layer_names: list[str]
    formats: list[Format]
    params: list[int]
    budget: float
    method: str
    scorer: str  # what the objective was built from: orm | sensitivity | trajectory | none
    objective: float | None = None
    solver_status: str = ""
    seconds: float = 0.0
    pins: dict[str, str] = field(default_factory=dict)  # layer -> why its candidates were restricted

    @property
    def achieved_bits(self) -> float:
        p = np.asarray(self.params, dtype=np.float64)
        b = np.asarray([f.weight_bits for f in self.formats], dtype=np.float64)
        return float((p * b).sum() / p.sum())

    @property
    def within_budget(self) -> bool:
        return sum(p * f.weight_bits for p, f in zip(self.params, self.formats)) <= self.budget * sum(self.params) + 1e-9

    def format_of(self, name: str) -> Format:
        return self.formats[self.layer_names.index(name)]

    def summary(self) -> AllocationSummary:
        return AllocationSummary(budget=self.budget, achieved_bits=self.achieved_bits, method=self.method,
                                 scorer=self.scorer, objective=self.objective, solver_status=self.solver_status,
                                 layers={n: f.name for n, f in zip(self.layer_names, self.formats)}, pins=dict(self.pins))

    def to_json(self) -> dict:
        return asdict(self.summary())


def candidates(layers: list[QuantLayer], settings: AllocationSettings) -> tuple[list[list[Format]], dict[str, str]]:
    """Legal formats per layer on the settings' target after pins (smallest bits first)."""
    out, pins = [], {}
    for l in layers:
        if any(re.search(rx, l.name) for rx in settings.keep_fp16):
            out.append([FP16])
            pins[l.name] = "fp16 (pinned)"
            continue
        bits = sorted(set(settings.bits))
        if any(re.search(rx, l.name) for rx in settings.min8):
            bits = [b for b in bits if b >= 8] or [8]
            pins[l.name] = ">= 8 bits (sensitive layer)"
        fmts = [f for f in (format_for(l.op_type, b, settings.target) for b in bits) if f is not None]
        if not fmts:
            why = "; ".join(sorted({WHY_NOT[(settings.target, l.op_type, b)] for b in bits
                                    if (settings.target, l.op_type, b) in WHY_NOT}))
            have = ",".join(str(f.weight_bits) for f in formats_for(l.op_type, settings.target))
            raise MPQError(f"--bits {','.join(map(str, bits))} leaves {l.op_type} layer {l.name} without a format on the "
                           f"{settings.target} target{f' ({why})' if why else ''}; it stores {have} bits: add one of "
                           f"them to --bits" + (" or use --target onnxruntime" if settings.target == "tensorrt" else ""))
        out.append(fmts)
    return out, pins


def reachable_range(layers: list[QuantLayer], cands: list[list[Format]]) -> tuple[float, float]:
    p = np.array([l.params for l in layers], dtype=np.float64)
    lo = np.array([min(f.weight_bits for f in c) for c in cands], dtype=np.float64)
    hi = np.array([max(f.weight_bits for f in c) for c in cands], dtype=np.float64)
    return float((p * lo).sum() / p.sum()), float((p * hi).sum() / p.sum())


def check_budget(layers: list[QuantLayer], settings: AllocationSettings, budget: float,
                 cands: list[list[Format]] | None = None) -> None:
    """One-line error when no allocation can meet `budget`, stating the reachable range (and why, per target)."""
    if not np.isfinite(budget):
        raise MPQError(f"--budget must be a finite number of average weight bits, got {budget:g}")
    cands = cands if cands is not None else candidates(layers, settings)[0]
    if all(f.weight_bits >= 16 for c in cands for f in c):
        raise MPQError("every layer is held FP16 (--keep-fp16 patterns, --bits 16 or pins): there is nothing to "
                       "quantize; narrow the --keep-fp16 patterns or add 4 or 8 to --bits")
    lo, hi = reachable_range(layers, cands)
    if budget < lo - 1e-9 or budget > hi + 1e-9:
        bits_txt = ",".join(map(str, sorted(set(settings.bits))))
        why = ""
        if budget < lo and settings.target == "tensorrt" and 4 in settings.bits:
            from dataclasses import replace

            ort_lo, _ = reachable_range(layers, candidates(layers, replace(settings, target="onnxruntime"))[0])
            if ort_lo < lo - 1e-9:
                why = (f" (TensorRT has no INT4 convolution, so convolutions store at least 8 bits; "
                       f"--target onnxruntime stores 4-bit convolutions and reaches down to {ort_lo:.3f})")
        raise MPQError(f"--budget {budget:g} is outside what this model can reach on the {settings.target} target with "
                       f"--bits {bits_txt} and its pins: {lo:.3f} to {hi:.3f} average weight bits{why}; "
                       f"pick a budget in that range")


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS prints a banner on construction even with output_flag off."""
    try:
        fd = os.dup(1)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(fd, 1)
            os.close(fd)


def solve_01(values: list[list[float]], costs: list[list[int]], capacity: int, maximize: bool,
             time_limit_s: float = 120.0) -> tuple[list[int], float, str]:
    """Exact multiple-choice knapsack: pick one option per row, sum of costs <= capacity.

    Returns (chosen option per row, objective, HiGHS model status). Objective values are
    rescaled to max |v| = 1 and the relative MIP gap set to 0: theta = exp(-beta gamma) can span
    orders of magnitude and a default gap stops early with budget left unused (docs/design.md).
    """
    import highspy

    flat_v = [v for row in values for v in row]
    scale = max(max(abs(v) for v in flat_v), 1e-300)
    with _quiet_stdout():
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-12)
    h.setOptionValue("time_limit", float(time_limit_s))
    lp = highspy.HighsLp()
    ncol = len(flat_v)
    nrow = len(values) + 1
    lp.num_col_, lp.num_row_ = ncol, nrow
    lp.col_cost_ = np.array(flat_v, dtype=np.float64) / scale
    lp.col_lower_ = np.zeros(ncol)
    lp.col_upper_ = np.ones(ncol)
    lp.row_lower_ = np.array([1.0] * len(values) + [-highspy.kHighsInf])
    lp.row_upper_ = np.array([1.0] * len(values) + [float(capacity)])
    starts, index, vals = [], [], []
    col = 0
    for i, row in enumerate(values):
        for f in range(len(row)):
            starts.append(len(index))
            index += [i, len(values)]
            vals += [1.0, float(costs[i][f])]
            col += 1
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.array(starts + [len(index)], dtype=np.int32)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(vals, dtype=np.float64)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * ncol
    lp.sense_ = highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize
    h.passModel(lp)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        raise MPQError(f"the HiGHS solver did not find an optimal allocation ({status}); try a larger budget")
    x = np.asarray(h.getSolution().col_value)
    chosen, col = [], 0
    for row in values:
        seg = x[col: col + len(row)]
        chosen.append(int(np.argmax(seg)))
        col += len(row)
    obj = sum(values[i][c] for i, c in enumerate(chosen))
    return chosen, float(obj), status


def _greedy_fill(order: list[int], cands: list[list[Format]], params: list[int], capacity: int) -> list[int]:
    """Start every layer at its cheapest format; in `order`, raise each to the largest that still fits."""
    choice = [0] * len(cands)
    used = sum(params[i] * cands[i][0].weight_bits for i in range(len(cands)))
    for i in order:
        for f in range(len(cands[i]) - 1, 0, -1):
            extra = params[i] * (cands[i][f].weight_bits - cands[i][choice[i]].weight_bits)
            if used + extra <= capacity:
                used += extra
                choice[i] = f
                break
    return choice


def allocate(layers: list[QuantLayer], settings: AllocationSettings, theta: np.ndarray | None = None,
             sensitivity: dict[str, dict[str, float]] | None = None) -> BitAllocation:
    """Choose a format per layer. `theta` (ORM importance, maximised) or `sensitivity`
    (layer -> format name -> measured error, minimised) drives the 'mpq' method."""
    t0 = time.perf_counter()
    cands, pins = candidates(layers, settings)
    check_budget(layers, settings, settings.budget, cands)
    params = [l.params for l in layers]
    capacity = int(np.floor(settings.budget * sum(params) + 1e-6))
    names = [l.name for l in layers]
    method = settings.method
    objective, status, scorer = None, "", "none"
    if method == "mpq":
        if sensitivity is not None:
            scorer = "sensitivity"
            values = [[float(sensitivity[l.name][f.name]) for f in c] for l, c in zip(layers, cands)]
            maximize = False
        elif theta is not None:
            scorer = "orm"
            values = [[f.weight_bits * float(theta[i]) for f in c] for i, c in enumerate(cands)]
            maximize = True
        else:
            raise MPQError("internal: the mpq allocation needs importance scores")
        costs = [[l.params * f.weight_bits for f in c] for l, c in zip(layers, cands)]
        choice, objective, status = solve_01(values, costs, capacity, maximize)
    elif method == "uniform":
        # every unpinned layer at the largest candidate <= budget; pins keep their pin
        target = max([b for b in settings.bits if b <= settings.budget + 1e-9] or [min(settings.bits)])
        choice = []
        for c in cands:
            fits = [i for i, f in enumerate(c) if f.weight_bits <= target]
            choice.append(fits[-1] if fits else 0)
    elif method == "random":
        order = list(np.random.default_rng(settings.seed).permutation(len(layers)))
        choice = _greedy_fill(order, cands, params, capacity)
    else:  # smallest-first
        order = sorted(range(len(layers)), key=lambda i: params[i])
        choice = _greedy_fill(order, cands, params, capacity)
    alloc = BitAllocation(layer_names=names, formats=[c[i] for c, i in zip(cands, choice)], params=params,
                          budget=settings.budget, method=method, scorer=scorer, objective=objective,
                          solver_status=status, seconds=time.perf_counter() - t0, pins=pins)
    return alloc
