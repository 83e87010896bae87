"""A CI-sized sample of ``tools/fuzz.py``: mutated and random models never crash or hang spa.

Runs the fuzzer as a subprocess (its worker restarts after a native abort) and requires no unknown crash,
hang or wrong result; crash classes with a pending fix are counted as ``known`` (``KNOWN_CRASHES`` in
``tools/fuzz.py``, each with its repro). The full run (``--cases 10000``) writes ``tools/results/fuzz.json``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "tools" / "fuzz.py"


def _fuzz_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spa_fuzz_tool", FUZZ)
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is created
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path: Path, *args: str, timeout: int = 300) -> dict:
    out = tmp_path / "fuzz"
    res = subprocess.run([sys.executable, str(FUZZ), "--out", str(out), "--json", str(out / "fuzz.json"), "--quiet",
                          *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert (out / "fuzz.json").exists(), res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "fuzz.json").read_text())


def test_fuzz_sample_has_no_crash(tmp_path: Path) -> None:
    summary = _run(tmp_path, "--cases", "150", "--seed", "1", "--random-models", "12", "--timeout", "30")
    counts = summary["counts"]
    assert sum(counts.values()) == 150
    unknown = [c for c in summary["crashes"] if c["kind"] in ("crash", "hang", "wrong")]
    assert not unknown, json.dumps(unknown, indent=2)[:4000]
    assert counts["success"] >= 10 and counts["clean_error"] >= 30  # the sample exercises both paths
    assert summary["oracle"].get("checked", 0) >= 5  # and the mask oracle on valid results


def test_native_abort_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    summary = _run(tmp_path, "--cases", "5", "--seed", "2", "--random-models", "2", "--abort-at", "2")
    assert sum(summary["counts"].values()) == 5
    aborts = [c for c in summary["crashes"] if c["signature"].startswith("abort@")]
    assert len(aborts) == 1 and aborts[0]["cases"] == [2]
    saved = Path(aborts[0]["examples"][0])
    assert saved.exists() and saved.with_suffix(".log").exists()


def test_every_mutation_applies() -> None:
    fuzz = _fuzz_module()
    from tests.test_hostile_inputs import cnn_model, qdq_cnn_model

    for seed_model in (cnn_model(), qdq_cnn_model()):
        for name, mutate in fuzz.PROTO_MUTATIONS.items():
            for k in range(5):
                m = onnx.ModelProto()
                m.CopyFrom(seed_model)
                step = mutate(m, np.random.default_rng(k))
                assert isinstance(step, str) and step, name
                onnx.ModelProto.FromString(m.SerializeToString())  # still a message
        data = seed_model.SerializeToString()
        for name, mutate in fuzz.BYTES_MUTATIONS.items():
            new, step = mutate(data, np.random.default_rng(0))
            assert new != data and step, name


def test_cases_are_reproducible_one_by_one() -> None:
    fuzz = _fuzz_module()
    seeds = fuzz.catalogue_models()
    a, b = fuzz.make_case(17, 3, seeds), fuzz.make_case(17, 3, seeds)
    assert (a.source, a.steps, a.data, a.options) == (b.source, b.steps, b.data, b.options)
    assert fuzz.make_case(18, 3, seeds).data != a.data or fuzz.make_case(18, 3, seeds).source != a.source


@pytest.mark.parametrize("exc,expected", [
    (ValueError("x"), "ValueError@"),
    (KeyError("y"), "KeyError@"),
])
def test_signature_names_the_exception(exc: BaseException, expected: str) -> None:
    fuzz = _fuzz_module()
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001
        assert fuzz.signature(caught).startswith(expected)
