#!/usr/bin/env python
"""Does a pruned model still do its job? Task-score retention without training, on real trained models.

Five small models of different kinds are trained here (seeded, CPU, seconds each) on real data that ships
inside PyPI packages, exported to ONNX, then pruned to ``--target-macs 0.7`` and ``0.5`` with:

* ``l2 uniform`` — the data-free default (no calibration, uniform ratios);
* ``obs uniform`` — OBS scores and compensation on calibration data, uniform ratios;
* ``obs + alloc`` — the same with budgets allocated by measured sensitivity (``--allocate sensitivity``);
* ``+ seq + latency counts`` — ``spa prune --calib``'s defaults in full: the row above with the channel
  counts chosen by latency (``--round-to latency``, a count may move to a whole SIMD block up to half of
  it away while the MACs budget is kept) instead of exact;
* ``obs + alloc (local probes)`` — the same, each group's probe measured where its branch joins the
  network (``--probe-scope local``, what ``auto`` does for models over 256 MB) instead of at the outputs;
  the rows keep every group's curve, so the two scopes' rankings can be compared
  (``tools/probe_scope_table.py``);
* ``obs + alloc + realign`` — and statistics re-alignment (``--realign``), with the criterion's one-shot
  OBS compensation (``--reconstruct oneshot``);
* ``obs + alloc + seq`` — allocation with sequential reconstruction (``--reconstruct sequential``: every
  layer re-solved in topological order against the original's outputs given the pruned model's inputs),
  no re-alignment;
* ``+ sequential reconstruction`` — allocation, sequential reconstruction and re-alignment: what
  ``spa prune --calib`` does by default;
* ``taylor uniform``, ``taylor + alloc`` — the first-order Taylor gradient criterion (torch) on the same
  calibration data, uniform ratios or sensitivity-allocated budgets;
* ``+ spa recover`` — at ``--recover-targets`` (default 0.5), the ``l2 uniform`` result and the best
  data-driven one trained by ``spa recover`` (distillation from the original on the training split's inputs,
  no labels; ``--recover-steps`` steps of batch 32), with its wall time and peak RSS (needs torch).

Models and data (calibration samples come from the training split, scores from the disjoint test split):

* ``dwcnn-digits`` — depthwise-separable CNN, scikit-learn ``load_digits`` (8×8, 10 classes), accuracy;
* ``cnn-faces`` — conv-BN CNN, scikit-image ``data.lfw_subset`` (25×25, face / not a face), accuracy;
* ``cnn1d-power`` — 1-D CNN, aeon's bundled UCR ``ItalyPowerDemand`` series (24 steps, 2 classes; the
  TRAIN and TEST files pooled and split here), accuracy (BatchNorm folded at export);
* ``transformer-digits`` — 2-layer pre-norm transformer encoder (4 heads) over the 8 rows of a digit as
  tokens, accuracy;
* ``unet-digits`` — encoder/decoder segmenter with a skip connection: a digit scaled ×2 at a random place
  in a noisy 24×24 canvas, every pixel labelled background or the digit's class; mean IoU over 11 classes.

Retention = pruned score ÷ original score. Channel counts are exact (``round_to=1``: no latency timing in
the loop) except in the ``latency counts`` row. Prints a table and writes ``tools/results/bench_quality.json``.

Usage (needs the ``bench`` extra and, for the 1-D model, ``pip install --no-deps aeon`` for its data files)::

    python tools/bench_quality.py                       # all models, targets 0.7 and 0.5, seed 0
    python tools/bench_quality.py --models dwcnn-digits --targets 0.5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402

import spa  # noqa: E402
from spa.calibration import ArraySource  # noqa: E402
from spa.runtime.session import session  # noqa: E402

DEFAULT_JSON = ROOT / "tools" / "results" / "bench_quality.json"

#: label → prune options
VARIANTS: dict[str, dict[str, Any]] = {
    "l2 uniform": {"criterion": "l2", "calibration": None, "allocate": "uniform", "realign": False},
    "obs uniform": {"criterion": "obs", "allocate": "uniform", "realign": False, "reconstruct": "oneshot"},
    "obs + alloc": {"criterion": "obs", "allocate": "sensitivity", "realign": False, "reconstruct": "oneshot"},
    "+ seq + latency counts": {"criterion": "obs", "allocate": "sensitivity", "realign": True,
                              "reconstruct": "sequential", "round_to": "latency"},
    "obs + alloc (local probes)": {"criterion": "obs", "allocate": "sensitivity", "realign": False,
                                  "reconstruct": "oneshot", "probe_scope": "local"},
    "obs + alloc + realign": {"criterion": "obs", "allocate": "sensitivity", "realign": True, "reconstruct": "oneshot"},
    "obs + alloc + seq": {"criterion": "obs", "allocate": "sensitivity", "realign": False, "reconstruct": "sequential"},
    "+ sequential reconstruction": {"criterion": "obs", "allocate": "sensitivity", "realign": True,
                                    "reconstruct": "sequential"},
    # data-free: no calibration data reaches these (``calibration: None`` overrides the bench's source)
    "obspa uniform": {"criterion": "obspa", "calibration": None, "allocate": "uniform", "realign": False},
    "obspa white noise": {"criterion": "obspa", "calibration": None, "allocate": "uniform", "realign": False,
                          "criterion_options": {"synthetic_spectrum": 0.0}},
    "taylor uniform": {"criterion": "taylor", "allocate": "uniform", "realign": False},
    "taylor + alloc": {"criterion": "taylor", "allocate": "sensitivity", "realign": False},
}


@dataclass
class Task:
    """Inputs [N, ...] and targets, split, and how the model is scored."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    dense: bool = False  # per-pixel labels (segmentation, scored by mean IoU)


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int, test: float = 0.3, dense: bool = False) -> Task:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(test * len(x)))
    te, tr = order[:n_test], order[n_test:]
    x = x.astype(np.float32)
    mean, std = float(x[tr].mean()), float(x[tr].std()) or 1.0
    x = (x - mean) / std
    classes = int(y.max()) + 1
    return Task(name, x[tr], y[tr].astype(np.int64), x[te], y[te].astype(np.int64), classes, dense)


