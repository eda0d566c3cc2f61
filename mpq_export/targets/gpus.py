"""GPU families: which formats a TensorRT engine can run depends on the GPU that will run it.

TensorRT's FP8 (E4M3) needs compute capability 8.9 or later (Ada, Hopper, Blackwell): a network with
FP8 Q/DQ layers is refused on earlier GPUs ("Networks with FP8 Q/DQ layers require hardware with FP8
support", ModelOpt issue #70; TensorRT-RTX docs, "Working with Quantized Types"). INT8 and INT4
weight-only GEMMs run from Turing on. A family is its lowest compute capability and the formats it adds
to the base (Ampere-safe) table, so NVFP4 on Blackwell is one more entry in `FAMILIES`.

`--gpu auto` asks the driver for the GPU the run sees (what a build on it would target); with none
the Ampere-safe table is used, and the report says which table was used and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from mpq_export.formats import CONV_OPS, FP8, GEMM_OPS, Format
from mpq_export.util.errors import MPQError


@dataclass(frozen=True)
class GpuFamily:
    name: str
    compute_capability: tuple[int, int]  # the family's lowest
    examples: str  # for --help and the report
    # op type -> formats this family runs beyond the base table
    adds: dict[str, tuple[Format, ...]] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


_FP8 = {op: (FP8,) for op in CONV_OPS + GEMM_OPS}
AMPERE = GpuFamily("ampere", (7, 5), "Turing, Ampere: A100, A10, RTX 30xx (INT8, INT4 weight-only)")
FAMILIES = (
    AMPERE,
    GpuFamily("ada", (8, 9), "L4, L40S, RTX 40xx, RTX 6000 Ada (+ FP8)", _FP8),
    GpuFamily("hopper", (9, 0), "H100, H200, GH200 (+ FP8)", _FP8),
    GpuFamily("blackwell", (10, 0), "B200, GB200, RTX 50xx (+ FP8)", _FP8),
)
GPU_CHOICES = ("auto",) + tuple(f.name for f in FAMILIES)
DEFAULT_GPU = "auto"


def family(name: str) -> GpuFamily:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise MPQError(f"--gpu must be one of {', '.join(GPU_CHOICES)}, got '{name}'")


def family_of(capability: tuple[int, int]) -> GpuFamily | None:
    """The newest family whose lowest compute capability `capability` reaches (None: older than Turing)."""
    fits = [f for f in FAMILIES if capability >= f.compute_capability]
    return fits[-1] if fits else None


def detect_gpu() -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of the first GPU the driver shows to this process, or None.

    nvidia-smi rather than TensorRT or torch: it answers in milliseconds and needs neither installed.
    CUDA_VISIBLE_DEVICES is honoured when it names a device by index.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    cmd = [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        visible = os.environ["CUDA_VISIBLE_DEVICES"].split(",")[0].strip()
        if not visible or visible.startswith("-"):  # set empty or negative: CUDA sees no GPU
            return None
        if visible.isdigit():
            cmd += ["-i", visible]
        # a UUID or MIG name: the first GPU the driver lists stands for it
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout.strip().splitlines()
        name, cc = (x.strip() for x in out[0].rsplit(",", 1))
        major, minor = (int(x) for x in cc.split("."))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return name, (major, minor)


def resolve(choice: str) -> tuple[GpuFamily, str]:
    """(family, why this table) for a --gpu choice."""
    if choice != "auto":
        return family(choice), f"--gpu {choice}"
    seen = detect_gpu()
    if seen is None:
        return AMPERE, "--gpu auto: no GPU seen here, so the Ampere-safe table (give --gpu for the deploying GPU)"
    name, cc = seen
    fam = family_of(cc)
    if fam is None:
        raise MPQError(f"--gpu auto found {name} (compute capability {cc[0]}.{cc[1]}), older than TensorRT's "
                       f"quantized kernels support; give --gpu for the GPU that will run the engine")
    return fam, f"--gpu auto: {name} (compute capability {cc[0]}.{cc[1]})"
