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

from mpq_export.core.choices import Scorer
from mpq_export.core.model_info import QuantLayer
from mpq_export.formats import FORMAT_NAMES, FORMATS, FP16, Format
from mpq_export.targets import Target, all_targets, get_target
from mpq_export.util.errors import MPQError, comma_list, require_int, require_number

METHODS = ("mpq", "uniform", "random", "smallest-first")
# Layers the literature keeps at >= 8 bits: the first and last convs and the time embedding; in the
# transformer denoisers their counterparts, the patch embedding (pos_embed.proj; Flux's x_embedder), the
# output projection (proj_out) and the timestep embedders (SD3's and Flux's time_text_embed, Flux-dev's
# guidance embedder, PixArt's adaln_single.emb). These hold
# a small share of a DiT's weights, so --budget 4.5 stays reachable; the adaLN modulation linears (a
# third of an MMDiT's weights) are left to the allocation.
DEFAULT_MIN8 = (r"^conv_in$", r"^conv_out$", r"^time_embedding\.", r"^pos_embed\.proj$", r"^proj_out$",
                r"^time_text_embed\.timestep_embedder\.", r"^adaln_single\.emb\.timestep_embedder\.",
                r"^x_embedder$", r"^time_text_embed\.guidance_embedder\.")
# conv_in reads the network input, whose noise near t = 0 is far below the INT8 step of the one static
# scale that must also cover x_T: quantizing that input erases what the model must predict at the last
# steps. conv_out writes the noise prediction itself: nothing after it dilutes its error, and its input
# (a SiLU output) wastes half of a symmetric INT8 range. Both hold a few thousand parameters; the gain of
# keeping them FP16 is measured in docs/quality.md ("Default pins").
DEFAULT_KEEP_FP16 = (r"^conv_in$", r"^conv_out$", r"^pos_embed\.proj$", r"^proj_out$", r"^x_embedder$")


@dataclass(frozen=True)
class AllocationSettings:
    """How formats are chosen. The budget and the target are the run's (allocate's arguments), not settings."""
    bits: tuple[int, ...] = (4, 8)
    method: str = "mpq"
    seed: int | None = None  # --allocation random only (None: 0)
    keep_fp16: tuple[str, ...] = ()  # regexes (re.search on the layer name) pinned to FP16, beside the defaults
    min8: tuple[str, ...] | None = None  # regexes held at >= 8 bits; None: DEFAULT_MIN8 (with default_pins)
    default_pins: bool = True  # DEFAULT_KEEP_FP16 and DEFAULT_MIN8 apply
    # format names the allocation may choose (--formats); None: every format of the target with --bits
    # widths. Pins still apply: a layer pinned to FP16 stays FP16 whatever this says.
    formats: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise MPQError(f"--allocation must be one of {', '.join(METHODS)}, got '{self.method}'")
        if self.formats is not None:  # one name or a comma list, as the CLI takes it (frozen: set once)
            object.__setattr__(self, "formats", comma_list(self.formats))
            bad = [n for n in self.formats if n not in FORMAT_NAMES]
            if bad or not self.formats:
                raise MPQError(f"--formats takes a comma list of {', '.join(FORMAT_NAMES)} (got "
                               f"{','.join(self.formats) or 'nothing'})")
            if not any(f.quantized for f in FORMATS if f.name in self.formats):
                raise MPQError("--formats lists no quantized format: nothing would be quantized; add one, "
                               "e.g. --formats fp16,w8a8")
        bits = comma_list(self.bits)
        try:
            bits = tuple(int(b) if str(b).strip().isdigit() else b for b in bits)
        except ValueError:
            pass
        if not bits or any(b not in (4, 8, 16) or isinstance(b, bool) for b in bits):
            raise MPQError(f"--bits takes a comma list of 4, 8, 16 (got {','.join(map(str, bits)) or 'nothing'})")
        object.__setattr__(self, "bits", bits)
        for option, patterns in (("--keep-fp16", self.keep_fp16), ("--min8", self.min8 or ())):
            for rx in patterns:
                try:
                    re.compile(rx)
                except (re.error, TypeError) as e:
                    raise MPQError(f"{option} '{rx}' is not a regular expression ({e}); escape special characters "
                                   f"with a backslash, e.g. '\\.' for a dot") from None
        if self.seed is not None:
            if self.method != "random":  # it would be ignored, and the user believes it applied
                raise MPQError(f"--seed is the seed of --allocation random (this run: --allocation {self.method}); "
                               f"add --allocation random or drop --seed")
            require_int(self.seed, "--seed", 0)  # numpy's generators take no negative seeds

    @property
    def fp16_patterns(self) -> tuple[str, ...]:
        return tuple(self.keep_fp16) + (DEFAULT_KEEP_FP16 if self.default_pins else ())

    @property
    def min8_patterns(self) -> tuple[str, ...]:
        if self.min8 is not None:
            return tuple(self.min8)
        return DEFAULT_MIN8 if self.default_pins else ()


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
    # layers offered two formats of one width (w8a8 and fp8): format -> the error term that chose between
    # them (format_error.py; the measured sensitivity when --importance sensitivity)
    equal_bit_choices: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class BitAllocation:
    layer_names: list[str]
    formats: list[Format]
    params: list[int]
    budget: float
    method: str
    scorer: Scorer  # what the objective was built from (Scorer.NONE for the baselines)
    objective: float | None = None
    solver_status: str = ""
    seconds: float = 0.0
    pins: dict[str, str] = field(default_factory=dict)  # layer -> why its candidates were restricted
    equal_bit_choices: dict[str, dict[str, float]] = field(default_factory=dict)  # see AllocationSummary
    layer_bits: list[int] = field(default_factory=list)  # bits each layer stores in its format (Format.layer_bits)

    def __post_init__(self):
        if not self.layer_bits:  # made by hand from formats of whole bits per weight
            self.layer_bits = [p * f.weight_bits for p, f in zip(self.params, self.formats)]

    @property
    def achieved_bits(self) -> float:
        return sum(self.layer_bits) / sum(self.params)

    @property
    def within_budget(self) -> bool:
        return sum(self.layer_bits) <= self.budget * sum(self.params) + 1e-9

    def format_of(self, name: str) -> Format:
        return self.formats[self.layer_names.index(name)]

    def summary(self) -> AllocationSummary:
        return AllocationSummary(budget=self.budget, achieved_bits=self.achieved_bits, method=self.method,
                                 scorer=self.scorer, objective=self.objective, solver_status=self.solver_status,
                                 layers={n: f.name for n, f in zip(self.layer_names, self.formats)}, pins=dict(self.pins),
                                 equal_bit_choices={k: dict(v) for k, v in self.equal_bit_choices.items()})

    def to_json(self) -> dict:
        return asdict(self.summary())