def digits_task(seed: int) -> Task:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _split("digits", (d.images / 16.0)[:, None], d.target, seed)


def rows_task(seed: int) -> Task:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _split("digit rows", d.images / 16.0, d.target, seed)  # [N, 8 tokens, 8 features]


def faces_task(seed: int) -> Task:
    from skimage import data as skdata

    x = skdata.lfw_subset()
    return _split("lfw_subset", x[:, None], np.array([1] * 100 + [0] * 100), seed)


def _read_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    data = False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@data"):
            data = True
            continue
        if data:
            values, _, label = line.rpartition(":")
            xs.append([float(v) for v in values.split(",")])
            ys.append(label)
    labels = sorted(set(ys))
    return np.array(xs), np.array([labels.index(v) for v in ys])


def power_task(seed: int) -> Task | None:
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "ItalyPowerDemand"
    parts = [_read_ts(folder / f"ItalyPowerDemand_{s}.ts") for s in ("TRAIN", "TEST")]
    x = np.concatenate([p[0] for p in parts])[:, None]
    y = np.concatenate([p[1] for p in parts])
    return _split("ItalyPowerDemand", x, y, seed, test=0.4)


def seg_task(seed: int) -> Task:
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed + 100)
    n = 1200
    idx = rng.choice(len(d.images), n, replace=False)
    x = rng.normal(0.0, 0.15, (n, 1, 24, 24))
    y = np.zeros((n, 24, 24), dtype=np.int64)
    for k, i in enumerate(idx):
        img = np.kron(d.images[i] / 16.0, np.ones((2, 2)))
        r, c = rng.integers(0, 9, 2)
        x[k, 0, r:r + 16, c:c + 16] += img
        y[k, r:r + 16, c:c + 16][img > 0.35] = d.target[i] + 1
    t = _split("digit canvases", x, y, seed, dense=True)
    t.classes = 11
    return t


def _bn(c: int, d: int = 2) -> nn.Module:
    return nn.BatchNorm2d(c) if d == 2 else nn.BatchNorm1d(c)


