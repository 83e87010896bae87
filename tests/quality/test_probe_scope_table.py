"""tools/probe_scope_table.py: the comparison of local and whole-model probes reads bench_quality rows."""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
try:
    import probe_scope_table as pst
finally:
    sys.path.pop(0)


def _row(curves: dict[str, list[float]], ratios: dict[str, float], retention: float) -> dict[str, object]:
    return {"retention": {"0.5": retention},
            "distortion": {"0.5": {"curves": curves, "ratios": ratios, "probe_seconds": 1.0}}}


def test_compare_gives_rank_correlation_and_ratio_agreement() -> None:
    whole = _row({"a": [0.1, 0.2], "b": [0.3, 0.6], "c": [0.05, 0.09]}, {"a": 0.5, "b": 0.25, "c": 0.75}, 0.98)
    same_order = _row({"a": [0.01, 0.02], "b": [0.03, 0.06], "c": [0.004, 0.009]},
                      {"a": 0.5, "b": 0.25, "c": 0.5}, 0.97)
    rows = pst.compare({"model": "m", "rows": {pst.WHOLE: whole, pst.LOCAL: same_order}})
    assert len(rows) == 1
    r = rows[0]
    assert r["spearman"] == 1.0 and math.isclose(r["same_ratio"], 2 / 3)
    assert (r["retention_model"], r["retention_local"]) == (0.98, 0.97)
    reversed_ = _row({"a": [0.2, 0.1], "b": [0.06, 0.03], "c": [0.6, 0.3]}, {}, 0.5)
    worse = pst.compare({"model": "m", "rows": {pst.WHOLE: whole, pst.LOCAL: reversed_}})[0]
    assert worse["spearman"] < 0
    assert pst.compare({"model": "m", "rows": {pst.WHOLE: whole}}) == []
