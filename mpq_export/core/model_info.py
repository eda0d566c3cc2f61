"""What every stage knows about a model: its inputs and its quantizable layers (`ModelInfo`).

These types sit at the bottom of the package (core/) because every layer reads them: the runtime feeds
a model's inputs, targets and formats look at layers, the stages pass them along. stages/inspect.py
builds them from an ONNX file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpq_export.util.errors import MPQError
from mpq_export.util.onnx_io import DEFAULT_SEQ_LEN, SEQ_LEN_KEY


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple  # ints for fixed dims, strings (or None) for dynamic ones
    dtype: str  # numpy dtype name, e.g. "float32", "int64"

    def concrete(self, batch: int, fallback: dict[int, int] | None = None) -> tuple[int, ...]:
        """The shape with the batch dimension set and other dynamic dims taken from `fallback`."""
        dims = []
        for axis, d in enumerate(self.shape):
            if axis == 0:
                dims.append(batch)
            elif isinstance(d, int) and d > 0:
                dims.append(d)
            elif fallback and axis in fallback:
                dims.append(fallback[axis])
            else:
                raise MPQError(
                    f"input '{self.name}' has a dynamic dimension {axis} ({d!r}); give its size "
                    f"(e.g. --resolution for the sample, --seq-len for encoder_hidden_states)"
                )
        return tuple(dims)


@dataclass(frozen=True)
class QuantLayer:
    name: str  # module path, e.g. "down_blocks.0.resnets.0.conv1"
    node_name: str
    op_type: str
    weight_name: str  # the initializer (or Constant output) holding the float weight
    weight_shape: tuple[int, ...]
    params: int
    activation_input: str  # the tensor multiplied by the weight
    output: str
    weight_axis: int  # the output-channel axis of the weight (per-channel scales live here)
    reduction_axis: int  # the K axis of MatMul/Gemm weights (INT4 blocks run along it); -1 for convs
    # Conv geometry (strides, pads [top, left, bottom, right], dilations, group) for the input statistics
    # of GPTQ rounding; () for other ops or when the attributes are not plain 2-D
    conv_geometry: tuple = ()


@dataclass(frozen=True)
class AttentionMatMul:
    """An activation x activation MatMul (attention's Q K^T and P V): TensorRT runs it in FP8 when both
    inputs carry FP8 Q/DQ (its fused MHA on Hopper; ModelOpt's quantize_mha)."""
    node_name: str
    inputs: tuple[str, str]
    softmax_input: int | None  # which input is a Softmax output (its max is 1 by construction), if any


@dataclass(frozen=True)
class ResidualAdd:
    """A residual Add whose output feeds convolutions (directly or through Div/Mul by a constant).

    TensorRT fuses the add into the conv only when both inputs carry Q/DQ, so the tensorrt target
    quantizes them."""
    node_name: str
    inputs: tuple[str, str]  # the two added tensors
    feeds: tuple[str, ...]  # names of the layers it feeds


@dataclass
class ModelInfo:
    path: str
    sample: InputSpec
    timestep: InputSpec
    conditioning: list[InputSpec]  # every other input (encoder_hidden_states, class_labels, ...)
    output: str
    layers: list[QuantLayer]
    opset: int
    sample_size: tuple[int, int] | None  # (H, W) when the file states it
    has_external_data: bool = False
    metadata: dict[str, str] = field(default_factory=dict)  # the file's metadata_props
    residual_adds: list[ResidualAdd] = field(default_factory=list)
    attention_matmuls: list[AttentionMatMul] = field(default_factory=list)

    @property
    def attention_inputs(self) -> list[str]:
        """The attention MatMuls' inputs whose range calibration must measure (Softmax outputs excluded)."""
        return sorted({t for m in self.attention_matmuls for i, t in enumerate(m.inputs) if i != m.softmax_input})

    @property
    def seq_len(self) -> int:
        """The conditioning sequence length the export was made for (CLIP's 77 when the file does not say)."""
        return int(self.metadata.get(SEQ_LEN_KEY, DEFAULT_SEQ_LEN))

    @property
    def total_params(self) -> int:
        return sum(l.params for l in self.layers)

    def layer(self, name: str) -> QuantLayer:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)