class DWCNN(nn.Module):
    """stem conv, three depthwise-separable blocks (dw 3×3 + pw 1×1, BN, ReLU), pool, GAP, linear."""

    def __init__(self, classes: int) -> None:
        super().__init__()

        def sep(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), _bn(cin), nn.ReLU(),
                    nn.Conv2d(cin, cout, 1, bias=False), _bn(cout), nn.ReLU()]

        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), _bn(32), nn.ReLU(),
                                      *sep(32, 64), nn.MaxPool2d(2), *sep(64, 96), *sep(96, 128))
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class CNN(nn.Module):
    """conv-BN-ReLU ×2, max-pool, conv-BN-ReLU ×2, max-pool, GAP, linear."""

    def __init__(self, classes: int) -> None:
        super().__init__()

        def blk(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), _bn(cout), nn.ReLU()]

        self.features = nn.Sequential(*blk(1, 32), *blk(32, 48), nn.MaxPool2d(2), *blk(48, 64), *blk(64, 96),
                                      nn.MaxPool2d(2))
        self.head = nn.Linear(96, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class CNN1D(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(1, 32, 5, padding=2), _bn(32, 1), nn.ReLU(),
                                      nn.Conv1d(32, 64, 5, padding=2), _bn(64, 1), nn.ReLU(),
                                      nn.Conv1d(64, 64, 3, padding=1), _bn(64, 1), nn.ReLU())
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, self.hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.hd ** 0.5, dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(b, t, self.heads * self.hd))


class Encoder(nn.Module):
    """Token embedding + learned positions, 2 pre-norm blocks (4-head attention, GELU MLP ×4), mean pool."""

    def __init__(self, classes: int, dim: int = 64, heads: int = 4, layers: int = 2, tokens: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({"n1": nn.LayerNorm(dim), "att": Attention(dim, heads),
                                              "n2": nn.LayerNorm(dim),
                                              "mlp": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(),
                                                                   nn.Linear(4 * dim, dim))}))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        for blk in self.blocks:
            h = h + blk["att"](blk["n1"](h))
            h = h + blk["mlp"](blk["n2"](h))
        return self.head(self.norm(h).mean(dim=1))


class UNet(nn.Module):
    """conv ×2 (full res) → stride-2 conv ×2 (half res) → nearest upsample, concat skip → conv ×2 → 1×1 classes."""

    def __init__(self, classes: int) -> None:
        super().__init__()

        def blk(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), _bn(cout), nn.ReLU()]

        self.enc = nn.Sequential(*blk(1, 24), *blk(24, 32))
        self.down = nn.Sequential(*blk(32, 48, 2), *blk(48, 64))
        self.dec = nn.Sequential(*blk(64 + 32, 48), *blk(48, 32))
        self.out = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.enc(x)
        u = nn.functional.interpolate(self.down(s), scale_factor=2.0, mode="nearest")
        return self.out(self.dec(torch.cat([u, s], dim=1)))


@dataclass
class Spec:
    name: str
    kind: str
    task: Callable[[int], Task | None]
    model: Callable[[int], nn.Module]
    epochs: int
    lr: float = 3e-3
    keep_bn: bool = True


SPECS = [
    Spec("dwcnn-digits", "depthwise CNN", digits_task, DWCNN, 10),
    Spec("cnn-faces", "CNN (faces)", faces_task, CNN, 40),
    Spec("cnn1d-power", "1-D CNN (time series)", power_task, CNN1D, 30, keep_bn=False),
    Spec("transformer-digits", "transformer encoder", rows_task, Encoder, 40, lr=2e-3),
    Spec("unet-digits", "segmenter (dense)", seg_task, UNet, 12),
]


def train(spec: Spec, t: Task, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = spec.model(t.classes)
    steps = spec.epochs * (len(t.x_train) // 64 + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps)
    x, y = torch.from_numpy(t.x_train), torch.from_numpy(t.y_train)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(spec.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def score(model: Any, t: Task) -> float:
    """Accuracy, or mean IoU over the classes present (dense tasks), in ONNX Runtime."""
    sess = session(model)
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: t.x_test[i:i + 128]})[0] for i in range(0, len(t.x_test), 128)])
    pred = np.argmax(logits, axis=1)
    if not t.dense:
        return float(np.mean(pred == t.y_test))
    ious = []
    for c in range(t.classes):
        p, g = pred == c, t.y_test == c
        union = np.logical_or(p, g).sum()
        if g.any():
            ious.append(np.logical_and(p, g).sum() / union)
    return float(np.mean(ious))


