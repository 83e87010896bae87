#!/usr/bin/env python3
"""Build YOLOv8n detect/segment/pose/obb/classify from Ultralytics' yaml (random weights, nothing
downloaded) and export each with Ultralytics' own ``model.export(format="onnx")``, as users do.

Ultralytics needs no torchvision to build and export these models, but reads torchvision's *version*
from the installed distributions at import (``importlib.metadata.version("torchvision")``) and imports
it in a few modules. This script puts two stand-ins on ``sys.path`` (fixture building only, never spa):
``tools/fixtures/torchvision_stub`` (the modules) and a scratch ``torchvision-0.0.0.dist-info`` it writes
itself (the version). Install Ultralytics without its dependencies next to torch, onnx, Pillow, PyYAML,
requests, psutil and opencv-python-headless::

    pip install --no-deps --target /tmp/ultra ultralytics ultralytics-thop opencv-python-headless psutil
    PYTHONPATH=/tmp/ultra YOLO_OFFLINE=1 python tools/make_ultralytics_fixtures.py --out /tmp/ultra_zoo
    python tools/bench_exporters.py --zoo /tmp/ultra_zoo

Files: ``yolov8n_<task>_ultralytics.onnx`` (opset 17, static batch 1, 64×64, ``simplify=False``: the
onnxslim step would try to install onnxslim from the network).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB = REPO / "tools" / "fixtures" / "torchvision_stub"
TASKS = {"detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml", "pose": "yolov8n-pose.yaml",
         "obb": "yolov8n-obb.yaml", "classify": "yolov8n-cls.yaml"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--imgsz", type=int, default=64)
    args = ap.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    meta = Path(tempfile.mkdtemp()) / "torchvision-0.0.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.0.0\n")
    sys.path[:0] = [str(STUB), str(meta.parent)]
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        for task, yaml in TASKS.items():
            try:
                path = YOLO(yaml).export(format="onnx", imgsz=args.imgsz, simplify=False, opset=17, dynamic=False,
                                         batch=1)
            except Exception as exc:  # noqa: BLE001 - report each task, keep going
                failed += 1
                print(f"FAILED {task}: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
                continue
            dest = args.out / f"yolov8n_{task}_ultralytics.onnx"
            shutil.move(str(path), dest)
            print(f"wrote {dest} ({dest.stat().st_size} bytes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
