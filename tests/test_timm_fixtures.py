"""timm architectures as users export them (``tests/fixtures/timm``, built by ``tools/make_timm_fixtures.py
--commit`` from timm with random weights and small widths; no extra needed here): every file prunes at
``--ratio 0.5`` oracle-exact, ONNX Runtime loads the result, and the families that used to block prune
their channels — ConvNeXt-V2 through global response normalisation, gMLP through its spatial gating unit,
ResNetV2-BiT through its (decomposed) GroupNorms and standardised weights, NFNet through its scaled
weight standardisation. MACs after/before are pinned per fixture (a regression shows as a rise).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import onnx
import pytest

import spa
from spa.runtime.session import session

FIXTURES = Path(__file__).parent / "fixtures" / "timm"
#: family -> MACs after / before at ratio 0.5 (both exporters; spa's count), with a little slack
MACS_AT_HALF = {"convnextv2": 0.72, "efficientnet": 0.44, "gmlp": 0.59, "levit": 0.33, "nfnet": 0.26,
                "pvt_v2": 0.88, "resmlp": 0.35, "resnetv2_bit": 0.46, "swin": 0.82, "vit": 0.58}
CASES = [f"{f}_{e}" for f in MACS_AT_HALF for e in ("legacy", "dynamo")]
#: families whose channel groups were all blocked before issue 14's rules; now most of them prune
WALLS = {"convnextv2": 4, "gmlp": 2, "resnetv2_bit": 13, "nfnet": 24}


@cache
def _pruned(case: str) -> spa.PruneResult:
    return spa.prune(str(FIXTURES / f"{case}.onnx"), ratio=0.5, emit_masked=True)


def test_fixtures_are_there_with_their_provenance() -> None:
    for case in CASES:
        path = FIXTURES / f"{case}.onnx"
        assert path.stat().st_size <= 420_000, case
        m = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in m.metadata_props}
        family, exporter = case.rsplit("_", 1)
        assert meta["family"] == family and meta["exporter"] == exporter and meta["timm"], case
        assert m.ir_version <= 10 and m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


@pytest.mark.parametrize("case", CASES)
def test_prunes_oracle_exact(case: str) -> None:
    r = _pruned(case)
    assert r.masked is not None and r.plan.groups
    v = spa.verify(r.model, r.masked)
    assert v.ok, v.to_json()
    session(r.model)  # ONNX Runtime loads the pruned model
    family = case.rsplit("_", 1)[0]
    assert int(r.report["macs_after"]) <= MACS_AT_HALF[family] * int(r.report["macs_before"])  # type: ignore[call-overload]


@pytest.mark.parametrize("case", [f"{f}_{e}" for f in WALLS for e in ("legacy", "dynamo")])
def test_former_walls_prune(case: str) -> None:
    """Counted on the analysis: with latency-chosen counts a prune may re-analyse grouped convs by whole
    groups (fewer, larger groups) when the latency table says that is faster."""
    assert len(spa.analyze(str(FIXTURES / f"{case}.onnx")).prunable) >= WALLS[case.rsplit("_", 1)[0]]
