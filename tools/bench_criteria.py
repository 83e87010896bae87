#!/usr/bin/env python
"""How much accuracy does each criterion keep? Prune small trained CNNs without fine-tuning.

Real data shipped inside installable packages (``pip install -e '.[bench]'``):

* ``digits`` — scikit-learn's ``load_digits``: 1797 8×8 grey digits, 10 classes;
* ``faces`` — scikit-image's ``data.lfw_subset()``: 200 25×25 grey crops, faces vs non-faces
  (skipped when scikit-image is missing).

For each data set the script (seeded) splits train/test, trains a small CNN with BatchNorm for a few
seconds on CPU, exports it to ONNX (legacy exporter, BN kept, dynamic batch), then prunes it with
every criterion at each ratio (default 30/50/70 % of the channels of every group; ``obspa`` also in its
closed-form ``diag`` mode), *without*
fine-tuning, and measures test accuracy in ONNX Runtime. Calibration samples are taken from the
training split (disjoint from the test split). Prints a rich table (accuracy per ratio, prune wall
time) and writes JSON (default ``tools/results/bench_criteria.json``).

Usage::

    python tools/bench_criteria.py                      # both data sets, all criteria, seed 0
    python tools/bench_criteria.py --seeds 0,1,2        # mean ± sd over three seeds
    python tools/bench_criteria.py --quick              # digits only, fewer epochs, 50 % only
    python tools/bench_criteria.py --criteria l2,obs,obspa,obspa:obspa_h=diag --ratios 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
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
from spa.criteria import CRITERIA  # noqa: E402
from spa.runtime.session import session  # noqa: E402

DEFAULT_JSON = ROOT / "tools" / "results" / "bench_criteria.json"


@dataclass
class Dataset:
    """Images [N, 1, H, W] (standardised), labels, and the split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


def _split(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    x = x.astype(np.float32)[:, None]
    mean, std = float(x[train].mean()), float(x[train].std()) or 1.0
    x = (x - mean) / std
    return Dataset(name, x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64), int(y.max()) + 1)


