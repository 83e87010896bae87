#!/usr/bin/env python3
"""Exporter benchmark (issue 14): every model spa can build here, pruned at one ratio.

Models: the committed exporter fixtures (``tests/fixtures/*.onnx``: Keras, tf2onnx, jax2onnx, paddle2onnx),
``models/demo_cnn.onnx``, the tiny zoo (``models.registry.TINY_MODELS``) exported by both PyTorch exporters
(legacy TorchScript and dynamo), and the import-wall fixtures of ``tests/import_fixtures.py`` (PP-OCR-style
classifier with ``-1`` dims, ``quantize_dynamic`` CNN/MLP per-tensor and per-channel, opset-15 ``If`` models,
an opset-9 CNN, a text detector with dynamic H/W, a dynamic-sequence attention block).

Per model: channel groups prunable / blocked, MACs before and after ``spa prune --ratio`` (spa's count, at
the shapes it reports in ``mac_shapes``, and an independent count from ONNX Runtime's real tensor shapes at
the same shapes, ``tests/macs_reference.py``, of the model as ONNX Runtime runs it: input-independent
subgraphs folded, as spa folds them), the mask oracle (pruned == masked twin), whether ONNX Runtime
loads the output, and the prune time. A rich table on stdout, JSON in ``tools/results/bench_exporters.json``.

    python tools/bench_exporters.py                 # everything (about a minute)
    python tools/bench_exporters.py --no-zoo        # without torch exports
    python tools/bench_exporters.py --zoo /tmp/timm_zoo   # every .onnx of a built zoo (tools/make_timm_fixtures.py)
    python tools/bench_exporters.py --zoo /tmp/timm_zoo --shard 0/2 --json a.json   # two parallel halves,
    python tools/bench_exporters.py --zoo /tmp/timm_zoo --merge a.json b.json       # then one table and JSON

With ``--zoo DIR`` (files named ``<family>_<exporter>.onnx``) only that folder is benchmarked, results go to
``tools/results/bench_zoo_<DIR name>.json``, and each row also has the first blocking reason of every blocked
group (``blockers``), whether the model meets issue 14's bar (MACs after ≤ 0.6 of before, else the reasons),
and the summary counts the most common reasons (node names and sizes stripped) over the whole zoo.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spa  # noqa: E402 - after the path set-up: the tool runs from a checkout
from spa.runtime.session import session  # noqa: E402
from tests import import_fixtures as fx  # noqa: E402
from tests.macs_reference import independent_macs  # noqa: E402

RESULTS = ROOT / "tools" / "results" / "bench_exporters.json"
MACS_BAR = 0.6  # issue 14: MACs after --ratio 0.5 at most this fraction of before, or a named reason
Source = Callable[[], onnx.ModelProto]


def _import_fixtures(tmp: Path) -> Iterator[tuple[str, str, Source]]:
    yield "ppocr_cls (-1 dims)", "onnx.helper", fx.ppocr_classifier
    for family, build in (("cnn", fx.float_cnn), ("mlp", fx.float_mlp)):
        for pc in (False, True):
            folder = tmp / f"dynq_{family}_{int(pc)}"
            folder.mkdir(exist_ok=True)
            yield (f"dynq_{family} ({'per-channel' if pc else 'per-tensor'})", "quantize_dynamic",
                   lambda b=build, f=folder, p=pc: fx.dynamic_quantized(b(13), str(f), per_channel=p))
    yield "if_input (opset 15)", "onnx.helper", fx.if_model
    yield "if_shape (opset 15)", "onnx.helper", lambda: fx.if_model(shape_condition=True)
    yield "cnn (opset 9)", "onnx.helper", fx.old_opset_cnn
    yield "text_detector (dyn H,W)", "onnx.helper", fx.text_detector
    yield "attention (dyn seq)", "onnx.helper", fx.dynamic_sequence_attention


def _files() -> Iterator[tuple[str, str, Source]]:
    for path in sorted((ROOT / "tests" / "fixtures").glob("*.onnx")):
        exporter = path.stem.split("_")[0]
        yield path.stem, exporter, lambda p=path: onnx.load(str(p))
    yield "demo_cnn", "torch (legacy)", lambda: onnx.load(str(ROOT / "models" / "demo_cnn.onnx"))


def _zoo(tmp: Path, exporters: list[str]) -> Iterator[tuple[str, str, Source]]:
    import torch

    from models.export import export_onnx
    from models.registry import TINY_MODELS

    torch.set_num_threads(1)
    for name in TINY_MODELS:
        for exporter in exporters:
            def build(n: str = name, e: str = exporter) -> onnx.ModelProto:
                model, shape = TINY_MODELS[n]()
                path = tmp / f"{n}_{e}.onnx"
                export_onnx(model, shape, path, exporter=e, verify=False)  # type: ignore[arg-type]
                return onnx.load(str(path))
            yield name, f"torch {exporter}", build


def _zoo_dir(folder: Path) -> Iterator[tuple[str, str, Source]]:
    for path in sorted(folder.glob("*.onnx")):
        family, _, exporter = path.stem.rpartition("_")
        yield family or path.stem, exporter, lambda p=path: onnx.load(str(p))


def reason_kind(reason: str) -> str:
    """A reason with node/tensor names and numbers stripped, to count how often each kind blocks."""
    s = re.sub(r"'[^']*'", "'…'", reason)
    s = re.sub(r"\b\d+\b", "N", s)
    return s[:160]


def _blockers(analysis: spa.Analysis) -> list[dict[str, object]]:
    """Each blocked group that owns weights: its label, size and first reason (largest groups first)."""
    out = []
    for g in analysis.groups:
        if g.prunable or not any(m.kind == "weight" for m in g.members):
            continue
        out.append({"group": g.label, "channels": g.channels, "kind": g.kind,
                    "reason": g.reasons[0] if g.reasons else "(no reason)"})
    return out


def _candidate_shapes(model: onnx.ModelProto, counted: dict[str, list[int]]) -> list[dict[str, tuple[int, ...]]]:
    """Input shapes to verify at: the counted ones, then the same with every dynamic dimension but the
    batch and a Conv-read channel axis set to 64, 32, 128 or 16 (a ViT with a fixed 64×64 position table
    refuses the representative 224)."""
    declared = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
                for i in model.graph.input}
    out = [{k: tuple(v) for k, v in counted.items()}]
    for size in (64, 32, 128, 16):
        cand = {}
        for k, v in counted.items():
            dims = declared.get(k, [])
            cand[k] = tuple(size if a >= 1 and a < len(dims) and dims[a] is None and not (a == 1 and len(v) == 4
                            and v[1] <= 4) else d for a, d in enumerate(v))
        out.append(cand)
    return out


def bench_one(name: str, exporter: str, build: Source, ratio: float) -> dict[str, object]:
    row: dict[str, object] = {"model": name, "exporter": exporter}
    try:
        model = build()
    except Exception as exc:  # noqa: BLE001 - an export that fails is a row, not a crash
        return row | {"error": f"build: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    start = time.perf_counter()
    try:
        r = spa.prune(model, ratio=ratio, emit_masked=True)
    except spa.SpaError as exc:
        return row | {"error": f"prune: {exc}"[:300], "time_s": round(time.perf_counter() - start, 3)}
    elapsed = time.perf_counter() - start
    rep = r.report
    shapes = {k: list(v) for k, v in rep["mac_shapes"].items()}  # type: ignore[attr-defined]
    row |= {
        "groups": rep["num_groups"], "prunable": rep["num_prunable"], "pruned": rep["num_pruned"],
        "blocked": int(rep["num_groups"]) - int(rep["num_prunable"]),  # type: ignore[call-overload]
        "macs_before": rep["macs_before"], "macs_after": rep["macs_after"], "mac_shapes": shapes,
        "mac_shapes_from": rep["mac_shapes_from"], "converted_from_opset": rep["converted_from_opset"],
        "ort_check": rep["ort_check"], "time_s": round(elapsed, 3), "blockers": _blockers(r.analysis),
    }
    fraction = int(rep["macs_after"]) / max(1, int(rep["macs_before"]))  # type: ignore[call-overload]
    row["meets_bar"] = fraction <= MACS_BAR
    try:
        ind_before, ind_after = (independent_macs(m, shapes, folded=True) for m in (model, r.model))
        row |= {"macs_before_independent": ind_before, "macs_after_independent": ind_after}
    except Exception as exc:  # noqa: BLE001 - the reference counter runs ONNX Runtime: report, go on
        row["independent_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    try:
        assert r.masked is not None
        v = None
        for cand in _candidate_shapes(model, shapes):  # the counted shapes first, then smaller dynamic sizes
            try:
                v = spa.verify(r.model, r.masked, shapes=cand)
                row["oracle_shapes"] = {k: list(x) for k, x in cand.items()}
                break
            except spa.SpaError:
                continue
        if v is None:  # ... else at sizes spa's own probe finds (a 64-position BERT refuses 128 tokens)
            v = spa.verify(r.model, r.masked)
            row["oracle_shapes"] = "probed"
        row["oracle"] = "exact" if v.ok else f"FAIL (max abs {max(d.max_abs for d in v.diffs):.3g})"
        session(r.model)
    except Exception as exc:  # noqa: BLE001 - a failed oracle run is a result
        row["oracle"] = f"error: {str(exc).splitlines()[0][:200]}"
    return row


def _fraction(a: object, b: object) -> str:
    return f"{int(a) / int(b):.3f}" if isinstance(a, int) and isinstance(b, int) and b else "-"  # noqa: RUF100


def _table(rows: list[dict[str, object]], ratio: float) -> Table:
    t = Table(title=f"spa prune --ratio {ratio}: exporters and import walls")
    for col in ("model", "exporter", "groups", "prunable", "blocked", "MACs after/before (spa)",
                "(independent)", "spa/indep before", "oracle", "ORT", "time s", f"≤{MACS_BAR}", "first blocker"):
        t.add_column(col, overflow="fold")
    for r in rows:
        if "error" in r:
            t.add_row(str(r["model"]), str(r["exporter"]), *["-"] * 7, "[red]" + str(r["error"])[:60],
                      str(r.get("time_s", "-")), "-", "-")
            continue
        agree = _fraction(r["macs_before"], r.get("macs_before_independent"))
        t.add_row(str(r["model"]), str(r["exporter"]), str(r["groups"]), str(r["prunable"]), str(r["blocked"]),
                  _fraction(r["macs_after"], r["macs_before"]),
                  _fraction(r.get("macs_after_independent"), r.get("macs_before_independent")), agree,
                  str(r["oracle"]), "ok" if r["ort_check"] == "ok" else str(r["ort_check"])[:30], str(r["time_s"]),
                  "yes" if r.get("meets_bar") else "[yellow]no",
                  str(max(r["blockers"], key=lambda b: b["channels"])["reason"])[:80]  # type: ignore[arg-type, index]
                  if r.get("blockers") else "")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--no-zoo", action="store_true", help="skip the torch exports of models.registry.TINY_MODELS")
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--zoo", type=Path, help="benchmark only the .onnx files of this folder")
    ap.add_argument("--shard", default="0/1", help="K/N: only every N-th model from the K-th (parallel runs)")
    ap.add_argument("--merge", nargs="+", type=Path, help="merge these result files (of shards) into --json; "
                    "a model in several keeps its last row")
    ap.add_argument("--json", type=Path, default=None, help=f"default {RESULTS}")
    args = ap.parse_args(argv)
    k, n = (int(v) for v in args.shard.split("/"))
    if args.json is None:
        args.json = RESULTS.with_name(f"bench_zoo_{args.zoo.name}.json") if args.zoo else RESULTS
    console = Console(width=200)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sources = list(_zoo_dir(args.zoo)) if args.zoo else list(_files()) + list(_import_fixtures(tmp))
        if not args.no_zoo and not args.zoo:
            sources += list(_zoo(tmp, args.exporters.split(",")))
        sources = [] if args.merge else sources[k::n]
        for name, exporter, build in sources:
            try:
                rows.append(bench_one(name, exporter, build, args.ratio))
            except Exception:  # noqa: BLE001 - one model's surprise must not lose the others' rows
                rows.append({"model": name, "exporter": exporter, "error": traceback.format_exc(limit=2)[-300:]})
            row = rows[-1]
            console.print(f"{name} ({exporter}): {row.get('prunable', '-')}/{row.get('groups', '-')} prunable, "
                          f"MACs {_fraction(row.get('macs_after'), row.get('macs_before'))}, "
                          f"oracle {row.get('oracle', row.get('error', '-'))}, {row.get('time_s', '-')} s",
                          highlight=False)
    if args.merge:
        merged: dict[tuple[str, str], dict[str, object]] = {}
        for f in args.merge:
            for r in json.loads(Path(f).read_text())["rows"]:
                merged[(str(r["model"]), str(r["exporter"]))] = r
        rows = [r for _, r in sorted(merged.items())] + rows
    console.print(_table(rows, args.ratio))
    ok = [r for r in rows if "error" not in r]
    within = [r for r in ok if isinstance(r.get("macs_before_independent"), int) and r["macs_before_independent"]
              and abs(int(r["macs_before"]) - int(r["macs_before_independent"]))  # type: ignore[call-overload]
              <= 0.01 * int(r["macs_before_independent"])]  # type: ignore[call-overload]
    summary = {"models": len(rows), "pruned_ok": len(ok), "oracle_exact": sum(r.get("oracle") == "exact" for r in ok),
               "macs_within_1pct": len(within), "meets_bar": sum(bool(r.get("meets_bar")) for r in ok),
               "ratio": args.ratio, "spa_version": spa.__version__}
    kinds: dict[str, int] = {}
    for r in ok:
        for b in r.get("blockers", []):  # type: ignore[attr-defined]
            k = reason_kind(str(b["reason"]))
            kinds[k] = kinds.get(k, 0) + 1
    summary["top_blockers"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:25])
    console.print(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2, default=str) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
