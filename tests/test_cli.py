"""The ``spa`` command line: happy paths, reports, exit codes, determinism, and every bad input.

Exit codes (``spa.cli.main``): 0 ok, 1 usage, 2 invalid model, 3 unsupported model, 4 validation failed.
Most tests call :func:`spa.cli.main` in-process (fast, exit codes as pipelines see them); a few use
click's ``CliRunner`` and a few a real subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import external_data_helper, numpy_helper

from spa.cli import cli, main
from spa.graph.io import save_model
from spa.version import __version__
from tests.import_fixtures import unconvertible_old_opset
from tests.oracle import GraphBuilder

ROOT = Path(__file__).resolve().parents[1]


# -- models ------------------------------------------------------------------------------------------

def branchy_model(opset: int = 13) -> onnx.ModelProto:
    """Stem + residual block + two-branch concat + head: four prunable groups (16, 16, 12+8 concat, 24)."""
    b = GraphBuilder(opset=opset, seed=1)
    x = b.input("x", [1, 3, 16, 16])
    a = b.op("Relu", [b.bn(b.conv(x, 3, 16), 16)])
    r = b.op("Relu", [b.conv(a, 16, 16)])  # type: ignore[arg-type]
    r = b.conv(r, 16, 16)  # type: ignore[arg-type]
    s = b.op("Add", [a, r])  # type: ignore[list-item]
    c1 = b.op("Relu", [b.conv(s, 16, 12, k=1)])  # type: ignore[arg-type]
    c2 = b.op("Relu", [b.conv(s, 16, 8)])  # type: ignore[arg-type]
    cat = b.op("Concat", [c1, c2], axis=1)  # type: ignore[list-item]
    h = b.op("Relu", [b.conv(cat, 20, 24, stride=2)])  # type: ignore[arg-type]
    f = b.op("Flatten", [b.op("GlobalAveragePool", [h])])  # type: ignore[list-item]
    y = b.op("Gemm", [f, b.weight(10, 24), b.const(np.zeros(10, np.float32), "b")], transB=1)  # type: ignore[list-item]
    b.output(y)  # type: ignore[arg-type]
    return b.build()


PRUNABLE_CHANNELS = 16 + 16 + 12 + 8 + 24


def single_conv_model() -> onnx.ModelProto:
    """One Conv from the graph input to the graph output: nothing can be pruned."""
    b = GraphBuilder(opset=13)
    b.output(b.conv(b.input("x", [1, 3, 8, 8]), 3, 4))
    return b.build()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, m in (("m", branchy_model()), ("single", single_conv_model()), ("op9", branchy_model(opset=9)),
                    ("op8x", unconvertible_old_opset())):
        out[name] = d / f"{name}.onnx"
        onnx.save(m, out[name])
    return out


@pytest.fixture()
def model(models: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the branchy model in an otherwise empty folder (the test's cwd)."""
    p = tmp_path / "m.onnx"
    p.write_bytes(models["m"].read_bytes())
    return p


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


# -- helpers -----------------------------------------------------------------------------------------

