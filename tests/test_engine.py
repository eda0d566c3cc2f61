"""The TensorRT build stage without TensorRT: its API use checked against TensorRT's published
type stubs (tensorrt-stubs, the 10.13 Python API), its inspector parsing, and its clean refusal."""

import ast
import importlib.util
import json
import os
import re

import pytest

import mpq_export.runtime.engine as build
from mpq_export.runtime.engine import _precisions, tensorrt_status

TRT_OBJECTS = {"trt", "builder", "network", "parser", "config", "profile", "runtime", "engine", "inspector",
               "tensor", "cache"}


def _stub_text():
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    site = os.path.dirname(os.path.dirname(spec.origin))
    text = ""
    for sub in ("tensorrt", "tensorrt_bindings"):
        folder = os.path.join(site, sub)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.endswith(".pyi"):
                text += open(os.path.join(folder, name)).read()
    if "class Builder" not in text:
        pytest.skip("tensorrt-stubs layout not recognised")
    return text


def _attributes_used_on_trt_objects(source: str | None = None):
    tree = ast.parse(source if source is not None else open(build.__file__).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            while isinstance(base, ast.Attribute):  # trt.Logger.WARNING -> check Logger and WARNING
                names.add(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in TRT_OBJECTS:
                names.add(node.attr)
    return names - {"__version__", "path", "seconds"}


def _missing_from_the_api(text: str, used: set[str]) -> list[str]:
    return sorted(n for n in used if not re.search(rf"\b{re.escape(n)}\b", text))


def test_build_stage_uses_only_names_in_the_tensorrt_api():
    text = _stub_text()
    used = _attributes_used_on_trt_objects()
    assert {"create_network", "parse_from_file", "set_memory_pool_limit", "builder_optimization_level",
            "create_optimization_profile", "set_shape", "build_serialized_network", "create_engine_inspector",
            "get_engine_information", "create_timing_cache", "set_timing_cache", "STRONGLY_TYPED"} <= used
    missing = _missing_from_the_api(text, used)
    assert not missing, f"not in TensorRT's Python API: {missing}"


def test_a_misspelt_api_name_would_be_caught():
    """The check above, run on build.py with one attribute misspelt and one call renamed."""
    text = _stub_text()
    source = open(build.__file__).read()
    broken = source.replace("config.builder_optimization_level", "config.builder_optimisation_level")
    broken = broken.replace("builder.build_serialized_network(", "builder.build_engine_serialized(")
    assert broken != source
    assert _missing_from_the_api(text, _attributes_used_on_trt_objects(broken)) == [
        "build_engine_serialized", "builder_optimisation_level"]


def test_inspector_json_precisions():
    doc = {"Layers": [{"Name": "conv1", "Inputs": [{"Format/Datatype": "Channel major INT8 format where channel % 32 == 0"}]},
                      {"Name": "gemm", "Inputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
                      {"Name": "norm", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
                      {"Name": "conv2", "Inputs": [{"Format/Datatype": "Int8"}]}]}
    assert _precisions(json.dumps(doc)) == {"Int8": 2, "Half": 1, "Float": 1}


def test_status_without_tensorrt_names_the_fix():
    ok, why = tensorrt_status()
    if ok:
        pytest.skip("TensorRT is present here")
    assert "TensorRT" in why and ("pip install" in why or "GPU" in why)
