"""The package's layers import one way: cli > pipeline/config > report > stages > inputs > targets > runtime > util.

An import that only feeds type annotations (under `if TYPE_CHECKING:`) does not count: it runs nothing.
Target names appear only in targets/ (and in the CLI's choices and the report's text, which read them
from the target objects): every other module asks a Target object.
"""

import ast
import os
import re

import mpq_export

PKG = os.path.dirname(mpq_export.__file__)
# lower rank = lower layer; a module may import its own layer and those below it
RANKS = {"util": 0, "errors": 0, "runtime": 1, "targets": 2, "inputs": 3, "stages": 4, "report": 5,
         "config": 6, "pipeline": 7, "cli": 8, "__init__": 9}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__") if rel.endswith(".__init__") and rel != "mpq_export.__init__" else rel, path


def _runtime_imports(tree):
    """mpq_export modules imported outside `if TYPE_CHECKING:` blocks (at any depth: lazy imports count)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mpq_export"):
            if node.module == "mpq_export":
                yield from (f"mpq_export.{a.name}" for a in node.names if a.name != "__version__")
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("mpq_export"))


def test_every_module_sits_in_a_known_layer():
    unknown = [m for m, _ in _modules() if _layer(m) not in RANKS]
    assert not unknown, f"modules outside the layers {sorted(RANKS)}: {unknown}"


def test_imports_run_one_way():
    wrong = []
    for module, path in _modules():
        with open(path) as f:
            tree = ast.parse(f.read())
        mine = RANKS[_layer(module)]
        for imported in _runtime_imports(tree):
            theirs = RANKS.get(_layer(imported))
            if theirs is not None and theirs > mine:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_target_names_live_in_targets():
    """`grep 'tensorrt"\\|onnxruntime"'` outside targets/ finds only the CLI's text (no `== "tensorrt"`)."""
    found = []
    for module, path in _modules():
        if _layer(module) == "targets":
            continue
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if re.search(r'(==|!=|\bin)\s*\(?"(tensorrt|onnxruntime)"|"(tensorrt|onnxruntime)"\s*(==|!=)|'
                             r'target\s*=\s*"(tensorrt|onnxruntime)"', line):
                    found.append(f"{module}:{i}: {line.strip()}")
    assert not found, "target-name branches outside targets/:\n" + "\n".join(found)
