"""Run a loaded engine over image files: drawn copies plus one JSON of results (what `enginesmith detect`
and `enginesmith classify` do). Torch-free.

Timing covers what an app pays per image once it holds the decoded pixels: preprocessing, inference and
post-processing (NMS, box mapping or softmax). File decoding, drawing and writing are excluded; the first
batch is a warm-up and is not timed.

What is left in the out folder is never stale results that look current:
- an image that cannot be decoded is skipped and reported (the JSON's "skipped": image and reason); a run
  in which no image could be decoded is a one-line error and writes no JSON;
- at the start of a run, a results JSON left there by an earlier run (recognised by its "schema" marker,
  or by the keys enginesmith has always written) is removed, with the drawn images it lists, so a run that
  stops halfway leaves new drawn images and no JSON; a file of that name that enginesmith did not write is
  never touched (the run is refused);
- every drawn image and the JSON are written to a temporary name and renamed into place (the JSON is
  fsynced first), so no half-written file carries a result's name.
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
from enginesmith.runtime.draw import draw_classification, draw_detections
from enginesmith.runtime.images import read_image_file
from enginesmith.runtime.preprocess import IMAGE_SUFFIXES

DETECTIONS_JSON = "detections.json"
CLASSIFICATIONS_JSON = "classifications.json"
# the "schema" marker of each results JSON (what tells a JSON enginesmith wrote from a user's file)
RESULT_SCHEMAS = {DETECTIONS_JSON: "enginesmith-detections", CLASSIFICATIONS_JSON: "enginesmith-classifications"}
# keys every results JSON has had since before the marker (recognises one written by an older enginesmith)
LEGACY_KEYS = frozenset({"engine", "model", "task", "target", "precision", "input_size", "fps", "timed", "images"})
TMP_TAG = ".enginesmith-tmp"  # temporary files of a run: ".<name>.<pid>.enginesmith-tmp"
DRAWN_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_RESULTS_BYTES = 1 << 30  # an old results JSON larger than this is not parsed (so not recognised)


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
    """What a run over files produced: per-image records (as written to the JSON), the images skipped
    (each {"image", "reason"}) and the timing."""

    images: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # preprocessing + inference + post-processing of the timed images
    timed_images: int = 0
    json_path: Path | None = None

    @property
    def fps(self) -> float:
        return self.timed_images / self.seconds if self.seconds > 0 else float("nan")


def _output_name(path: Path, used: set[str], suffix: str | None = None) -> str:
    name = path.stem + (suffix or (path.suffix.lower() if path.suffix.lower() in DRAWN_SUFFIXES else ".png"))
    base, ext = os.path.splitext(name)
    k = 1
    while name in used:
        name = f"{base}_{k}{ext}"
        k += 1
    used.add(name)
    return name


def _tmp_path(final: Path) -> Path:
    """A hidden temporary name beside `final` for this process (renamed onto `final` when complete)."""
    return final.with_name(f".{final.name}.{os.getpid()}{TMP_TAG}")


def _save(image: np.ndarray, path: Path) -> None:
    """Write a drawn image under a temporary name and rename it to `path`: never a half-written file."""
    from PIL import Image

    tmp = _tmp_path(path)
    try:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            Image.fromarray(image).save(tmp, format="JPEG", quality=92)
        else:
            Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, doc: Any) -> None:
    """`doc` as JSON at `path`: written to a temporary file, fsynced, renamed into place (then the folder
    entry is fsynced where the OS allows), so `path` is either the old file, absent, or the whole new one."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_results(path: Path, schema: str) -> dict[str, Any] | None:
    """The results JSON at `path` when enginesmith wrote it (its schema marker, or the keys it has always
    had), else None (not JSON, not ours, unreadable)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_RESULTS_BYTES:
            return None
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("schema") == schema or ("schema" not in doc and LEGACY_KEYS <= doc.keys()):
        return doc
    return None


def _clear_previous_run(out_dir: Path, json_name: str, schema: str, keep: set[Path]) -> None:
    """Remove what an earlier run left in out_dir: its results JSON (first), the drawn images that JSON lists
    (plain file names in out_dir, never one of `keep`, the resolved inputs of this run) and temporary files
    of killed runs. A file named json_name that enginesmith did not write is refused, never removed."""
    old_json = out_dir / json_name
    for p in out_dir.iterdir():  # temporary files of a run that was killed: ".<name>.<pid>.enginesmith-tmp"
        if p.name.startswith(".") and p.name.endswith(TMP_TAG) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
    if not (old_json.exists() or old_json.is_symlink()):
        return
    doc = _read_results(old_json, schema)
    if doc is None:
        raise EnginesmithError(f"{old_json} exists and was not written by enginesmith; move it away or choose "
                               "another --out folder (it would be replaced by this run's results)")
    old_json.unlink()  # first: from here on no JSON describes what the folder holds
    images = doc.get("images")
    for rec in images if isinstance(images, list) else []:
        name = rec.get("output") if isinstance(rec, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name.startswith(".") \
                or Path(name).suffix.lower() not in DRAWN_SUFFIXES:
            continue
        drawn = out_dir / name
        if drawn.is_file() and not drawn.is_symlink() and drawn.resolve() not in keep:
            drawn.unlink(missing_ok=True)


def _prepare_out_dir(files: Sequence[Path], out_dir: Path, json_name: str, schema: str) -> list[Path]:
    """The drawn copy's path for each file, once out_dir is a folder, no copy would overwrite an input image,
    and an earlier run's results there are cleared."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EnginesmithError(f"--out {out_dir} is a file, not a folder; give a folder for the results")
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = {json_name}
    outputs = [out_dir / _output_name(p, used) for p in files]
    inputs = {p.resolve() for p in files}
    for src, dst in zip(files, outputs):
        if dst.resolve() in inputs:
            raise EnginesmithError(f"the drawn copy of {src} would be written over the image {dst.resolve()}; choose "
                                   "an --out folder that holds none of the input images")
    _clear_previous_run(out_dir, json_name, schema, inputs)
    return outputs


