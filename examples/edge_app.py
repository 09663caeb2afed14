"""Edge app: detect objects in a video file or a folder of frames with a built engine (no PyTorch).

    pip install "dist/enginesmith-0.1.0-py3-none-any.whl[runtime-openvino]" opencv-python-headless   # README: the wheel
    python examples/edge_app.py ENGINE_DIR VIDEO_OR_FRAMES_DIR [--out annotated.mp4]"""
import argparse
import collections
import time
from pathlib import Path

import cv2

from enginesmith.errors import EnginesmithError
from enginesmith.runtime import load


def read_frames(source: Path):
    """BGR frames from a folder of images (by name) or from any video OpenCV can open."""
    if source.is_dir():
        images = (cv2.imread(str(f)) for f in sorted(source.iterdir()) if f.suffix.lower() in (".jpg", ".png", ".bmp"))
        yield from (im for im in images if im is not None)
        return
    video = cv2.VideoCapture(str(source))
    if not video.isOpened():
        raise EnginesmithError(f"cannot open video {source}; give a video file OpenCV can read or a folder of frames")
    while (frame := video.read()[1]) is not None:
        yield frame


def main(args: argparse.Namespace) -> None:
    detector = load(args.engine).configure(score_threshold=args.conf)
    frames, writer, size, n, start = collections.deque(), None, None, 0, 0.0
    feed = (frames.append(f) or f for f in read_frames(args.source))  # keep each frame until its results arrive
    for detections in detector.stream(feed, channels="BGR"):  # in order; OpenVINO runs an async request queue
        frame, n = frames.popleft(), n + 1
        start = start or time.perf_counter()  # timed from the first result: loading and compiling excluded
        for d in detections:
            x1, y1, x2, y2 = (int(round(v)) for v in d.box)
            cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 200, 0), 2)
            cv2.putText(frame, f"{d.class_name} {d.score:.2f}", (x1, max(12, y1 - 4)), 0, 0.45, (0, 200, 0), 1)
        if args.out:  # a video has one frame size: the first frame's
            size = size or frame.shape[1::-1]
            writer = writer or cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
            writer.write(cv2.resize(frame, size))
    if writer:
        writer.release()
    fps = (n - 1) / (time.perf_counter() - start) if n > 1 else float("nan")
    print(f"{n} frames: {fps:.1f} FPS after the first (decode + detect + draw + write, end to end)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", help="engine folder (manifest.json + engine) made by `enginesmith build`")
    ap.add_argument("source", type=Path, help="a video file or a folder of frames")
    ap.add_argument("--out", type=Path, help="write the annotated frames to this video (.mp4)")
    ap.add_argument("--conf", type=float, default=0.25, help="keep detections with score > CONF")
    try:
        main(ap.parse_args())
    except EnginesmithError as e:
        raise SystemExit(f"error: {e}")
