"""The package's layers import one way:
cli > pipeline > config > report > handoffs > stages > inputs > targets > formats > runtime > core > util.

Imports that only feed type annotations (under `if TYPE_CHECKING:`) count too: a type used upward is a
type in the wrong layer. No module imports itself back through others (no import circle). Target names
appear only in targets/, format names and elements only in formats/ and the targets' tables, hand-off
names only in handoffs/ (and in the CLI's text, which reads them from the objects): every other module
asks the object.
"""

import ast
import os
import re

import mpq_export

PKG = os.path.dirname(mpq_export.__file__)
# lower rank = lower layer; a module may import its own layer and those below it
RANKS = {"util": 0, "errors": 0, "core": 1, "runtime": 2, "formats": 3, "targets": 4, "inputs": 5, "stages": 6,
         "handoffs": 7, "report": 8, "config": 9, "pipeline": 10, "cli": 11, "__init__": 12}


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


def _imports(tree):
    """mpq_export modules imported anywhere in the module (lazy and TYPE_CHECKING imports count)."""
    for node in ast.walk(tree):
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
        for imported in _imports(tree):
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


def _resolve(name: str, known: set[str]) -> str | None:
    """The module an import names (`from mpq_export.formats import W8A8` names the package)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def test_no_import_circle():
    """No module reaches itself through its imports (lazy ones included): each layer's modules form a tree."""
    paths = dict(_modules())
    graph = {}
    for module, path in paths.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        graph[module] = {m for m in (_resolve(i, set(paths)) for i in _imports(tree)) if m and m != module}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if n in ("mpq_export",) or n == m.rpartition(".")[0]:  # a package's own __init__ re-exports
                continue
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def _lines_outside(layer: str):
    for module, path in _modules():
        if _layer(module) == layer:
            continue
        with open(path) as f:
            for i, line in enumerate(f, 1):
                yield module, i, line


FORMAT_NAMES = "fp16|w8a8|w4a8|w4a16|fp8"


def test_formats_are_asked_not_branched_on():
    """No module outside formats/ branches on a format's element or name: it asks the format object."""
    found = [f"{m}:{i}: {line.strip()}" for m, i, line in _lines_outside("formats")
             if re.search(r"\.element\b|\.stored_dtype\b", line)
             or re.search(rf'(==|!=|\bin)\s*\(?"({FORMAT_NAMES}|int|int8)"|"({FORMAT_NAMES})"\s*(==|!=)', line)]
    assert not found, "format branches outside formats/:\n" + "\n".join(found)


def test_handoff_names_live_in_handoffs():
    """No module outside handoffs/ compares a hand-off's name: it asks the hand-off object."""
    found = [f"{m}:{i}: {line.strip()}" for m, i, line in _lines_outside("handoffs")
             if re.search(r'(==|!=|\bin)\s*\(?"(trt-demo|optimum)"|"(trt-demo|optimum)"\s*(==|!=|\bin\b)', line)]
    assert not found, "hand-off branches outside handoffs/:\n" + "\n".join(found)