def run_files(engine: Any, files: Sequence[Path], out_dir: Path, json_name: str, draw: Callable[[np.ndarray, Any], np.ndarray],
              to_json: Callable[[Any], Any], key: str, header: dict[str, Any],
              on_image: Callable[[Path, Any], None] = lambda p, r: None,
              on_skip: Callable[[Path, str], None] = lambda p, why: None) -> RunSummary:
    """Run `engine` over `files` batch by batch: write each drawn image and, at the end, `json_name` into
    out_dir (see the module docstring for what a run leaves there).

    An image that cannot be decoded (a one-line EnginesmithError from read_image_file) is skipped: on_skip
    gets its path and the reason, and the JSON lists it under "skipped". When no image can be decoded the
    run raises a one-line EnginesmithError and writes no JSON. Drawn copies that would replace one of the
    input images are refused before anything is written."""
    out_dir = Path(out_dir)
    schema = RESULT_SCHEMAS.get(json_name, f"enginesmith-{Path(json_name).stem}")
    outputs = _prepare_out_dir(files, out_dir, json_name, schema)
    summary = RunSummary()
    step = max(1, int(engine.batch_size))
    warm = False

    def run_group(group: list[tuple[Path, Path, np.ndarray]]) -> None:
        nonlocal warm
        pixels = [g[2] for g in group]
        if not warm:  # the first call pays for lazy allocations: not part of the rate
            engine.batch(pixels)
            warm = True
        t0 = time.perf_counter()
        results = engine.batch(pixels)
        summary.seconds += time.perf_counter() - t0
        summary.timed_images += len(group)
        for (path, drawn, img), result in zip(group, results):
            _save(draw(img, result), drawn)
            summary.images.append({"image": str(path), "output": drawn.name, "width": int(img.shape[1]),
                                   "height": int(img.shape[0]), key: to_json(result)})
            on_image(path, result)

    group: list[tuple[Path, Path, np.ndarray]] = []
    for path, drawn in zip(files, outputs):
        try:
            pixels = read_image_file(path)
        except EnginesmithError as e:
            summary.skipped.append({"image": str(path), "reason": str(e)})
            on_skip(path, str(e))
            continue
        group.append((path, drawn, pixels))
        if len(group) == step:
            run_group(group)
            group = []
    if group:
        run_group(group)
    if not summary.images:
        first = summary.skipped[0]["reason"] if summary.skipped else "no images"
        raise EnginesmithError(f"no image could be decoded ({len(files)} given; first: {first}); no results were "
                               "written")

    info = engine.info
    doc = {"schema": schema, **header, "engine": str(info.folder), "model": info.model, "task": info.task,
           "target": info.target, "precision": info.precision, "input_size": list(info.input_size), "fps": summary.fps,
           "timed": "preprocess + inference + post-processing per image, decoding and drawing excluded",
           "images": summary.images, "skipped": summary.skipped}
    summary.json_path = out_dir / json_name
    write_json_atomic(summary.json_path, doc)
    return summary


def detect_files(detector: Any, files: Sequence[Path], out_dir: Path,
                 on_image: Callable[[Path, Any], None] = lambda p, r: None,
                 on_skip: Callable[[Path, str], None] = lambda p, why: None) -> RunSummary:
    """Detections for each file: `<name>` drawn copies and detections.json (boxes x1,y1,x2,y2 original pixels);
    undecodable images are skipped (on_skip, the JSON's "skipped")."""
    return run_files(detector, files, out_dir, DETECTIONS_JSON, draw_detections,
                     lambda dets: [d.to_dict() for d in dets], "detections", {"config": asdict(detector.config),
                     "nms": "engine" if detector.uses_engine_nms() else "host"}, on_image, on_skip)


def classify_files(classifier: Any, files: Sequence[Path], out_dir: Path,
                   on_image: Callable[[Path, Any], None] = lambda p, r: None,
                   on_skip: Callable[[Path, str], None] = lambda p, why: None) -> RunSummary:
    """Top-k classes for each file: drawn copies and classifications.json; undecodable images are skipped."""
    return run_files(classifier, files, out_dir, CLASSIFICATIONS_JSON, draw_classification,
                     lambda cs: [c.to_dict() for c in cs], "classes", {"top_k": classifier.top_k}, on_image, on_skip)