def _peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux; a no-op elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def recover_rows(path: Path, pruned: dict[str, Any], t: Task, base: float, steps: int, seed: int,
                 console: Console, lr: float = 1e-3) -> dict[str, Any]:
    """``spa recover`` on each pruned model of ``pruned`` ({label: {target: ModelProto}})."""
    out: dict[str, Any] = {}
    data = ArraySource({"input": t.x_train}, batch_size=32, name=f"{t.name} train")
    for label, by_target in pruned.items():
        row: dict[str, Any] = {"from": label, "score": {}, "retention": {}, "before": {}, "seconds": {},
                               "peak_rss_mb": {}, "loss": {}}
        for target, (model, before) in by_target.items():
            _peak_rss_reset()
            s0 = time.perf_counter()
            res = spa.recover(model, str(path), data, steps=steps, batch=32, lr=lr, seed=seed, threads=2,
                              dense_kl=t.dense)  # the segmenter's output: class logits per pixel
            row["seconds"][target] = round(time.perf_counter() - s0, 1)
            row["peak_rss_mb"][target] = _peak_rss_mb()
            got = score(res.model, t)
            row["score"][target] = got
            row["retention"][target] = got / base if base else 0.0
            row["before"][target] = before
            j = res.to_json()
            row["loss"][target] = [j["loss_first"], j["loss_last"]]
            console.print(f"  recover from {label} @{target}: retention {before:.3f} -> {row['retention'][target]:.3f} "
                          f"in {row['seconds'][target]}s, peak RSS {row['peak_rss_mb'][target]} MB")
        out[f"+ spa recover (from {label})"] = row
    return out


def bench_model(spec: Spec, targets: list[float], calib: int, seed: int, console: Console,
                recover_targets: list[float] = (), recover_steps: int = 0, recover_lr: float = 1e-3,
                fold_bn: bool = False) -> dict[str, Any] | None:
    from models.export import export_onnx

    t = spec.task(seed)
    if t is None:
        console.print(f"[yellow]{spec.name}: skipped (its data package is not installed)")
        return None
    t0 = time.perf_counter()
    model = train(spec, t, seed)
    train_s = time.perf_counter() - t0
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{spec.name}.onnx"
        export_onnx(model, (1, *t.x_train.shape[1:]), path, exporter="legacy", keep_bn=spec.keep_bn and not fold_bn,
                    dynamic_batch=True)
        base = score(str(path), t)
        console.print(f"[bold]{spec.name}[/] ({spec.kind}, {t.name}): {len(t.x_train)} train / {len(t.x_test)} "
                      f"test, trained in {train_s:.1f}s, score {base:.4f}")
        source = ArraySource({"input": t.x_train[:calib]}, batch_size=32, name=f"{t.name} train[:{calib}]")
        kept: dict[str, dict[str, Any]] = {}
        for label, opts in VARIANTS.items():
            row: dict[str, Any] = {"score": {}, "retention": {}, "macs": {}, "seconds": {}, "distortion": {}}
            for target in targets:
                kw = {"calibration": source, "round_to": 1} | opts
                s0 = time.perf_counter()
                res = spa.prune(str(path), target_macs=target, seed=seed, **kw)
                row["seconds"][str(target)] = round(time.perf_counter() - s0, 2)
                got = score(res.model, t)
                row["score"][str(target)] = got
                row["retention"][str(target)] = got / base if base else 0.0
                if recover_steps and target in recover_targets:
                    kept.setdefault(label, {})[str(target)] = (res.model, row["retention"][str(target)])
                row["macs"][str(target)] = res.report["macs_after"] / res.report["macs_before"]  # type: ignore[operator]
                alloc = res.report.get("allocation")
                if isinstance(alloc, dict):
                    row["distortion"][str(target)] = {
                        "predicted": alloc["predicted_distortion"], "measured": alloc["measured_distortion"],
                        "ratios": {g["label"]: g["ratio"] for g in alloc["groups"]},
                        "curves": {g["label"]: g["sensitivity"] for g in alloc["groups"]},
                        "probe_seconds": alloc.get("seconds"), "scope": alloc.get("scope")}
            rows[label] = row
        if recover_steps and kept:
            best: dict[str, dict[str, Any]] = {}
            for target in map(str, recover_targets):
                data_driven = [lb for lb in kept if lb != "l2 uniform" and target in kept[lb]]
                if data_driven:
                    top = max(data_driven, key=lambda lb: rows[lb]["retention"][target])
                    best.setdefault(f"best: {top}", {})[target] = kept[top][target]
            rows |= recover_rows(path, {"l2 uniform": kept.get("l2 uniform", {})} | best, t, base, recover_steps,
                                 seed, console, recover_lr)
    return {"model": spec.name, "kind": spec.kind, "data": t.name, "train": len(t.x_train), "test": len(t.x_test),
            "calibration": min(calib, len(t.x_train)), "train_seconds": round(train_s, 1), "score": base,
            "metric": "mean IoU" if t.dense else "accuracy", "rows": rows}


