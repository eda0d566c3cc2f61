"""What a hand-off is: the quantized denoiser laid out where a runtime users run loads it (`--emit NAME`).

A hand-off object owns its runtime's contract: which models and targets it takes (`check`, asked before
any work), how it writes the folder (`emit`), how that folder is checked against the contract
(`check_contract`), and the command it prints. The pipeline and the configuration ask these methods and
never test a hand-off's name; a new hand-off is one file in handoffs/ and one entry in handoffs/__init__.py.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from mpq_export.core.model_info import ModelInfo


@dataclass(frozen=True)
class HandOffRecord:
    """One --emit result, for the report."""
    kind: str  # the hand-off's name
    folder: str  # absolute path of the folder the runtime is pointed at
    model: str  # the denoiser file in it
    command: str  # how that runtime runs it (not run by mpq-export)
    checked: str  # what was verified here


@dataclass(frozen=True)
class HandOffSource:
    """What a hand-off may reuse of the run's input."""
    pipeline: object | None = None  # inputs.sd_pipeline.PipelineFolder, when the input is a pipeline folder
    optimum_folder: str | None = None  # the input, when it is an Optimum ONNX folder
    cache_dir: str | None = None


class HandOff:
    name: str = ""
    help: str = ""  # one line for --emit's help
    folder: str = ""  # the subfolder of an output it writes

    def check_family(self, class_name: str | None, source: HandOffSource) -> None:
        """A one-line error when a model of this diffusers class (None: unknown, an ONNX file) or this input
        cannot be handed off: asked before the export and the prompt encoding."""

    def check(self, info: ModelInfo, source: HandOffSource) -> None:
        """A one-line error when this model or input cannot be handed off (before calibration)."""

    def emit(self, q_path: str, info: ModelInfo, out_dir: str, final_dir: str, source: HandOffSource) -> HandOffRecord:
        """Write `out_dir/<folder>` from the quantized model at `q_path`; `final_dir` is where `out_dir` will be
        published (the printed command names it)."""
        raise NotImplementedError

    def check_contract(self, folder: str, info: ModelInfo) -> list[str]:
        """Every way the written folder breaks the runtime's contract (empty: none)."""
        return []

    def __repr__(self) -> str:
        return f"<hand-off {self.name}>"


def move_external_data(main_model: str, handoff_model: str) -> None:
    """One copy of the weights, one link each: the external-data files of `main_model` move beside
    `handoff_model` (which names them by their base name), and `main_model` then names them by the relative
    path into the hand-off folder.

    onnx (1.23 and later) refuses to read an external-data file with more than one hard link ("potential
    hardlink attack"), so neither may be a hard link of the other; a copy would double GBs of weights.
    """
    import onnx

    from mpq_export.util.onnx_io import load_onnx

    model = load_onnx(main_model, load_weights=False)
    main_dir = os.path.dirname(os.path.abspath(main_model))
    target_dir = os.path.dirname(os.path.abspath(handoff_model))
    moved = {}
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key != "location":
                continue
            if e.value not in moved:
                src = os.path.join(main_dir, e.value)
                dst = os.path.join(target_dir, os.path.basename(e.value))
                if os.path.exists(dst):
                    os.remove(dst)
                shutil.move(src, dst)
                moved[e.value] = os.path.relpath(dst, main_dir)
            e.value = moved[e.value]
    if moved:
        onnx.save(model, main_model)  # graph only: the weights stay where they now are


def copy_file(src: str, dst: str) -> None:
    """A copy that is a file of its own (never a hard link: see move_external_data)."""
    if os.path.lexists(dst):
        os.remove(dst)
    shutil.copyfile(src, dst)


def copy_tree(src: str, dst: str, skip: str | None = None) -> None:
    """A copy of folder `src` at `dst` (files of their own); `skip`: a subfolder left out."""
    for root, dirs, files in os.walk(src):
        if skip is not None:
            dirs[:] = [d for d in dirs if os.path.join(root, d) != skip]
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for f in files:
            copy_file(os.path.join(root, f), os.path.join(dst, rel, f))
