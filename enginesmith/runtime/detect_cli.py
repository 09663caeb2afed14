"""The `enginesmith detect` and `enginesmith classify` commands (parse, call runtime/files.py, print).
Registered in cli.py:

Stdout: one line per image (its results, or "PATH: skipped: REASON") and the FPS. Stderr: where the results
were written, a warning line for an engine built without --weights (after the run, beside its results), and
errors.
Exit codes: 0 every image processed; 1 some images could not be decoded (the others were processed and
written; the bad ones are listed on stderr and under "skipped" in the JSON); 2 nothing was done (bad
arguments, not an engine, no image decodable); 130 interrupted.

    app.command("detect")(detect)
    app.command("classify")(classify)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from enginesmith.errors import EnginesmithError

_err = Console(stderr=True)
_out = Console(highlight=False, soft_wrap=True)
PARTIAL_EXIT = 1  # some images were skipped (could not be decoded); the rest were processed
LISTED = 10  # skipped images named in the closing line (all of them are in the JSON)


def _load(engine: Path, task: str, **kwargs: Any) -> Any:
    """Load `engine`, refusing (before loading it) an engine of another task."""
    from enginesmith.runtime.engine import load
    from enginesmith.runtime.manifest import engine_info
    from enginesmith.runtime.trained import UntrainedEngineWarning

    info = engine_info(engine)
    if info.task != task:
        other = {"detection": "`enginesmith detect`", "classification": "`enginesmith classify`"}.get(
            info.task, "the Python API (enginesmith.runtime.load)")
        raise EnginesmithError(f"{engine} is a {info.task} engine ({info.model}), not a {task} engine; use {other}")
    with warnings.catch_warnings():  # _finish says it in one plain line instead of the library's warning
        warnings.simplefilter("ignore", UntrainedEngineWarning)
        return load(engine, **kwargs)


def _skip(path: Path, reason: str) -> None:
    """One line per image that could not be decoded, as it is skipped (stdout, with the per-image results)."""
    _out.print(f"{path}: skipped: {reason}", markup=False)


def _finish(summary: Any, what: str, out_dir: Path, engine: Any) -> None:
    """The closing lines: FPS (stdout); where the results are, the untrained warning and the images skipped
    (stderr, exit PARTIAL_EXIT when any was)."""
    from enginesmith.runtime.trained import is_untrained, untrained_message

    _out.print(f"{summary.timed_images} images, {what}: {summary.fps:.1f} FPS (preprocess + inference + "
               f"post-processing; decoding and drawing excluded)")
    _err.print(f"drawn images and {summary.json_path.name} written to [bold]{escape(str(out_dir))}[/]",
               highlight=False)
    info = engine.info
    if is_untrained(info):
        print(f"warning: {untrained_message(f'engine {info.folder} ({info.model})', info.task)}", file=sys.stderr)
    if summary.skipped:  # the others were processed and written; say which failed and exit non-zero
        n, total = len(summary.skipped), len(summary.skipped) + len(summary.images)
        names = ", ".join(s["image"] for s in summary.skipped[:LISTED]) + (f", and {n - LISTED} more" if n > LISTED else "")
        print(f"error: {n} of {total} images could not be decoded and were skipped: {names} (reasons above and under "
              f"\"skipped\" in {summary.json_path}); the other {total - n} were processed", file=sys.stderr)
        raise typer.Exit(PARTIAL_EXIT)


def detect(
    engine: Path = typer.Argument(..., help="engine folder made by `enginesmith build` (holds manifest.json)"),
    images: List[Path] = typer.Argument(..., help="image files and/or folders of images"),
    out_dir: Path = typer.Option(Path("detections"), "--out", help="folder for the drawn images and detections.json"),
    conf: float = typer.Option(0.25, "--conf", help="keep detections with score > CONF"),
    iou: float = typer.Option(0.45, "--iou", help="NMS: suppress boxes with IoU > IOU with a better box of the same class"),
    max_det: int = typer.Option(100, "--max-det", help="at most this many detections per image"),
    agnostic: bool = typer.Option(False, "--agnostic", help="class-agnostic NMS"),
    proposals: Optional[Path] = typer.Option(None, "--proposals", help="R-CNN / Fast R-CNN, one image: its proposals "
                                             "(.npy or text rows x1 y1 x2 y2, image pixels) instead of selective search"),
) -> None:
    """Detect objects in images with a built engine: drawn copies, detections.json, and the FPS. Images that
    cannot be decoded are skipped and listed; the rest are processed, and the exit code is then 1."""
    from enginesmith.runtime.files import collect_images, detect_files
    from enginesmith.runtime.types import DetectorConfig

    def show(path: Path, dets: Any) -> None:
        names = ", ".join(f"{d.class_name} {d.score:.2f}" for d in dets[:3]) + (", ..." if len(dets) > 3 else "")
        _out.print(f"{path}: {len(dets)} detections" + (f" ({names})" if dets else ""), markup=False)

    try:
        if not 0.0 <= conf < 1.0 or not 0.0 <= iou <= 1.0 or max_det < 1:
            raise EnginesmithError(f"--conf must be in [0, 1), --iou in [0, 1] and --max-det >= 1; got {conf}, {iou}, {max_det}")
        files = collect_images(images)
        config = DetectorConfig(score_threshold=conf, iou_threshold=iou, max_detections=max_det, class_agnostic=agnostic)
        with _load(engine, "detection", config=config) as detector:
            if proposals is not None:  # issue 8: runtime/two_stage.py
                from enginesmith.runtime.two_stage import with_proposals

                detector = with_proposals(detector, proposals, files)
            summary = detect_files(detector, files, out_dir, show, _skip)
    except EnginesmithError as e:
        _err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code)
    except KeyboardInterrupt:
        _err.print("[bold red]interrupted[/]: the run did not finish (its results JSON is written only when it does)")
        raise typer.Exit(130)
    total = sum(len(r["detections"]) for r in summary.images)
    _finish(summary, f"{total} detections", out_dir, detector)


def classify(
    engine: Path = typer.Argument(..., help="engine folder made by `enginesmith build` (holds manifest.json)"),
    images: List[Path] = typer.Argument(..., help="image files and/or folders of images"),
    out_dir: Path = typer.Option(Path("classifications"), "--out", help="folder for the drawn images and "
                                 "classifications.json"),
    top_k: int = typer.Option(5, "--top-k", help="classes reported per image"),
) -> None:
    """Classify images with a built engine: top-k classes per image, drawn copies, classifications.json, FPS.
    Images that cannot be decoded are skipped and listed; the rest are processed, and the exit code is then 1."""
    from enginesmith.runtime.files import classify_files, collect_images

    def show(path: Path, classes: Any) -> None:
        _out.print(f"{path}: " + ", ".join(f"{c.class_name} {c.score:.3f}" for c in classes), markup=False)

    try:
        files = collect_images(images)
        with _load(engine, "classification", top_k=top_k) as classifier:
            summary = classify_files(classifier, files, out_dir, show, _skip)
    except EnginesmithError as e:
        _err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code)
    except KeyboardInterrupt:
        _err.print("[bold red]interrupted[/]: the run did not finish (its results JSON is written only when it does)")
        raise typer.Exit(130)
    _finish(summary, f"top-{top_k}", out_dir, classifier)
