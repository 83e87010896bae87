#!/usr/bin/env python3
"""Write ``tools/results/bench_zoo.md`` from the zoo results of ``tools/bench_exporters.py --zoo DIR``.

Each cell: prunable/groups · MACs after/before at the benchmark's ratio, spa's count / the independent count
(``tests/macs_reference.py``, of the model as ONNX Runtime runs it; '-' where it cannot run at the counted
shapes) · mask oracle; the counted shapes where they are not the declared ones. No measuring here: the
table only re-reads the JSON files.

    python tools/zoo_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = (
    ("bench_zoo_timm.json", "timm (95 architectures, legacy opset 17 with BatchNorm kept, dynamo opset 18; "
     "64×64 where accepted, batch 1)", ("legacy", "dynamo")),
    ("bench_zoo_hf_enc.json", "Hugging Face encoders and vision models (17 architectures; dynamic optimum "
     "exports counted at the shapes `spa` chose, see `mac_shapes_from`)", ("optimum", "dynamo", "legacy")),
    ("bench_zoo_ultralytics.json", "Ultralytics YOLOv8n (own exporter, opset 17, 64×64)", ("ultralytics",)),
)
HEAD = ("# Zoo benchmark at `--ratio 0.5` (issue 14)\n\nWritten by `tools/zoo_table.py` from `bench_zoo_timm.json`, "
        "`bench_zoo_hf_enc.json`, `bench_zoo_ultralytics.json` (`tools/bench_exporters.py --zoo DIR`, fixtures by "
        "`tools/make_timm_fixtures.py`, `tools/make_hf_encoders.py`, `tools/make_ultralytics_fixtures.py`). Each "
        "cell: prunable/groups · MACs after/before, spa's count / the independent count (`tests/macs_reference.py`"
        " of the model as ONNX Runtime runs it, input-independent subgraphs folded; '-' where ONNX Runtime cannot "
        "run the model at the counted shapes) · mask oracle; `@` the counted input size where spa chose it "
        "(dynamic inputs). Each JSON row also lists the first blocking reason of every blocked group "
        "(`blockers`). The HF decoders are in `bench_exporters.json` / `tests/test_hf_decoders.py`.\n")


def _fraction(after: object, before: object) -> str:
    return f"{int(after) / int(before):.3f}" if isinstance(after, int) and isinstance(before, int) and before else "-"


def cell(row: dict[str, object] | None) -> str:
    """One model × exporter: ``prunable/groups · spa / independent · oracle [@ shapes]``."""
    if row is None:
        return "not built"
    if "error" in row:
        return f"error: {str(row['error'])[:60]}"
    text = (f"{row['prunable']}/{row['groups']} · {_fraction(row['macs_after'], row['macs_before'])} / "
            f"{_fraction(row.get('macs_after_independent'), row.get('macs_before_independent'))} · {row['oracle']}")
    if str(row.get("mac_shapes_from", "")).startswith("representative"):
        sizes = sorted({"×".join(str(d) for d in v[1:]) for v in row["mac_shapes"].values()})  # type: ignore[attr-defined]
        text += f" @ {', '.join(sizes)}"
    return text


def section(name: str, title: str, exporters: tuple[str, ...]) -> str:
    data = json.loads((RESULTS / name).read_text())
    rows = {(str(r["model"]), str(r["exporter"])): r for r in data["rows"]}
    lines = [f"## {title}", "", "| architecture | " + " | ".join(exporters) + " |", "|---" * (len(exporters) + 1) + "|"]
    for model in sorted({m for m, _ in rows}):
        lines.append(f"| {model} | " + " | ".join(cell(rows.get((model, e))) for e in exporters) + " |")
    summary = {k: v for k, v in data["summary"].items() if k != "top_blockers"}
    lines += ["", "cells: prunable/groups · MACs after/before at ratio 0.5, spa / independent · oracle", "",
              f"summary: {json.dumps(summary)}", ""]
    return "\n".join(lines)


def main() -> int:
    text = HEAD + "\n" + "\n".join(section(*s) for s in SECTIONS)
    (RESULTS / "bench_zoo.md").write_text(text)
    print(f"wrote {RESULTS / 'bench_zoo.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
