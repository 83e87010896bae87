"""The ``--html`` page (spa/bench/page.py): one self-contained file for prune, recover and sweep reports.

Every page is checked the same way (:func:`check_page`): a strict HTML5 parse (html5lib raises on any
parse error), no script, stylesheet link or external URL, every image an inline PNG that Pillow decodes to
a non-trivial picture. Where a headless Chromium is installed (Debian: ``apt-get install
chromium-headless-shell``), :func:`test_page_renders_in_headless_chromium` also loads a page in it and
checks that every image decoded; elsewhere it is skipped.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import spa
from spa.bench import page, plot
from spa.errors import UsageError
from tests.bench.conftest import one_line_error, run_cli, small_cnn

html5lib = pytest.importorskip("html5lib")
PIL_Image = pytest.importorskip("PIL.Image")
needs_plot = pytest.mark.skipif(not plot.plotting_available(), reason="needs matplotlib (spa[plot])")
EVIL = '<script>alert("x")</script>&'
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell")


class _Refs(HTMLParser):
    """Collects tags and every src/href attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "action", "data")]


def check_page(text: str) -> list[tuple[int, int]]:
    """Assert the page is strict HTML5, self-contained and script-free; the sizes of its decoded images."""
    html5lib.HTMLParser(strict=True).parse(text)  # raises html5lib.html5parser.ParseError
    refs = _Refs()
    refs.feed(text)
    assert text.startswith("<!DOCTYPE html>")
    assert "script" not in refs.tags and "link" not in refs.tags and "iframe" not in refs.tags
    assert "url(" not in text and "@import" not in text and "http://" not in text and "https://" not in text
    sizes = []
    for ref in refs.refs:
        assert ref.startswith("data:image/png;base64,"), ref[:60]
        im = PIL_Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1], validate=True)))
        im.load()
        assert im.width >= 200 and im.height >= 150, im.size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 8, "an image of nearly one colour"
        sizes.append(im.size)
    return sizes


def _text(fragment: str) -> str:
    """The page with tags stripped (to find the numbers it shows)."""
    return re.sub(r"<[^>]+>", " ", fragment)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("page")
    onnx.save(small_cnn(1), d / "m.onnx")
    np.save(d / "x.npy", np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32))
    return d / "m.onnx", d / "x.npy"


def _prune_report(model: Path, **kw: Any) -> dict[str, Any]:
    res = spa.prune(str(model), **kw)
    return {"input": str(model), "output": "pruned.onnx"} | res.report


def test_prune_page_without_allocation(model_and_data: tuple[Path, Path]) -> None:
    rep = _prune_report(model_and_data[0], ratio=0.5)
    assert rep["allocation"] is None
    text = page.write_html("p.html", prune=rep).read_text(encoding="utf-8")
    check_page(text)
    plain = _text(text)
    for key in ("params", "macs"):
        b, a = rep[f"{key}_before"], rep[f"{key}_after"]
        assert page._num(b) in plain and page._num(a) in plain and f"{a / b:.3f}" in plain
    prunable = [g for g in rep["groups"] if g["prunable"]]
    assert prunable and all(g["label"] in plain for g in rep["groups"])
    for g in prunable:  # the kept part of each bar is after/before of it
        assert f'<span style="width:{100.0 * g["channels_after"] / g["channels_before"]:.1f}%">' in text
    assert text.count('class="bar') == len(rep["groups"])
    ids = [int(m) for m in re.findall(r"<tr><td>(\d+)</td><td class=\"l\">", text)]
    assert ids == sorted(g["id"] for g in rep["groups"])
    assert "Sensitivity allocation" not in text and str(rep["predicted_latency"]["efficiency"]) in plain


@needs_plot
def test_prune_page_with_allocation(model_and_data: tuple[Path, Path]) -> None:
    model, data = model_and_data
    rep = _prune_report(model, calibration=str(data), target_macs=0.5)
    alloc = rep["allocation"]
    assert alloc and alloc["groups"]
    text = page.write_html("a.html", prune=rep).read_text(encoding="utf-8")
    sizes = check_page(text)
    assert len(sizes) == 2  # sensitivity curves, predicted vs measured
    plain = _text(text)
    assert f"{alloc['predicted_distortion']:.6g}" in plain and f"{alloc['measured_distortion']:.6g}" in plain
    for g in alloc["groups"]:
        assert f"{g['ratio']:.3f}" in plain and f"{g['sensitivity'][-1]:.4g}" in plain
    predicted = [float(m) for m in re.findall(r"<td class=\"\">([-0-9.e]+)</td></tr>", text.split("Sensitivity")[1])]
    assert sum(predicted) == pytest.approx(alloc["predicted_distortion"], rel=1e-3, abs=1e-6)