def unmatched_patterns(layers: list[QuantLayer], settings: AllocationSettings) -> list[str]:
    """The user's --keep-fp16 / --min8 patterns that match no layer (a typo pins nothing, silently)."""
    given = [("--keep-fp16", rx) for rx in settings.keep_fp16] + [("--min8", rx) for rx in settings.min8 or ()]
    return [f"{option} '{rx}'" for option, rx in given if not any(re.search(rx, l.name) for l in layers)]


def candidates(layers: list[QuantLayer], target: str | Target,
               settings: AllocationSettings = AllocationSettings()) -> tuple[list[list[Format]], dict[str, str]]:
    """Legal formats per layer on `target` after pins (smallest bits first)."""
    target = get_target(target)
    out, pins = [], {}
    for l in layers:
        if any(re.search(rx, l.name) for rx in settings.fp16_patterns):
            out.append([FP16])
            pins[l.name] = "fp16 (pinned)"
            continue
        bits = sorted(set(settings.bits))
        if any(re.search(rx, l.name) for rx in settings.min8_patterns):
            bits = [b for b in bits if b >= 8] or [8]
            pins[l.name] = ">= 8 bits (sensitive layer)"
        fmts = [f for f in target.formats_for(l.op_type) if f.weight_bits in bits and f.applies_to(l)
                and (settings.formats is None or f.name in settings.formats)]
        fmts = list({f.realisation(l): f for f in reversed(fmts)}.values())[::-1]  # the first of equal ones
        if not fmts and settings.formats is not None:
            raise MPQError(f"--formats {','.join(settings.formats)} with --bits {','.join(map(str, bits))} leaves "
                           f"{l.op_type} layer {l.name} without a format on the {target.name} target (it stores "
                           f"{', '.join(f.name for f in target.formats_for(l.op_type))}); add one of them to --formats")
        if not fmts:
            why = "; ".join(sorted({target.why_not[(l.op_type, b)] for b in bits if (l.op_type, b) in target.why_not}))
            have = ",".join(str(b) for b in sorted({f.weight_bits for f in target.formats_for(l.op_type)}))
            others = [t.name for t in all_targets() if t.name != target.name and any(t.format_for(l.op_type, b) for b in bits)]
            raise MPQError(f"--bits {','.join(map(str, bits))} leaves {l.op_type} layer {l.name} without a format on the "
                           f"{target.name} target{f' ({why})' if why else ''}; it stores {have} bits: add one of "
                           f"them to --bits" + (f" or use --target {others[0]}" if others else ""))
        out.append(fmts)
    return out, pins


