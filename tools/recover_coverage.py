"""Which models the ``spa recover`` torch executor runs: forward pass vs ONNX Runtime (max |diff| <= 1e-4,
relative to max(1, max|output|)) on the tiny zoo (legacy and dynamo exports, BN folded and kept), the
exporter fixtures and the demo CNN. Writes ``tools/results/recover_coverage.json``.

    PYTHONPATH=. python tools/recover_coverage.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from spa.errors import SpaError
from spa.graph.io import atomic_path, load_model
from spa.recover.executor import GraphModule
from spa.runtime.feeds import random_inputs
from spa.runtime.session import session

ROOT = Path(__file__).resolve().parents[1]


def check(model: onnx.ModelProto) -> dict[str, object]:
    sess = session(model)
    feeds = random_inputs(sess, seed=0, batch=2)
    ref = sess.run(None, feeds)
    try:
        mod = GraphModule(model)
        with torch.no_grad():
            got = mod({k: torch.from_numpy(v) for k, v in feeds.items()})
    except SpaError as exc:
        return {"ok": False, "error": str(exc)}
    err = max(float(np.max(np.abs(np.asarray(g.numpy(), dtype=np.float64) - r))) / max(1.0, float(np.max(np.abs(r))))
              for g, r in zip(got, ref))
    return {"ok": err <= 1e-4, "max_rel_diff": err, "trainable": len(mod.trainable)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="legacy export only")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from models.export import export_onnx
    from models.registry import TINY_MODELS

    rows: dict[str, dict[str, object]] = {}
    files = sorted((ROOT / "tests/fixtures").glob("*.onnx")) + [ROOT / "models/demo_cnn.onnx"]
    for f in files:
        rows[f.relative_to(ROOT).as_posix()] = check(load_model(f))
    variants = [("legacy", False)] if args.quick else [("legacy", False), ("legacy", True), ("dynamo", False)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, factory in TINY_MODELS.items():
            for exporter, keep_bn in variants:
                key = f"{name}/{exporter}{'+bn' if keep_bn else ''}"
                try:
                    model, shape = factory()
                    path = Path(tmp) / f"{name}.onnx"
                    export_onnx(model, shape, path, exporter=exporter, keep_bn=keep_bn)
                except Exception as exc:  # noqa: BLE001 - an exporter failure is not the executor's
                    rows[key] = {"ok": None, "error": f"export failed: {str(exc).splitlines()[0][:120]}"}
                    continue
                rows[key] = check(load_model(path))
    for k, v in rows.items():
        print(f"{k:40s} {'ok' if v['ok'] else ('skip' if v['ok'] is None else 'FAIL')} "
              f"{v.get('max_rel_diff', '')} {v.get('error', '')}")
    ok = sum(1 for v in rows.values() if v["ok"])
    tried = sum(1 for v in rows.values() if v["ok"] is not None)
    print(f"covered {ok}/{tried}")
    out = ROOT / "tools/results/recover_coverage.json"
    with atomic_path(out) as tmp_path:
        tmp_path.write_text(json.dumps({"covered": ok, "tried": tried, "models": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
