"""The README and docs say what the code does: the README stays a few screens, its commands and links
work, every option named in the docs exists and every option is documented, the Dockerfile's
stages copy files that exist."""

import os
import re

import pytest
from conftest import run_cli

from mpq_export.cli import build_parser, options

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_the_readme_is_a_few_screens_without_run_history():
    text = _read("README.md")
    assert len(text.encode()) <= 12 * 1024
    for stale in ("session", "this machine", "2-core", "earlier run", "lent", "2026-"):
        assert stale not in text, stale


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md", "docs/cli.md", "docs/performance.md",
                                 "tools/README.md", "docs/quality.md", "docs/experiments.md", "docs/design.md"])
def test_local_links_and_named_files_exist(doc):
    text = _read(doc)
    base = os.path.dirname(os.path.join(ROOT, doc))
    for target in re.findall(r"\]\(([^)#:]+)\)", text):  # markdown links, not URLs
        assert os.path.exists(os.path.join(base, target)), (doc, target)
    for tool in re.findall(r"tools/(\w+\.py)", text):
        assert os.path.exists(os.path.join(ROOT, "tools", tool)), (doc, tool)


@pytest.mark.parametrize("doc", ["README.md", "docs/cli.md", "CONTRIBUTING.md", "docs/performance.md"])
def test_every_option_the_docs_name_exists(doc):
    known = {s for a in build_parser()._actions for s in a.option_strings}
    known |= {"--pipeline", "--no-sketch-study", "--repeats", "--model", "--data", "--no-gptq-statistics",
              "--gpus", "--rm", "--target", "--extra-index-url", "--no-deps", "--trt", "--onnxrt", "--help",
              "--onnx-dir", "--engine-dir"}  # other tools' flags: docker, pip, polygraphy, demo/Diffusion
    for flag in set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", _read(doc))):
        assert flag in known, (doc, flag)


def test_docs_cli_lists_every_option():
    text = _read("docs/cli.md")
    for opt in options():
        assert f"`{opt.flags[-1]}`" in text, opt.flags[-1]


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["check", "--help"]])
def test_the_cheap_commands_run(argv):
    code, out, err = run_cli(*argv)
    assert code == 0, err
    assert out.strip()


def test_the_readme_commands_parse():
    """Each `mpq-export ...` line of the README parses with the real parser (the model paths need not exist)."""
    import shlex

    lines = [l.split("#")[0].strip() for l in _read("README.md").splitlines() if l.startswith("mpq-export ")]
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[0] == "check":
            continue
        build_parser().parse_args(argv)


def test_the_dockerfile_copies_what_exists_and_has_a_test_stage():
    text = _read("Dockerfile")
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.M)
    assert stages == ["base", "test", "runtime"]  # the last is what `docker build .` makes
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert os.path.exists(os.path.join(ROOT, path)), path
    test_stage = text.split("AS test")[1].split("AS runtime")[0]
    assert "COPY tests" in test_stage and ".[torch,test]" in test_stage and '"-m", "gpu"' in test_stage
    runtime = text.split("AS runtime")[1]
    assert 'ENTRYPOINT ["mpq-export"]' in runtime and 'CMD ["--help"]' in runtime
    readme = _read("README.md")
    assert "docker build --target test" in readme and "docker build -t mpq-export ." in readme
    ignored = _read(".dockerignore").split()
    assert ".venv" in ignored and ".git" in ignored


@pytest.mark.slow
def test_the_readme_python_snippet_runs_on_the_demo_model(tmp_path, monkeypatch):
    """The README's Python block as written, with the bundled model in place of unet.onnx."""
    pytest.importorskip("torch")
    from mpq_export.inputs.demo import demo_model

    (block,) = re.findall(r"```python\n(.*?)```", _read("README.md"), re.S)
    monkeypatch.chdir(tmp_path)
    code = block.replace('"unet.onnx"', repr(demo_model()))
    printed = []
    exec(compile(code, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    assert [p[0] for p in printed] == [7.5]
    assert all(p[1] <= p[0] and p[2] > 25 for p in printed)  # within budget, close to FP32
    assert (tmp_path / "unet.mpq" / "model.mpq.onnx").exists()