def for_time_only_layers(cands: tuple[list[list[Format]], dict[str, str]], layers: list[QuantLayer],
                         time_only: set[str]) -> tuple[list[list[Format]], dict[str, str]]:
    """The candidates without the formats that need per-sample variation in a layer's input
    (Format.per_sample_inputs_only) on the layers calibration found time-only (ORM's excluded layers)."""
    formats = [[f for f in c if not (l.name in time_only and f.per_sample_inputs_only)] or c
               for l, c in zip(layers, cands[0])]
    return formats, cands[1]


def equal_bit_alternatives(layers: list[QuantLayer], cands: list[list[Format]]) -> dict[str, list[Format]]:
    """Layers whose candidates hold two formats that store the same bits (w8a8 and fp8): layer -> those formats."""
    out = {}
    for l, c in zip(layers, cands):
        tied = [f for f in c if f.quantized and sum(g.layer_bits(l) == f.layer_bits(l) for g in c) > 1]
        if tied:
            out[l.name] = tied
    return out


def one_per_width(layers: list[QuantLayer], cands: list[list[Format]],
                  format_error: dict[str, dict[str, float]] | None) -> list[list[Format]]:
    """Each layer's candidates with one format per stored width: of formats of equal bits, the one of least
    `format_error` (layer -> format -> error), else the first in the target's table.

    Formats of equal width cost the same bits and have the same ORM value (bits x importance), so choosing
    among them per layer beforehand gives exactly the 0/1 program's optimum with the error as tie-break."""
    out = []
    for l, c in zip(layers, cands):
        keep: dict[int, Format] = {}
        for f in c:
            best = keep.get(f.layer_bits(l))
            if best is None:
                keep[f.layer_bits(l)] = f
            elif format_error is not None and f.quantized and \
                    format_error[l.name][f.name] < format_error[l.name][best.name]:
                keep[f.layer_bits(l)] = f
        out.append([f for f in c if keep[f.layer_bits(l)] is f])
    return out


def reachable_range(layers: list[QuantLayer], cands: list[list[Format]]) -> tuple[float, float]:
    total = sum(l.params for l in layers)
    return (sum(min(f.layer_bits(l) for f in c) for l, c in zip(layers, cands)) / total,
            sum(max(f.layer_bits(l) for f in c) for l, c in zip(layers, cands)) / total)


def budget_value(budget) -> float:
    """A budget as a finite number (text such as "7.5" too, as the CLI gives it); else the one-line error.
    The one place a budget is checked as a number: the configuration and check_budget ask it."""
    if isinstance(budget, str):
        try:
            budget = float(budget)
        except ValueError:
            pass
    return require_number(budget, "--budget")


def check_budget(layers: list[QuantLayer], budget: float, target: str | Target,
                 settings: AllocationSettings = AllocationSettings(), cands: list[list[Format]] | None = None) -> None:
    """One-line error when no allocation can meet `budget`, stating the reachable range (and, below the
    floor, why: the formats the target lacks, and which target reaches lower)."""
    target = get_target(target)
    budget = budget_value(budget)
    cands = cands if cands is not None else candidates(layers, target, settings)[0]
    if all(f.weight_bits >= 16 for c in cands for f in c):
        raise MPQError("every layer is held FP16 (--keep-fp16 patterns, --bits 16 or pins): there is nothing to "
                       "quantize; narrow the --keep-fp16 patterns or add 4 or 8 to --bits")
    lo, hi = reachable_range(layers, cands)
    if settings.method == "uniform":
        # the budget names one width for every unpinned layer; pins keep theirs and may lift the average above
        # it (the report says so), so the floor is the narrowest format offered, not the model's average
        lo = min(f.weight_bits for c in cands for f in c)
    # the budget is an upper bound: above the ceiling every layer takes its largest format (a budget that
    # rounds to a one-point range, 8.004 for 8.00399, stays usable); above 16 no format stores that much
    if budget < lo - 1e-9 or budget > max(hi, 16.0) + 1e-9:
        chosen = f"--bits {','.join(map(str, sorted(set(settings.bits))))}"
        if settings.formats is not None:
            chosen += f", --formats {','.join(settings.formats)}"
        why = ""
        if budget < lo:
            why = _lower_elsewhere(layers, target, settings, lo)
        raise MPQError(f"--budget {budget:g} is outside what this model can reach on the {target.name} target with "
                       f"{chosen} and its pins: {_shown_range(lo, hi)} average weight bits{why}; "
                       f"pick a budget in that range")
    top = [[f for f in c if f.layer_bits(l) == max(g.layer_bits(l) for g in c)] for l, c in zip(layers, cands)]
    if budget >= hi - 1e-9 and not any(f.quantized for c in top for f in c):
        # the ceiling keeps every layer at its largest format, FP16 for all: nothing would be quantized
        raise MPQError(f"at --budget {budget:g} every layer stays FP16 (the ceiling of --bits "
                       f"{','.join(map(str, sorted(set(settings.bits))))} on this model): there is nothing to quantize; "
                       f"pick a budget below {hi:.3f}")