def load_digits_data(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _split("digits", d.images / 16.0, d.target, 0.3, seed)


def load_faces_data(seed: int) -> Dataset | None:
    try:
        from skimage import data as skdata
    except ImportError:
        return None
    x = skdata.lfw_subset()
    y = np.array([1] * 100 + [0] * 100)  # the first 100 images are faces, the rest are not
    return _split("faces", x, y, 0.3, seed)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×2, max-pool, conv-BN-ReLU ×2, (max-pool), global average pool, linear."""

    def __init__(self, classes: int, widths: tuple[int, int, int, int], second_pool: bool) -> None:
        super().__init__()
        a, b, c, d = widths
        layers = [*_block(1, a), *_block(a, b), nn.MaxPool2d(2), *_block(b, c), *_block(c, d)]
        if second_pool:
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def train(ds: Dataset, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallCNN(ds.classes, (16, 32, 32, 64), second_pool=ds.x_train.shape[-1] > 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(ds.x_train) // 64 + 1))
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    sess = session(model)
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])
    return float(np.mean(np.argmax(logits, axis=1) == y))


def parse_variant(spec: str) -> tuple[str, str, dict[str, object]]:
    """``name`` or ``name:key=value,...`` → (label, criterion, criterion options)."""
    name, _, opts = spec.partition(":")
    options: dict[str, object] = {}
    for part in filter(None, opts.split(";")):
        key, _, value = part.partition("=")
        options[key] = value
    return spec, name, options


def bench_dataset(name: str, variants: list[str], ratios: list[float], epochs: int, calib: int, seed: int,
                  console: Console) -> dict[str, Any] | None:
    from models.export import export_onnx

    ds = load_digits_data(seed) if name == "digits" else load_faces_data(seed)
    if ds is None:
        return None
    t0 = time.perf_counter()
    model = train(ds, epochs, seed)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{ds.name}.onnx"
        export_onnx(model, (1, *ds.x_train.shape[1:]), path, exporter="legacy", keep_bn=True, dynamic_batch=True)
        base = accuracy(str(path), ds.x_test, ds.y_test)
        console.print(f"[bold]{ds.name}[/] seed {seed}: {len(ds.x_train)} train / {len(ds.x_test)} test, trained in "
                      f"{train_s:.1f}s, test accuracy {base:.4f}")
        calib_x = ds.x_train[:calib]
        rows = []
        for spec in variants:
            label, crit, options = parse_variant(spec)
            row: dict[str, Any] = {"criterion": label, "accuracy": {}, "seconds": {}, "params_ratio": {}, "notes": []}
            for r in ratios:
                source = ArraySource({"input": calib_x}, batch_size=64, name=f"{ds.name} train[:{calib}]")
                t = time.perf_counter()
                res = spa.prune(str(path), ratio=r, criterion=crit, calibration=source, seed=seed,
                                criterion_options=options)
                row["seconds"][str(r)] = time.perf_counter() - t
                row["accuracy"][str(r)] = accuracy(res.model, ds.x_test, ds.y_test)
                row["params_ratio"][str(r)] = res.report["params_after"] / res.report["params_before"]  # type: ignore[operator]
                row["notes"] = sorted(set(row["notes"]) | set(res.report["criterion_notes"]))  # type: ignore[arg-type]
            rows.append(row)
    return {"dataset": ds.name, "seed": seed, "train": len(ds.x_train), "test": len(ds.x_test),
            "calibration": len(calib_x), "epochs": epochs, "train_seconds": train_s, "baseline_accuracy": base,
            "rows": rows}


def summarise(runs: list[dict[str, Any]], ratios: list[float]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every criterion's accuracy and prune time."""
    out: dict[str, Any] = {"dataset": runs[0]["dataset"], "seeds": [r["seed"] for r in runs],
                           "baseline_accuracy": float(np.mean([r["baseline_accuracy"] for r in runs])), "rows": []}
    for i, row in enumerate(runs[0]["rows"]):
        accs = {str(r): [run["rows"][i]["accuracy"][str(r)] for run in runs] for r in ratios}
        secs = [s for run in runs for s in run["rows"][i]["seconds"].values()]
        out["rows"].append({"criterion": row["criterion"],
                            "accuracy_mean": {k: float(np.mean(v)) for k, v in accs.items()},
                            "accuracy_std": {k: float(np.std(v)) for k, v in accs.items()},
                            "seconds_mean": float(np.mean(secs))})
    return out


def print_table(summary: dict[str, Any], ratios: list[float], console: Console) -> None:
    seeds = summary["seeds"]
    table = Table(title=f"{summary['dataset']}: test accuracy after pruning, no fine-tuning, mean ± sd over seeds "
                        f"{','.join(map(str, seeds))} (unpruned {summary['baseline_accuracy']:.4f})")
    table.add_column("criterion")
    for r in ratios:
        table.add_column(f"{int(round(r * 100))}% removed", justify="right")
    table.add_column("prune s", justify="right")
    best = {str(r): max(row["accuracy_mean"][str(r)] for row in summary["rows"]) for r in ratios}
    for row in summary["rows"]:
        cells = []
        for r in ratios:
            m, sd = row["accuracy_mean"][str(r)], row["accuracy_std"][str(r)]
            text = f"{m:.3f} ± {sd:.3f}" if len(seeds) > 1 else f"{m:.4f}"
            cells.append(f"[bold green]{text}" if m == best[str(r)] else text)
        table.add_row(row["criterion"], *cells, f"{row['seconds_mean']:.2f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--criteria", default=",".join([*CRITERIA, "obspa:obspa_h=diag"]),
                   help="comma-separated; options as name:key=value;key=value (default: all, plus obspa's "
                        "closed-form diag mode)")
    p.add_argument("--ratios", default="0.3,0.5,0.7")
    p.add_argument("--datasets", default="digits,faces")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (data split, training, pruning)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--calib", type=int, default=256, help="calibration samples (from the training split)")
    p.add_argument("--quick", action="store_true", help="digits only, 8 epochs, 50 %% only")
    p.add_argument("--json", default=str(DEFAULT_JSON))
    args = p.parse_args(argv)
    variants = [c for c in args.criteria.split(",") if c]
    ratios = [float(r) for r in args.ratios.split(",")]
    datasets = args.datasets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        datasets, ratios, args.epochs = ["digits"], [0.5], 8
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    console = Console()
    t0 = time.perf_counter()
    results, summaries = [], []
    for name in datasets:
        runs = [r for r in (bench_dataset(name, variants, ratios, args.epochs, args.calib, s, console)
                            for s in seeds) if r is not None]
        if not runs:
            console.print(f"[yellow]{name}: skipped (pip install scikit-image)")
            continue
        summary = summarise(runs, ratios)
        print_table(summary, ratios, console)
        results += runs
        summaries.append(summary)
    total = time.perf_counter() - t0
    console.print(f"total {total:.1f}s")
    meta = {"command": " ".join(["python", "tools/bench_criteria.py", *(argv if argv is not None else sys.argv[1:])]),
            "seeds": seeds, "ratios": ratios, "criteria": variants, "quick": args.quick, "total_seconds": total,
            "python": platform.python_version(), "torch": torch.__version__, "spa": spa.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count()}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "summary": summaries, "runs": results}, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
