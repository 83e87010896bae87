"""The README's and the docs' examples run, so they cannot rot.

* every ```` ```python ```` block of ``README.md`` and ``docs/*.md`` is executed in a fresh folder holding a
  tiny generated ``model.onnx`` (the names the examples use);
* every shell line starting with ``spa`` in a ```` ```bash ```` block runs through :func:`spa.cli.main` there
  and must exit 0 (benchmarks with a couple of iterations; a ``--provider cuda/tensorrt`` line is skipped
  where no GPU is usable);
* ``docs/ops.md`` is what ``tools/gen_ops_table.py`` generates from the rule registry today;
* ``mkdocs build --strict`` passes (when mkdocs is installed: ``pip install -e '.[docs]'``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa
from spa.cli import main
from spa.runtime.feeds import input_specs
from tests.oracle import GraphBuilder

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[tuple[str, int, str]]:
    """(file, line, code) of every fenced block in ``lang``."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                out.append((path.relative_to(ROOT).as_posix(), text[: m.start()].count("\n") + 1, m.group(2)))
    return out


def spa_commands() -> list[tuple[str, int, str]]:
    """(file, line, command) of every ``spa ...`` line in bash blocks."""
    out = []
    for name, line, code in blocks("bash"):
        for k, raw in enumerate(code.splitlines()):
            if raw.strip().startswith("spa "):
                out.append((name, line + 1 + k, raw.strip()))
    return out


def tiny_model() -> onnx.ModelProto:
    """conv → relu → conv → relu → conv with a dynamic batch: prunable, fast, benchable at any batch."""
    b = GraphBuilder(opset=13)
    h = b.op("Relu", [b.conv(b.input("x", ["N", 3, 8, 8]), 3, 8)])
    h = b.op("Relu", [b.conv(str(h), 8, 8)])
    b.output(b.conv(str(h), 8, 4))
    return b.build()


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder (the cwd) with ``model.onnx``."""
    monkeypatch.chdir(tmp_path)
    onnx.save(tiny_model(), tmp_path / "model.onnx")
    return tmp_path


def test_docs_have_examples() -> None:
    assert len(blocks("python")) >= 5
    assert len(spa_commands()) >= 10


@pytest.mark.parametrize("name,line,code", [pytest.param(*b, id=f"{b[0]}:{b[1]}") for b in blocks("python")])
def test_python_block(name: str, line: int, code: str, workdir: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # examples may use tests.oracle, like the rule tests do
    namespace: dict[str, object] = {"__name__": f"docs_example_{Path(name).stem}_{line}"}
    exec(compile(code, f"{name}:{line}", "exec"), namespace)


def _gpu_unavailable(err: str) -> bool:
    return "use --provider cpu or auto" in err


@pytest.mark.parametrize("name,line,command", [pytest.param(*c, id=f"{c[0]}:{c[1]}") for c in spa_commands()])
def test_spa_command(name: str, line: int, command: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = shlex.split(command, comments=True)[1:]
    sub = args[0]
    if sub in ("verify", "bench"):  # they read the models an earlier example wrote
        result = spa.prune("model.onnx", ratio=0.5, emit_masked=True)
        result.save("pruned.onnx")
        result.save_masked("masked.onnx")
    if sub in ("bench", "sweep"):
        args += ["--iters", "2", "--warmup", "1"]
    if sub in ("recover", "report"):  # a pruned model and unlabeled data for it; two steps are enough to run it
        pytest.importorskip("torch")
        spa.prune("model.onnx", ratio=0.5).save("pruned.onnx")
        rng = np.random.default_rng(0)
        np.savez("calib.npz", **{s.name: rng.standard_normal((4, *s.shape[1:])).astype(s.dtype)
                                 for s in input_specs(onnx.load("model.onnx"))})
        args += ["--steps", "2"] if sub == "recover" else []
    if sub == "report":  # the JSON reports an earlier example wrote
        assert main(["-q", "prune", "model.onnx", "--ratio", "0.5", "-o", "p.onnx", "--report", "prune.json"]) == 0
        assert main(["-q", "recover", "pruned.onnx", "--teacher", "model.onnx", "--data", "calib.npz", "-o",
                     "r.onnx", "--steps", "2", "--json", "recover.json"]) == 0
    capsys.readouterr()
    code = main(args)
    _out, err = capsys.readouterr()
    if code == 1 and _gpu_unavailable(err):
        pytest.skip(f"{name}:{line}: no usable GPU here ({err.strip()})")
    assert code == 0, f"{name}:{line}: `{command}` exited {code}: {err}"
    writes = ("-o", "--output", "--json", "--report", "--emit-masked", "--html")
    outputs = [args[k + 1] for k, a in enumerate(args[:-1]) if a in writes and args[k + 1] != "-"]
    for o in outputs:
        assert Path(o).exists(), f"{name}:{line}: `{command}` did not write {o}"


def _gen_ops_table():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_ops_table", ROOT / "tools" / "gen_ops_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ops_table_is_current() -> None:
    """docs/ops.md lists exactly the default rules (regenerate: python tools/gen_ops_table.py)."""
    expected = _gen_ops_table().render()
    assert (ROOT / "docs" / "ops.md").read_text() == expected, \
        "docs/ops.md is out of date: run python tools/gen_ops_table.py"


def test_ops_table_names_every_registered_op() -> None:
    from spa.rules.defaults import default_registry

    text = (ROOT / "docs" / "ops.md").read_text()
    for domain, op in default_registry().op_types():
        assert f"| `{op}` | {domain or 'ai.onnx'} |" in text, (domain, op)


def test_cli_reference_covers_every_command() -> None:
    from spa.cli import cli

    assert "::: mkdocs-click" in (ROOT / "docs" / "cli.md").read_text()
    assert set(cli.commands) >= {"analyze", "prune", "verify", "bench"}


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocs_click")
    pytest.importorskip("mkdocstrings")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").read_text().count("spa prune") >= 1