def _shown_range(lo: float, hi: float) -> str:
    """'lo to hi' rounded inward (floor up, ceiling down), so that both numbers shown are budgets that work."""
    import math

    for digits in (3, 6):
        f = 10 ** digits
        a, b = math.ceil(lo * f - 1e-6) / f, math.floor(hi * f + 1e-6) / f
        if a <= b:
            return f"{a:.{digits}f} to {b:.{digits}f}"
    return f"{lo!r} to {hi!r}"


def _lower_elsewhere(layers: list[QuantLayer], target: Target, settings: AllocationSettings, lo: float) -> str:
    """' (why the floor is here; --target X reaches down to Y)' when another target stores what this one lacks."""
    missing = sorted({target.why_not[(l.op_type, b)] for l in layers for b in settings.bits
                      if (l.op_type, b) in target.why_not})
    for other in all_targets():
        if other.name == target.name:
            continue
        try:
            other_lo, _ = reachable_range(layers, candidates(layers, other, settings)[0])
        except MPQError:
            continue
        if other_lo < lo - 1e-9:
            because = f"{'; '.join(missing)}, so some layers store more bits here; " if missing else ""
            return f" ({because}--target {other.name} reaches down to {other_lo:.3f})"
    return ""


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


def _greedy_fill(order: list[int], costs: list[list[int]], capacity: int) -> list[int]:
    """Start every layer at its cheapest format; in `order`, raise each to the largest that still fits."""
    choice = [0] * len(costs)
    used = sum(c[0] for c in costs)
    for i in order:
        for f in range(len(costs[i]) - 1, 0, -1):
            extra = costs[i][f] - costs[i][choice[i]]
            if used + extra <= capacity:
                used += extra
                choice[i] = f
                break
    return choice