def print_table(results: list[dict[str, Any]], targets: list[float], console: Console) -> dict[str, Any]:
    table = Table(title="task-score retention (pruned ÷ original), no training")
    table.add_column("variant")
    table.add_column("MACs", justify="right")
    for r in results:
        table.add_column(f"{r['model']}\n({r['metric']} {r['score']:.3f})", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("min", justify="right")
    summary: dict[str, Any] = {}
    for tg in targets:
        for label in VARIANTS:
            vals = [r["rows"][label]["retention"][str(tg)] for r in results]
            summary[f"{label} @{tg}"] = {"mean": float(np.mean(vals)), "min": float(np.min(vals))}
            table.add_row(label, str(tg), *(f"{v:.3f}" for v in vals), f"[bold]{np.mean(vals):.3f}",
                          f"{np.min(vals):.3f}")
    console.print(table)
    rec = [(r, label) for r in results for label in r["rows"] if label.startswith("+ spa recover")]
    if rec:
        table = Table(title="+ spa recover (distillation, no labels): retention, wall time, peak RSS")
        for col in ("model", "from", "MACs", "before", "after", "seconds", "peak RSS MB"):
            table.add_column(col)
        for r, label in rec:
            row = r["rows"][label]
            for tg, v in row["retention"].items():
                table.add_row(r["model"], row["from"], tg, f"{row['before'][tg]:.3f}", f"[bold]{v:.3f}",
                              f"{row['seconds'][tg]}", f"{row['peak_rss_mb'][tg]:.0f}")
        console.print(table)
        for kind in ("l2 uniform", "best"):
            for tg in {t for r, label in rec for t in r["rows"][label]["retention"]}:
                vals = [r["rows"][label]["retention"][tg] for r, label in rec
                        if r["rows"][label]["from"].startswith(kind) and tg in r["rows"][label]["retention"]]
                secs = [r["rows"][label]["seconds"][tg] for r, label in rec
                        if r["rows"][label]["from"].startswith(kind) and tg in r["rows"][label]["retention"]]
                if vals:
                    summary[f"+ spa recover from {kind} @{tg}"] = {"mean": float(np.mean(vals)),
                                                                   "min": float(np.min(vals)),
                                                                   "max_seconds": float(np.max(secs)),
                                                                   "models": len(vals)}
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(s.name for s in SPECS))
    p.add_argument("--targets", default="0.7,0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib", type=int, default=128, help="calibration samples (from the training split)")
    p.add_argument("--json", default=str(DEFAULT_JSON))
    p.add_argument("--recover-steps", type=int, default=300,
                   help="spa recover steps (batch 32) on the l2 and best data-driven results; 0: no recover")
    p.add_argument("--recover-lr", type=float, default=1e-3, help="spa recover learning rate")
    p.add_argument("--recover-targets", default="0.5", help="MACs targets at which to run spa recover")
    p.add_argument("--fold-bn", action="store_true",
                   help="export every model with BatchNorm folded into the convs (no running statistics)")
    p.add_argument("--variants", default="", help="comma-separated variant labels to run (default: all)")
    args = p.parse_args(argv)
    if args.variants:
        unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
        if unknown:
            p.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
        for label in [v for v in VARIANTS if v not in args.variants.split(",")]:
            del VARIANTS[label]
    targets = [float(x) for x in args.targets.split(",")]
    wanted = args.models.split(",")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    console = Console()
    t0 = time.perf_counter()
    rec_targets = [float(x) for x in args.recover_targets.split(",") if x]
    results = [r for r in (bench_model(s, targets, args.calib, args.seed, console, rec_targets, args.recover_steps,
                                       args.recover_lr, args.fold_bn)
                           for s in SPECS if s.name in wanted) if r is not None]
    summary = print_table(results, targets, console) if results else {}
    total = time.perf_counter() - t0
    console.print(f"total {total:.1f}s")
    meta = {"command": " ".join(["python", "tools/bench_quality.py", *(argv if argv is not None else sys.argv[1:])]),
            "seed": args.seed, "targets": targets, "calibration": args.calib, "round_to": 1,
            "fold_bn": args.fold_bn, "recover_steps": args.recover_steps, "recover_lr": args.recover_lr,
            "recover_targets": rec_targets,
            "total_seconds": round(total, 1), "python": platform.python_version(), "torch": torch.__version__,
            "spa": spa.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