def test_names_from_the_model_are_escaped(tmp_path: Path) -> None:
    m = small_cnn(1)
    old = m.graph.node[0].input[1]
    for init in m.graph.initializer:
        if init.name == old:
            init.name = EVIL
    m.graph.node[0].input[1] = EVIL
    onnx.save(m, tmp_path / "evil.onnx")
    rep = _prune_report(tmp_path / "evil.onnx", ratio=0.5)
    assert any(EVIL in g["label"] for g in rep["groups"])
    text = page.render(prune=rep, title=EVIL)
    check_page(text)
    assert "<script" not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in text


def test_recover_page_and_spa_report(model_and_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    model, data = model_and_data
    code, _, err = run_cli(capsys, "prune", model, "--ratio", "0.5", "-o", "p.onnx", "--report", "p.json",
                           "--html", "p.html", "--emit-masked", "m.onnx")
    assert code == 0, err
    check_page(Path("p.html").read_text(encoding="utf-8"))
    code, _, err = run_cli(capsys, "verify", model, "p.onnx", "--masked", "m.onnx", "--json", "v.json")
    assert code == 0, err
    code, _, err = run_cli(capsys, "recover", "p.onnx", "--teacher", model, "--data", data, "-o", "r.onnx",
                           "--steps", "6", "--batch", "4", "--device", "cpu", "--json", "r.json", "--html", "r.html")
    assert code == 0, err
    summary = json.loads(Path("r.json").read_text())
    text = Path("r.html").read_text(encoding="utf-8")
    assert len(check_page(text)) == (1 if plot.plotting_available() else 0)
    assert "Recover (distillation)" in text and str(summary["loss_last"]) in text and "Channels per group" not in text
    code, out, err = run_cli(capsys, "report", "r.json", "v.json", "p.json", "--html", "both.html")
    assert code == 0 and "recover, verify, prune" in out, err
    both = Path("both.html").read_text(encoding="utf-8")
    check_page(both)
    sections = [both.index(h) for h in ("Summary", "Mask oracle", "Channels per group", "Recover (distillation)")]
    assert sections == sorted(sections)
    verdict = json.loads(Path("v.json").read_text())
    assert verdict["ok"] and "<b>agree</b>" in both and f"{verdict['outputs'][0]['cosine']:.6f}" in both
    code, _, err = run_cli(capsys, "report", "p.json", "p.json", "--html", "two.html")
    assert code == 1 and not Path("two.html").exists()
    one_line_error(err, "p.json", "second prune report")
    code, _, err = run_cli(capsys, "report", "p.json", "--html", "both.html")
    assert code == 1
    one_line_error(err, "both.html exists", "--force")


@needs_plot
def test_sweep_page(model_and_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "sweep", model_and_data[0], "--ratios", "0.5", "-o", "sw", "--iters", "3",
                           "--warmup", "1", "--provider", "cpu", "--html", "sweep.html")
    assert code == 0, err
    data = json.loads(Path("sw/sweep.json").read_text())
    text = Path("sweep.html").read_text(encoding="utf-8")
    assert len(check_page(text)) == 1
    plain = _text(text)
    for r in data["rows"]:
        assert str(r["median_ms"]) in plain and str(r["cosine"]) in plain
    assert page.report_kind(data) == "sweep"


def test_bad_reports_and_destinations(capsys: pytest.CaptureFixture[str]) -> None:
    Path("x.json").write_text('{"a": 1}')
    code, _, err = run_cli(capsys, "report", "x.json", "--html", "x.html")
    assert code == 1
    one_line_error(err, "x.json", "not a report")
    with pytest.raises(UsageError, match="no report"):
        page.render()
    code, _, err = run_cli(capsys, "prune", "m.onnx", "--dry-run", "--html", "x.html")
    assert code == 1
    one_line_error(err, "--html", "--dry-run")


def test_write_is_atomic(model_and_data: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rep = _prune_report(model_and_data[0], ratio=0.5)
    dest = tmp_path / "p.html"
    dest.write_text("old page")
    real = Path.write_text

    def half_then_fail(self: Path, text: str, *a: Any, **kw: Any) -> int:
        real(self, text[:100], *a, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(UsageError, match=r"could not write .*p\.html: No space left"):
        page.write_html(dest, prune=rep)
    monkeypatch.undo()
    assert dest.read_text() == "old page" and sorted(p.name for p in tmp_path.iterdir()) == ["p.html"]


def test_without_matplotlib_the_page_has_tables_and_bars(model_and_data: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, data = model_and_data
    monkeypatch.setattr(importlib.import_module("spa.bench.plot"), "plotting_available", lambda: False)
    code, _, err = run_cli(capsys, "prune", model, "--calib", data, "--target-macs", "0.5", "-o", "p.onnx",
                           "--report", "p.json", "--html", "n.html")
    assert code == 0 and "spa: warning: n.html: plots need matplotlib: pip install 'spa[plot]'" in err, err
    rep = json.loads(Path("p.json").read_text())
    text = Path("n.html").read_text(encoding="utf-8")
    assert check_page(text) == [] and "<img" not in text and "pip install &#x27;spa[plot]&#x27;" in text
    assert "Sensitivity allocation" in text and text.count('class="bar') == len(rep["groups"])
    assert f"{rep['allocation']['measured_distortion']:.6g}" in text


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


@needs_plot
@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (apt-get install chromium-headless-shell)")
def test_page_renders_in_headless_chromium(model_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    """Load a page with both plots in Chromium; a probe script added to a copy reports, after the load
    event, how many images decoded and their widths; a screenshot of the page is not blank."""
    model, data = model_and_data
    text = page.render(prune=_prune_report(model, calibration=str(data), target_macs=0.5))
    probe = ('<script>addEventListener("load",()=>{const i=[...document.images];document.title="PROBE "+'
             'i.filter(x=>x.complete&&x.naturalWidth>0).length+"/"+i.length+" "+document.body.scrollHeight})'
             "</script></body>")
    (tmp_path / "probe.html").write_text(text.replace("</body>", probe), encoding="utf-8")
    (tmp_path / "page.html").write_text(text, encoding="utf-8")
    flags = [str(_browser()), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", (tmp_path / "probe.html").as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    found = re.search(r"<title>PROBE (\d+)/(\d+) (\d+)</title>", dom)
    assert found, dom[:500]
    assert found[1] == found[2] == "2" and int(found[3]) > 1000
    subprocess.run([*flags, "--window-size=1200,2400", f"--screenshot={tmp_path / 'shot.png'}",
                    (tmp_path / "page.html").as_uri()], capture_output=True, timeout=120, check=True)
    shot = PIL_Image.open(tmp_path / "shot.png").convert("RGB")
    colours = shot.getcolors(maxcolors=1 << 20)
    assert shot.size == (1200, 2400) and (colours is None or len(colours) > 50)
    blue = sum(n for n, (r, g, b) in (colours or []) if b > 150 and r < 120)  # the bars and the curves
    assert blue > 1000


@needs_plot
def test_many_groups_are_capped_in_the_figures(model_and_data: tuple[Path, Path]) -> None:
    """A model with more groups than :data:`plot.MAX_PANELS` (the allocation of the small model, repeated):
    both figures stay bounded, the note says so, and the table still has every group."""
    model, data = model_and_data
    rep = _prune_report(model, calibration=str(data), target_macs=0.5)
    base = rep["allocation"]["groups"]
    n = plot.MAX_PANELS + 12
    rep["allocation"]["groups"] = [dict(base[k % len(base)], label=f"copy{k}.weight[0]") for k in range(n)]
    text = page.render(prune=rep)
    sizes = check_page(text)
    assert f"the first {plot.MAX_PANELS} of {n} groups are plotted" in text
    assert len(sizes) == 2 and sizes[0][1] <= 2700 and sizes[1][1] <= 1250, sizes  # 48 panels, 48 bars
    assert all(f"copy{k}.weight[0]" in text for k in range(n))