def allocate(layers: list[QuantLayer], budget: float, target: str | Target,
             settings: AllocationSettings = AllocationSettings(), theta: np.ndarray | None = None,
             sensitivity: dict[str, dict[str, float]] | None = None,
             format_error: dict[str, dict[str, float]] | None = None,
             cands: tuple[list[list[Format]], dict[str, str]] | None = None,
             measured_by: Scorer = Scorer.SENSITIVITY) -> BitAllocation:
    """Choose a format per layer of `target` within `budget` average stored weight bits. `theta` (ORM
    importance, maximised) or `sensitivity` (layer -> format name -> measured error, minimised; `measured_by`
    names which measurement) drives the 'mpq' method. Between formats of equal bits (w8a8 and fp8), the
    measured sensitivity decides inside the program; otherwise `format_error` (format_error.py) does, and
    without it the target's first format of that width. `cands`: candidates(layers, target, settings), when
    the caller has it already (one computation per run)."""
    t0 = time.perf_counter()
    cands, pins = cands if cands is not None else candidates(layers, target, settings)
    check_budget(layers, budget, target, settings, cands)
    budget = float(budget)
    tied = equal_bit_alternatives(layers, cands)
    decided_by = sensitivity if (settings.method == "mpq" and sensitivity is not None) else format_error
    choices = {name: {f.name: float(decided_by[name][f.name]) for f in fmts}
               for name, fmts in tied.items()} if decided_by is not None else {}
    if not (settings.method == "mpq" and sensitivity is not None):
        cands = one_per_width(layers, cands, format_error)
    params = [l.params for l in layers]
    capacity = int(np.floor(budget * sum(params) + 1e-6))
    names = [l.name for l in layers]
    method = settings.method
    objective, status, scorer = None, "", Scorer.NONE
    costs = [[f.layer_bits(l) for f in c] for l, c in zip(layers, cands)]
    if method == "mpq":
        if sensitivity is not None:
            scorer = measured_by
            values = [[float(sensitivity[l.name][f.name]) for f in c] for l, c in zip(layers, cands)]
            maximize = False
        elif theta is not None:
            scorer = Scorer.ORM
            values = [[f.bits_per_weight(l) * float(theta[i]) for f in c] for i, (l, c) in enumerate(zip(layers, cands))]
            maximize = True
        else:
            raise MPQError("internal: the mpq allocation needs importance scores")
        choice, objective, status = solve_01(values, costs, capacity, maximize)
    elif method == "uniform":
        # every unpinned layer at the plain format of the largest width <= budget; pins keep their pin
        width = max([b for b in settings.bits if b <= budget + 1e-9] or [min(settings.bits)])
        choice = []
        for c in cands:
            fits = [i for i, f in enumerate(c) if f.weight_bits <= width]
            top = max((c[i].weight_bits for i in fits), default=None)
            choice.append(min((i for i in fits if c[i].weight_bits == top), key=lambda i: costs[len(choice)][i])
                          if fits else 0)
    elif method == "random":
        order = list(np.random.default_rng(settings.seed or 0).permutation(len(layers)))
        choice = _greedy_fill(order, costs, capacity)
    else:  # smallest-first
        order = sorted(range(len(layers)), key=lambda i: params[i])
        choice = _greedy_fill(order, costs, capacity)
    formats = [c[i] for c, i in zip(cands, choice)]
    if method == "uniform":
        formats = _uniform_ranks(layers, cands, formats, capacity)
    alloc = BitAllocation(layer_names=names, formats=formats, params=params,
                          budget=budget, method=method, scorer=scorer, objective=objective,
                          solver_status=status, seconds=time.perf_counter() - t0, pins=pins,
                          equal_bit_choices=choices, layer_bits=[f.layer_bits(l) for f, l in zip(formats, layers)])
    return alloc


def _uniform_ranks(layers: list[QuantLayer], cands: list[list[Format]], formats: list[Format],
                   capacity: int) -> list[Format]:
    """Uniform at equal bits: where the candidates hold low-rank branches, every layer that took the plain
    4-bit format gets a branch sized by one common fraction of a bit (formats/lowrank.py), the largest that
    keeps the budget; what the rounding to whole ranks leaves of the budget then goes one rank at a time to
    those layers, largest first (on narrow layers one rank is a large fraction of a bit, and the budget would
    otherwise be missed by most of a rank)."""
    from mpq_export.formats import W4A16, LowRankFormat

    movable = [i for i, (c, f) in enumerate(zip(cands, formats))
               if f == W4A16 and any(isinstance(g, LowRankFormat) for g in c)]
    if not movable:
        return formats
    fixed = sum(f.layer_bits(l) for i, (f, l) in enumerate(zip(formats, layers)) if i not in set(movable))

    def with_branch(extra: float) -> list[Format]:
        out = list(formats)
        fmt = LowRankFormat(extra)
        for i in movable:
            if fmt.exact_rank(layers[i]) >= 1 and fmt.applies_to(layers[i]):
                out[i] = fmt
        return out

    def total(fs: list[Format]) -> int:
        return fixed + sum(fs[i].layer_bits(layers[i]) for i in movable)

    lo, hi = 0.0, 16.0
    if total(with_branch(hi)) <= capacity:
        return with_branch(hi)
    for _ in range(40):  # bisection on the common fraction: the stored bits rise with it in whole ranks
        mid = (lo + hi) / 2
        if total(with_branch(mid)) <= capacity:
            lo = mid
        else:
            hi = mid
    best = with_branch(lo) if total(with_branch(lo)) <= capacity else list(formats)
    used = total(best)
    for i in sorted(movable, key=lambda i: -layers[i].params):
        k, n = layers[i].weight_shape[layers[i].reduction_axis], layers[i].params // layers[i].weight_shape[layers[i].reduction_axis]
        rank = best[i].rank(layers[i]) + 1 if isinstance(best[i], LowRankFormat) else 1
        up = LowRankFormat(rank * 16 * (k + n) / (k * n))  # exactly one rank more
        if up.applies_to(layers[i]) and used - best[i].layer_bits(layers[i]) + up.layer_bits(layers[i]) <= capacity:
            used += up.layer_bits(layers[i]) - best[i].layer_bits(layers[i])
            best[i] = up
    return best
