"""Run a loaded engine over image files: drawn copies plus one JSON of results (what `enginesmith detect`
and `enginesmith classify` do). Torch-free.

Timing covers what an app pays per image once it holds the decoded pixels: preprocessing, inference and
post-processing (NMS, box mapping or softmax). File decoding, drawing and writing are excluded; the first
batch is a warm-up and is not timed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.images import read_image_file
from enginesmith.runtime.preprocess import IMAGE_SUFFIXES


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (a folder: its image files by name, not recursive)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise EnginesmithError(f"no images in {p} (looked for {', '.join(IMAGE_SUFFIXES)}); give image files "
                                       "or a folder of them")
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            raise EnginesmithError(f"image not found: {p}; give image files or folders of them")
    if not found:
        raise EnginesmithError("no images given; pass image files or folders of them")
    return found


@dataclass
class RunSummary:
    """What a run over files produced: per-image records (as written to the JSON) and the timing."""

    images: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # preprocessing + inference + post-processing of the timed images
    timed_images: int = 0
    json_path: Path | None = None

    @property
    def fps(self) -> float:
        return self.timed_images / self.seconds if self.seconds > 0 else float("nan")


def _output_name(path: Path, used: set[str], suffix: str | None = None) -> str:
    name = path.stem + (suffix or (path.suffix.lower() if path.suffix.lower() in (".png", ".jpg", ".jpeg") else ".png"))
    base, ext = os.path.splitext(name)
    k = 1
    while name in used:
        name = f"{base}_{k}{ext}"
        k += 1
    used.add(name)
    return name


def _save(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, quality=92) if path.suffix in (".jpg", ".jpeg") else Image.fromarray(image).save(path)


def run_files(engine: Any, files: Sequence[Path], out_dir: Path, json_name: str, draw: Callable[[np.ndarray, Any], np.ndarray],
              to_json: Callable[[Any], Any], key: str, header: dict[str, Any],
              on_image: Callable[[Path, Any], None] = lambda p, r: None) -> RunSummary:
    """Run `engine` over `files` batch by batch: write each drawn image and `json_name` into out_dir.

    Any image that cannot be decoded stops the run with a one-line EnginesmithError naming it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary()
    used: set[str] = {json_name}
    step = engine.batch_size
    warm = False
    for start in range(0, len(files), step):
        group = list(files[start : start + step])
        pixels = [read_image_file(p) for p in group]
        if not warm:  # the first call pays for lazy allocations: not part of the rate
            engine.batch(pixels)
            warm = True
        t0 = time.perf_counter()
        results = engine.batch(pixels)
        summary.seconds += time.perf_counter() - t0
        summary.timed_images += len(group)
        for path, img, result in zip(group, pixels, results):
            drawn = out_dir / _output_name(path, used)
            _save(draw(img, result), drawn)
            summary.images.append({"image": str(path), "output": drawn.name, "width": int(img.shape[1]),
                                   "height": int(img.shape[0]), key: to_json(result)})
            on_image(path, result)
    info = engine.info
    doc = {**header, "engine": str(info.folder), "model": info.model, "task": info.task, "target": info.target,
           "precision": info.precision, "input_size": list(info.input_size), "fps": summary.fps,
           "timed": "preprocess + inference + post-processing per image, decoding and drawing excluded",
           "images": summary.images}
    summary.json_path = out_dir / json_name
    tmp = summary.json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(summary.json_path)
    return summary


def detect_files(detector: Any, files: Sequence[Path], out_dir: Path,
                 on_image: Callable[[Path, Any], None] = lambda p, r: None) -> RunSummary:
    """Detections for each file: `<name>` drawn copies and detections.json (boxes x1,y1,x2,y2 original pixels)."""
    from enginesmith.runtime.draw import draw_detections

    return run_files(detector, files, out_dir, "detections.json", draw_detections,
                     lambda dets: [d.to_dict() for d in dets], "detections", {"config": asdict(detector.config),
                     "nms": "engine" if detector.uses_engine_nms() else "host"}, on_image)


def classify_files(classifier: Any, files: Sequence[Path], out_dir: Path,
                   on_image: Callable[[Path, Any], None] = lambda p, r: None) -> RunSummary:
    """Top-k classes for each file: drawn copies and classifications.json."""
    from enginesmith.runtime.draw import draw_classification

    return run_files(classifier, files, out_dir, "classifications.json", draw_classification,
                     lambda cs: [c.to_dict() for c in cs], "classes", {"top_k": classifier.top_k}, on_image)