def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``spa ARGS`` through :func:`spa.cli.main`: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert lines[0].startswith("spa: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def prune_report(capsys: pytest.CaptureFixture[str], model: Path, out: str, *opts: object) -> dict:
    code, _, err = run(capsys, "-q", "prune", model, "-o", out, "--report", out + ".json", *opts)
    assert code == 0, err
    return json.loads(Path(out + ".json").read_text())


def groups_by_id(report: dict) -> dict[int, dict]:
    return {g["id"]: g for g in report["groups"]}


# -- happy path --------------------------------------------------------------------------------------

def test_help_and_version() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    for cmd in ("analyze", "prune", "verify", "bench"):
        assert cmd in res.output
    res = runner.invoke(cli, ["prune", "--help"])
    assert res.exit_code == 0
    for opt in ("--ratio", "--criterion", "--report", "--emit-masked", "--force", "--seed", "--round-to"):
        assert opt in res.output
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_analyze_table(model: Path) -> None:
    res = CliRunner().invoke(cli, ["analyze", str(model)])
    assert res.exit_code == 0, res.output
    assert "prunable" in res.output and "blocked" in res.output
    assert "channel groups" in res.output


def test_analyze_json(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "analyze", model, "--json", "a.json")
    assert code == 0, err
    data = json.loads(Path("a.json").read_text())
    assert data["spa_version"] == __version__
    groups = data["groups"]
    assert groups and data["num_groups"] == len(groups)
    for g in groups:
        assert {"id", "channels", "prunable", "reasons", "members"} <= g.keys()
        assert isinstance(g["members"], list) and g["members"]
        assert g["prunable"] == (not g["reasons"]), g
    assert sorted(g["channels"] for g in groups if g["prunable"]) == [16, 16, 20, 24]
    blocked = [g for g in groups if not g["prunable"]]
    assert blocked and all(g["reasons"] for g in blocked)


def test_analyze_json_to_stdout(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "analyze", model, "--json", "-")
    assert code == 0
    assert json.loads(out)["num_prunable"] == 4  # stdout is pure JSON: a pipeline can parse it


def test_prune_verify_bench(model: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    before = sha(model)
    code, out, err = run(capsys, "prune", model, "--ratio", "0.5", "--round-to", "1", "-o", "p.onnx", "--report",
                         "r.json", "--emit-masked", "k.onnx")
    assert code == 0, err
    assert "p.onnx" in out
    assert sha(model) == before
    assert listing(tmp_path) == ["k.onnx", "m.onnx", "p.onnx", "r.json"]  # no temp files left behind
    onnx.checker.check_model(onnx.load("p.onnx"), full_check=True)

    rep = json.loads(Path("r.json").read_text())
    assert rep["input"] == str(model) and rep["output"] == "p.onnx" and rep["masked"] == "k.onnx"
    assert rep["spa_version"] == __version__
    assert rep["criterion"] == "l2" and rep["ratio"] == 0.5 and rep["seed"] == 0
    assert 0 < rep["macs_after"] < rep["macs_before"]
    assert 0 < rep["params_after"] < rep["params_before"]
    assert rep["num_pruned"] == 4
    for g in rep["groups"]:
        assert {"id", "channels_before", "channels_after", "kept", "weights", "blocked_reason"} <= g.keys()
        assert g["weights"]
        if g["prunable"]:
            assert g["blocked_reason"] is None
            assert g["channels_after"] == g["channels_before"] - round(0.5 * g["channels_before"])
            assert len(g["kept"]) == g["channels_after"] == len(set(g["kept"]))
            assert all(0 <= k < g["channels_before"] for k in g["kept"]) and g["kept"] == sorted(g["kept"])
        else:
            assert g["blocked_reason"] and g["kept"] is None
            assert g["channels_after"] == g["channels_before"]

    code, out, err = run(capsys, "verify", model, "p.onnx", "--masked", "k.onnx")
    assert code == 0, err
    assert "yes" in out

    code, _, err = run(capsys, "bench", model, "p.onnx", "--iters", "5", "--warmup", "1", "--json", "b.json")
    assert code == 0, err
    bench = json.loads(Path("b.json").read_text())
    assert bench["iters"] == 5 and bench["warmup"] == 1
    rows = bench["models"]
    assert [r["model"] for r in rows] == [str(model), "p.onnx"]
    for r in rows:
        assert r["median_ms"] > 0 and r["macs"] > 0 and r["params"] > 0 and r["size_bytes"] > 0
    assert rows[1]["macs"] == rep["macs_after"] and rows[0]["macs"] == rep["macs_before"]
    assert rows[1]["params"] == rep["params_after"]
    assert sha(model) == before


def test_verify_fails_against_a_different_twin(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The oracle can fail: a twin whose weights were perturbed must give exit code 4."""
    code, _, err = run(capsys, "-q", "prune", model, "-o", "p.onnx", "--emit-masked", "k.onnx")
    assert code == 0, err
    twin = onnx.load("k.onnx")
    init = max(twin.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5 + 0.1, init.name))
    onnx.save(twin, "bad_twin.onnx")
    code, out, err = run(capsys, "verify", model, "p.onnx", "--masked", "bad_twin.onnx")
    assert code == 4
    assert "NO" in out
    assert "verification failed" in err and len(err.strip().splitlines()) == 1
    # and against the original (not the twin), a pruned model differs too
    code, _, _ = run(capsys, "-q", "verify", model, "p.onnx")
    assert code == 4
    # sanity: the unperturbed twin still agrees, and --json records the outcome
    code, _, _ = run(capsys, "-q", "verify", model, "p.onnx", "--masked", "k.onnx", "--json", "v.json")
    assert code == 0 and json.loads(Path("v.json").read_text())["ok"] is True


def test_verify_exit_codes_for_bad_files(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("junk.onnx").write_text("not a model")
    code, _, err = run(capsys, "verify", model, "junk.onnx")
    assert code == 2
    assert_one_line_error(err, "junk.onnx")
    code, _, err = run(capsys, "verify", model, "absent.onnx")
    assert code == 2
    assert_one_line_error(err, "absent.onnx")


def test_quiet_prints_nothing(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-q", "prune", model, "-o", "p.onnx")
    assert code == 0 and out == "" and err == ""


# -- determinism -------------------------------------------------------------------------------------

def test_same_options_give_identical_files(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for tag in ("a", "b"):
        code, _, err = run(capsys, "-q", "prune", model, "-o", f"{tag}.onnx", "--emit-masked", f"{tag}.k.onnx",
                           "--report", f"{tag}.json", "--ratio", "0.4", "--criterion", "random", "--seed", "7")
        assert code == 0, err
    assert Path("a.onnx").read_bytes() == Path("b.onnx").read_bytes()
    assert Path("a.k.onnx").read_bytes() == Path("b.k.onnx").read_bytes()
    ra, rb = (json.loads(Path(f"{t}.json").read_text()) for t in ("a", "b"))
    for r in (ra, rb):
        del r["output"], r["masked"]
    assert ra == rb


def test_different_seed_changes_random_plan(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r1 = prune_report(capsys, model, "s1.onnx", "--criterion", "random", "--seed", "1")
    r2 = prune_report(capsys, model, "s2.onnx", "--criterion", "random", "--seed", "2")
    assert r1["seed"] == 1 and r2["seed"] == 2
    kept1 = {g["id"]: g["kept"] for g in r1["groups"]}
    kept2 = {g["id"]: g["kept"] for g in r2["groups"]}
    assert kept1 != kept2
    assert Path("s1.onnx").read_bytes() != Path("s2.onnx").read_bytes()
    # the seed does not matter for a magnitude criterion
    r3 = prune_report(capsys, model, "l1.onnx", "--criterion", "l2", "--seed", "1")
    r4 = prune_report(capsys, model, "l2.onnx", "--criterion", "l2", "--seed", "2")
    assert [g["kept"] for g in r3["groups"]] == [g["kept"] for g in r4["groups"]]


def _spa_subprocess(args: list[str], cwd: Path, hashseed: str = "0") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONHASHSEED=hashseed, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "spa.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_subprocess_determinism_across_hash_seeds(model: Path, tmp_path: Path) -> None:
    """Two processes with different string-hash seeds (set/dict order) write byte-identical models."""
    for tag, seed in (("a", "1"), ("b", "12345")):
        res = _spa_subprocess(["-q", "prune", str(model), "-o", f"{tag}.onnx", "--ratio", "0.3",
                               "--emit-masked", f"{tag}.k.onnx", "--global"], tmp_path, seed)
        assert res.returncode == 0, res.stderr
        assert res.stdout == "" and res.stderr == ""
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "a.k.onnx").read_bytes() == (tmp_path / "b.k.onnx").read_bytes()


def test_subprocess_exit_codes(model: Path, models: dict[str, Path], tmp_path: Path) -> None:
    ok = _spa_subprocess(["prune", str(model), "-o", "p.onnx"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "p.onnx" in ok.stdout
    Path(tmp_path / "text.onnx").write_text("hello")
    cases = [
        (["prune", "text.onnx", "-o", "x.onnx"], 2, "text.onnx"),
        (["prune", str(models["op8x"]), "-o", "x.onnx"], 3, "opset 8"),
        (["prune", str(model), "-o", "x.onnx", "--ratio", "1.0"], 1, "--ratio"),
        (["prune", str(model), "-o", "p.onnx"], 1, "--force"),
        (["prune", str(model)], 1, "--output"),
    ]
    for args, code, needle in cases:
        res = _spa_subprocess(args, tmp_path)
        assert res.returncode == code, (args, res.stderr)
        assert_one_line_error(res.stderr, needle)
    assert not (tmp_path / "x.onnx").exists()
    # the installed console script, when present, behaves the same
    script = Path(sys.executable).parent / "spa"
    if script.exists():
        res = subprocess.run([str(script), "prune", "text.onnx", "-o", "x.onnx"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2
        assert_one_line_error(res.stderr, "text.onnx")


# -- the input is never modified; outputs are atomic ---------------------------------------------------

def test_input_untouched_and_no_temp_files(model: Path, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    before = sha(model)
    run(capsys, "prune", model, "-o", "p.onnx", "--force", "--report", "r.json", "--emit-masked", "k.onnx",
        "--external-data")
    assert sha(model) == before
    assert listing(tmp_path) == ["k.onnx", "k.onnx.data", "m.onnx", "p.onnx", "p.onnx.data", "r.json"]
    # a failing run (bad option after the outputs exist) leaves the folder exactly as it was
    snapshot = {n: sha(tmp_path / n) for n in listing(tmp_path)}
    code, _, _ = run(capsys, "prune", model, "-o", "p.onnx", "--force", "--criterion", "nonsense")
    assert code == 1
    assert {n: sha(tmp_path / n) for n in listing(tmp_path)} == snapshot


@pytest.mark.parametrize("opt", ["--report", "--emit-masked", "-o"])
def test_no_output_may_overwrite_the_input(model: Path, capsys: pytest.CaptureFixture[str], opt: str) -> None:
    before = sha(model)
    args = ["prune", model, "-o", "p.onnx", "--force"]
    if opt == "-o":
        args[3] = "./m.onnx"
    else:
        args += [opt, "m.onnx"]
    code, _, err = run(capsys, *args)
    assert code == 1
    assert_one_line_error(err, "m.onnx")
    assert sha(model) == before
    assert not Path("p.onnx").exists()


def test_output_options_must_differ(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "prune", model, "-o", "p.onnx", "--emit-masked", "p.onnx")
    assert code == 1
    assert_one_line_error(err, "--emit-masked")
    code, _, err = run(capsys, "prune", model, "-o", "p.onnx", "--report", "p.onnx")
    assert code == 1
    assert_one_line_error(err, "--report")
    assert not Path("p.onnx").exists()


def test_write_failure_leaves_nothing(model: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename that publishes the output fails: one-line error, no output, no temp file."""
    import spa.graph.io as spa_io

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spa_io.os, "replace", boom)
    code, _, err = run(capsys, "prune", model, "-o", "p.onnx")
    monkeypatch.undo()
    assert code == 1
    assert_one_line_error(err, "p.onnx", "No space left")
    assert listing(tmp_path) == ["m.onnx"]


# -- bad input ---------------------------------------------------------------------------------------

def _bad_input(tmp_path: Path, kind: str, good: Path) -> Path:
    if kind == "text":
        p = tmp_path / "readme.onnx"
        p.write_text("# not a model\njust some text\n")
    elif kind == "truncated":
        p = tmp_path / "half.onnx"
        data = good.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        p = tmp_path / "empty.onnx"
        p.write_bytes(b"")
    elif kind == "missing":
        p = tmp_path / "missing.onnx"
    elif kind == "missing_data":
        p = tmp_path / "ext.onnx"
        save_model(onnx.load(str(good)), p, external_data=True)
        (tmp_path / "ext.onnx.data").unlink()
    else:
        raise AssertionError(kind)
    return p


@pytest.mark.parametrize("kind,needle", [
    ("text", "readme.onnx"),
    ("truncated", "half.onnx"),
    ("empty", "empty.onnx"),
    ("missing", "missing.onnx"),
    ("missing_data", "ext.onnx.data"),
])
@pytest.mark.parametrize("command", ["prune", "analyze"])
def test_bad_model_file(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        kind: str, needle: str, command: str) -> None:
    bad = _bad_input(tmp_path, kind, models["m"])
    folder = listing(tmp_path)
    args = ["prune", bad, "-o", "out.onnx", "--report", "r.json"] if command == "prune" else \
        ["analyze", bad, "--json", "a.json"]
    code, _out, err = run(capsys, *args)
    assert code == 2
    assert_one_line_error(err, needle)
    assert listing(tmp_path) == folder  # nothing written, no temp files


@pytest.mark.parametrize("location", ["../x.data", "ABSOLUTE"])
def test_external_data_escaping_the_folder_is_refused(models: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], location: str) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    m = onnx.load(str(models["m"]))
    external_data_helper.convert_model_to_external_data(m, all_tensors_to_one_file=True, location="x.data",
                                                        size_threshold=0)
    external_data_helper.write_external_data_tensors(m, str(tmp_path))  # the data really is at tmp/x.data
    loc = str(tmp_path / "x.data") if location == "ABSOLUTE" else location
    for t in external_data_helper._get_all_tensors(m):
        if external_data_helper.uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = loc
    (inner / "m.onnx").write_bytes(m.SerializeToString())
    code, _, err = run(capsys, "prune", inner / "m.onnx", "-o", inner / "out.onnx")
    assert code == 2
    assert_one_line_error(err, "m.onnx", "outside the model folder")
    assert listing(inner) == ["m.onnx"]


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5", "nan"])
def test_bad_ratio(model: Path, capsys: pytest.CaptureFixture[str], ratio: str) -> None:
    code, _, err = run(capsys, "prune", model, "-o", "p.onnx", f"--ratio={ratio}")
    assert code == 1
    assert_one_line_error(err, "--ratio")
    assert not Path("p.onnx").exists()


def test_output_equal_to_input(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sha(model)
    for out in ("m.onnx", str(model)):
        code, _, err = run(capsys, "prune", model, "-o", out, "--force")
        assert code == 1
        assert_one_line_error(err, "input")
    assert sha(model) == before


def test_existing_output_needs_force(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("p.onnx").write_bytes(b"precious")
    code, _, err = run(capsys, "prune", model, "-o", "p.onnx")
    assert code == 1
    assert_one_line_error(err, "p.onnx", "--force")
    assert Path("p.onnx").read_bytes() == b"precious"
    code, _, err = run(capsys, "-q", "prune", model, "-o", "p.onnx", "--force")
    assert code == 0, err
    onnx.checker.check_model(onnx.load("p.onnx"))


def test_output_into_missing_folder(model: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "prune", model, "-o", "nodir/p.onnx")
    assert code == 1
    assert_one_line_error(err, "nodir")
    for opt in ("--report", "--emit-masked"):
        code, _, err = run(capsys, "prune", model, "-o", "p.onnx", opt, "nodir/x")
        assert code == 1
        assert_one_line_error(err, "nodir")
    code, _, err = run(capsys, "analyze", model, "--json", "nodir/a.json")
    assert code == 1
    assert_one_line_error(err, "nodir")
    assert listing(tmp_path) == ["m.onnx"]  # checked before any work: no model written without its report


def test_old_opset_is_converted(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-q", "prune", models["op9"], "-o", "p.onnx", "--report", "r.json")
    assert code == 0, err
    assert json.loads(Path("r.json").read_text())["converted_from_opset"] == 9
    code, _, err = run(capsys, "prune", models["op8x"], "-o", "x.onnx")
    assert code == 3
    assert_one_line_error(err, "opset 8", "version_converter")
    assert not Path("x.onnx").exists()


def test_unknown_criterion(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "prune", model, "-o", "p.onnx", "--criterion", "nonsense")
    assert code == 1
    assert_one_line_error(err, "nonsense", "l2")
    assert not Path("p.onnx").exists()


def test_usage_errors_are_one_line(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, needle in ((["prune", model], "--output"), (["prune", model, "-o", "p.onnx", "--ratio", "abc"],
                         "abc"), (["frobnicate"], "frobnicate"), (["prune", model, "-o", "p.onnx", "--round-to",
                                                                  "0"], "--round-to")):
        code, _, err = run(capsys, *args)
        assert code == 1, args
        assert_one_line_error(err, needle)


# -- behaviour of options ----------------------------------------------------------------------------

def test_nothing_prunable(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "prune", models["single"], "-o", "p.onnx", "--report", "r.json")
    assert code == 0, err
    assert "nothing was pruned" in out
    rep = json.loads(Path("r.json").read_text())
    assert rep["num_pruned"] == 0 and rep["params_after"] == rep["params_before"]
    assert len(onnx.load("p.onnx").graph.node) == 1


def test_ratio_zero_prunes_nothing(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "prune", model, "-o", "p.onnx", "--ratio", "0")
    assert code == 0, err
    assert "nothing was pruned" in out


def test_ignore_keeps_group_intact(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "analyze", model, "--json", "a.json")
    assert code == 0, err
    analysis = json.loads(Path("a.json").read_text())
    target = next(g for g in analysis["groups"] if g["prunable"] and g["channels"] == 20)  # the concat group
    weight = target["label"].split("[")[0]
    # a weight touches its output-channel group and its input-channel group: both are left alone
    touching = {g["id"] for g in analysis["groups"] if any(m["tensor"] == weight for m in g["members"])}
    assert target["id"] in touching
    rep = prune_report(capsys, model, "b.onnx", "--ignore", weight)
    for g in rep["groups"]:
        if not g["prunable"]:
            continue
        if g["id"] in touching:
            assert g["channels_after"] == g["channels_before"], g
            assert g["kept"] == list(range(g["channels_before"]))
        else:
            assert g["channels_after"] < g["channels_before"], g
    assert groups_by_id(rep)[target["id"]]["channels_after"] == 20
    # a glob over node names works too, and --ignore may be repeated
    rep = prune_report(capsys, model, "c.onnx", "--ignore", "Conv*", "--ignore", "Gemm*")
    assert rep["num_pruned"] == 0
    rep = prune_report(capsys, model, "d.onnx", "--ignore", "no-such-name*")
    assert rep["num_pruned"] == 4


@pytest.mark.parametrize("ratio", ["0.3", "0.5", "0.7"])
def test_round_to(model: Path, capsys: pytest.CaptureFixture[str], ratio: str) -> None:
    rep = prune_report(capsys, model, "p.onnx", "--round-to", "4", "--ratio", ratio)
    pruned = [g for g in rep["groups"] if g["prunable"]]
    assert pruned
    for g in pruned:
        after = g["channels_after"]
        assert after % 4 == 0 or after == g["channels_before"], g
        assert after >= 4


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_global_prunes_requested_fraction(model: Path, capsys: pytest.CaptureFixture[str], ratio: float) -> None:
    rep = prune_report(capsys, model, "p.onnx", "--global", "--ratio", str(ratio), "--round-to", "1")
    assert rep["global"] is True
    prunable = [g for g in rep["groups"] if g["prunable"]]
    assert sum(g["channels_before"] for g in prunable) == PRUNABLE_CHANNELS
    removed = sum(g["channels_before"] - g["channels_after"] for g in prunable)
    assert removed == round(ratio * PRUNABLE_CHANNELS)
    for g in prunable:  # --max-ratio 0.9 by default
        assert g["channels_after"] >= g["channels_before"] - int(0.9 * g["channels_before"])


def test_external_data_round_trip(model: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    save_model(onnx.load(str(model)), tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    code, _, err = run(capsys, "-q", "prune", "ext.onnx", "-o", "p.onnx", "--emit-masked", "k.onnx",
                       "--external-data", "--report", "r.json")
    assert code == 0, err
    assert Path("p.onnx.data").exists() and Path("k.onnx.data").exists()
    code, _, err = run(capsys, "-q", "verify", "ext.onnx", "p.onnx", "--masked", "k.onnx")
    assert code == 0, err
    # the same model without external data prunes to the same weights
    code, _, err = run(capsys, "-q", "prune", model, "-o", "plain.onnx")
    assert code == 0, err
    a, b = onnx.load("p.onnx"), onnx.load("plain.onnx")
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]


def test_bench_json_to_stdout(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "bench", model, "--iters", "2", "--warmup", "0", "--provider", "cpu",
                         "--json", "-")
    assert code == 0, err
    data = json.loads(out)
    assert data["provider"] == "CPUExecutionProvider" and len(data["models"]) == 1


def test_bench_bad_provider(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bench", model, "--provider", "quantum")
    assert code == 1
    assert_one_line_error(err, "quantum")


def test_cli_runner_prune_report_to_stdout(model: Path) -> None:
    res = CliRunner().invoke(cli, ["prune", str(model), "-o", "p.onnx", "--report", "-"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["output"] == "p.onnx" and rep["num_pruned"] == 4


def test_model_unchanged_by_helper_construction() -> None:
    """Guard for the fixtures themselves: the branchy model is valid and deterministic."""
    a, b = branchy_model(), branchy_model()
    assert a.SerializeToString() == b.SerializeToString()
    assert [n.op_type for n in a.graph.node].count("Conv") == 6


def test_no_command_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys)
    assert code == 1
    assert err.startswith("Usage:") and "prune" in err and "spa: error" not in err


def test_prune_reports_its_stages_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``spa.prune(progress=...)`` names each stage as it starts (the CLI shows them beside its spinner)."""
    import spa

    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.conv(b.op("Relu", [b.conv(x, 3, 8)]), 8, 2))  # type: ignore[arg-type]
    stages: list[str] = []
    spa.prune(b.build(), ratio=0.5, emit_masked=True, progress=stages.append)
    expected = ["loading", "analysing", "scoring", "planning", "pruning", "checking", "building the masked twin"]
    named = [next(e for e in expected if s.startswith(e)) for s in stages]
    assert [e for i, e in enumerate(named) if i == 0 or named[i - 1] != e] == expected  # planning: sub-steps
