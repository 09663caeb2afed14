"""An offline detection dataset made only from data inside pip packages, written as VOC + COCO.

Backgrounds are real photographs from scikit-image's data folder (offline_photos.py, read without
pooch); objects are real handwritten digits from scikit-learn's `load_digits` (8x8, 1,797 of them)
and drawn shapes: the 16 classes of models/classes.py OFFLINE_NAMES (zero..nine, circle, square,
triangle, star, cross, ring; class id = index).

Each image (width 320-480, height 240-400 px) is a random crop of one photo (log-uniform zoom, at
most 1.6x upscaled, random flip, mild colour/brightness/contrast jitter) with 2-8 objects placed one
after another:
- size: the object's longer side is log-uniform in [12 px, half the image's shorter side];
- digits: the 8x8 digit is padded, upscaled bicubically to the target size and turned into an alpha
  mask by a soft threshold of its intensity (anti-aliased edge, stroke weight varies), drawn as
  coloured ink (aspect w/h 0.6-0.85, rotation +-15 deg), on a faint translucent plate 30% of the time;
- shapes: polygons drawn 4x/3x/2x supersampled (anti-aliased), aspect 0.74-1.35, rotation +-20 deg;
  square/triangle/star/cross filled or (35%) outlined, circle always filled, ring an annulus (inner
  radius 50-70%); triangles point up or down;
- colour: random RGB whose luma differs by >= 45 (and RGB distance >= 90) from the mean of the
  local background under the object, with a +-20% linear shading gradient and 85-100% opacity;
- then per image: Gaussian blur (radius 0.4-1.0) 30% of the time, Gaussian noise (sigma 1-5) 50% of
  the time, JPEG quality 75-95.

Occlusion and labels, exactly: an object's pixels are those with alpha >= 0.5; a later object takes
over the pixels it covers. The visible fraction of an object = its pixels still its own and inside the
frame / all its pixels. A placement is retried (up to 12 positions, else the object is skipped)
whenever it would leave the new object or any earlier one less than 40% visible, so no object in an
image is ever less than 40% visible and every object drawn is annotated. The box is the tight box of
the object's visible pixels (VOC's "visible extent"). `difficult` = visible fraction < 0.6 or the
box's longer side < 14 px; `truncated` = part of the object falls outside the frame.

Splits: N images -> val = test = max(1, round(0.15 N)), train = the rest (2000 -> 1400/300/300); ids
000000.. in train, val, test order. Classes within a split are dealt from shuffled 16-class decks, so
every split covers the classes evenly. The 1,797 digits are split once, stratified by digit and
independent of the seed, into disjoint pools (70/15/15%); an image of split S only uses digits from
pool S, so no handwritten digit instance of the test split is ever seen in training (for any seed).
The photographs are shared by all splits (only 15 exist); their crops differ.

Output (`out`): Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{train,val,test,trainval}.txt,
annotations/instances_{train,val,test,trainval}.json (category ids 1..16, iscrowd = difficult),
classes.txt, metadata.json (seed, counts, versions, digit pools), sources.json (per image, the
scikit-learn digit index of each annotated object in annotation order, -1 for shapes) and README.txt.
Deterministic: a pure function of (images, seed, library versions); generated in a temp sibling folder
and renamed into place.

Longer than 400 lines: scene composition, shape drawing and the VOC/COCO writers of one generator whose
output is byte-identical for a seed (tests/unit/test_offline_dataset.py pins it).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable

import numpy as np

from enginesmith.data.coco import write_coco
from enginesmith.data.detection import DetectionSample
from enginesmith.data.offline_photos import PHOTO_FILES, base_photos
from enginesmith.data.voc import annotation_xml, write_class_names, write_image_set
from enginesmith.errors import EnginesmithError
from enginesmith.files import publish_folder
from enginesmith.models.classes import OFFLINE_NAMES

GENERATOR = "enginesmith-offline-detection"
VERSION = 1
SPLITS = ("train", "val", "test")
SPLIT_FRACTION = 0.15  # of val and of test
MIN_OBJECTS, MAX_OBJECTS = 2, 8
MIN_SIDE_PX = 12.0
VISIBLE_MIN = 0.4
DIFFICULT_VISIBLE = 0.6
DIFFICULT_SIDE_PX = 14
PLACEMENT_TRIES = 12
DIGIT_POOL_SEED = 0x0D1617  # fixed: the digit pools do not depend on the generation seed
DIGIT_CLASSES = 10
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
LIBRARIES = ("numpy", "pillow", "scikit-image", "scikit-learn")


# ----------------------------------------------------------------------------------------- planning


def split_sizes(images: int) -> dict[str, int]:
    """{'train': n, 'val': n, 'test': n} for `images` images (2000 -> 1400/300/300)."""
    if images < 3:
        raise EnginesmithError(f"the offline set needs at least 3 images (one per split), got {images}")
    val = test = max(1, round(SPLIT_FRACTION * images))
    return {"train": images - val - test, "val": val, "test": test}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images float32 [1797, 8, 8] in 0..1, labels int64 [1797]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is in the [data] extra
        raise EnginesmithError("the offline dataset needs scikit-learn's digits: pip install 'enginesmith[data]'") from None
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    images.setflags(write=False)
    return images, d.target.astype(np.int64)


@lru_cache(maxsize=1)
def digit_pools() -> dict[str, tuple[np.ndarray, ...]]:
    """Disjoint digit pools: {split: (indices of digit 0, ..., of digit 9)} into load_digits(), sorted.

    Stratified: each digit's instances are shuffled with a fixed seed and cut 70/15/15 (train/val/test).
    """
    _, labels = _digits()
    rng = np.random.default_rng(DIGIT_POOL_SEED)
    pools: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in range(DIGIT_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        nv = nt = round(SPLIT_FRACTION * n)
        cuts = {"train": idx[: n - nv - nt], "val": idx[n - nv - nt : n - nt], "test": idx[n - nt :]}
        for s in SPLITS:
            pools[s].append(np.sort(cuts[s]))
    return {s: tuple(v) for s, v in pools.items()}


@dataclass(frozen=True)
class _Plan:
    index: int
    image_id: str
    split: str
    classes: tuple[int, ...]  # the classes to try to place, in order


def _plan(images: int, seed: int) -> list[_Plan]:
    plans: list[_Plan] = []
    index = 0
    for code, split in enumerate(SPLITS):
        n = split_sizes(images)[split]
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), code, 0xC1A55]))
        counts = rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1, size=n)
        decks = np.concatenate([rng.permutation(len(OFFLINE_NAMES)) for _ in range(-(-int(counts.sum()) // 16))])
        start = 0
        for k in counts:
            plans.append(_Plan(index, f"{index:06d}", split, tuple(int(c) for c in decks[start : start + k])))
            start += int(k)
            index += 1
    return plans


# ---------------------------------------------------------------------------------------- rendering


@dataclass
class _Object:
    label: int
    region: tuple[int, int, int, int]  # in-frame patch bounds y0, y1, x0, x1
    full: int  # pixels with alpha >= 0.5, in and out of frame
    truncated: bool
    digit_index: int


@lru_cache(maxsize=1)
def _photos_pil() -> tuple:
    from PIL import Image

    return tuple(Image.fromarray(p) for p in base_photos())


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A crop of a random photo resized to (height, width, 3) float32 0..255 with colour jitter."""
    from PIL import Image

    photos = _photos_pil()
    photo = photos[int(rng.integers(len(photos)))]
    pw, ph = photo.size
    aspect = height / width
    max_cw = min(pw, ph / aspect)
    lo = min(max_cw, width / 1.6)
    cw = float(np.exp(rng.uniform(np.log(lo), np.log(max_cw)))) if max_cw > lo else max_cw
    ch = cw * aspect
    left = float(rng.uniform(0, pw - cw)) if pw > cw else 0.0
    top = float(rng.uniform(0, ph - ch)) if ph > ch else 0.0
    img = photo.resize((width, height), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    arr = np.asarray(img, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    gain = rng.uniform(0.85, 1.15, size=3).astype(np.float32) * np.float32(rng.uniform(0.8, 1.2))
    contrast = np.float32(rng.uniform(0.8, 1.2))
    mean = arr.mean()
    return np.clip((arr - mean) * contrast + mean, 0, 255) * gain  # clipped at the end


def _unit_shape(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """(outer polygon [P, 2] in [-1, 1]^2, optional hole polygon) for a shape class."""
    if kind in ("circle", "ring"):
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        return outer, (outer * rng.uniform(0.5, 0.7) if kind == "ring" else None)
    if kind == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64), None
    if kind == "triangle":
        tri = np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64)
        return (tri * [1, -1] if rng.random() < 0.5 else tri), None
    if kind == "star":
        inner = rng.uniform(0.38, 0.5)
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1), None
    if kind == "cross":
        t = rng.uniform(0.3, 0.45)
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
        return np.array(pts, dtype=np.float64), None
    raise AssertionError(kind)


def _shape_alpha(kind: str, w: float, h: float, angle_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased alpha [ph, pw] float32 0..1 of a shape with box w x h (before rotation by angle)."""
    from PIL import Image, ImageChops, ImageDraw

    outer, hole = _unit_shape(kind, rng)
    outlined = kind in ("square", "triangle", "star", "cross") and rng.random() < 0.35
    th = math.radians(angle_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    scale = np.array([w / 2.0, h / 2.0])
    polys = [(p * scale) @ rot.T for p in ([outer] if hole is None else [outer, hole])]
    lo, hi = polys[0].min(0), polys[0].max(0)
    pw, ph = int(math.ceil(hi[0] - lo[0])) + 4, int(math.ceil(hi[1] - lo[1])) + 4
    ss = 4 if max(pw, ph) < 64 else 3 if max(pw, ph) < 128 else 2
    canvas = Image.new("L", (pw * ss, ph * ss), 0)
    draw = ImageDraw.Draw(canvas)
    centre = np.array([pw / 2.0, ph / 2.0])
    pts = [[tuple(v) for v in ((p + centre) * ss)] for p in polys]
    draw.polygon(pts[0], fill=255)
    if hole is not None:
        draw.polygon(pts[1], fill=0)
    if outlined:  # the band inside the outline: the fill AND a stroke of twice the width along the edges
        width = max(1.5, min(w, h) * rng.uniform(0.1, 0.18))
        stroke = Image.new("L", canvas.size, 0)
        ImageDraw.Draw(stroke).line(pts[0] + pts[0][:1], fill=255, width=max(2, round(2 * width * ss)), joint="curve")
        canvas = ImageChops.multiply(canvas, stroke)
    return np.asarray(canvas.reduce(ss), dtype=np.float32) * np.float32(1 / 255)


def _digit_alpha(digit: np.ndarray, w: float, h: float, angle_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Alpha [ph, pw] float32 0..1 of an 8x8 digit (values 0..1) drawn w x h px, rotated by angle."""
    from PIL import Image

    pad = np.pad(digit, 1)  # the digit's 8x8 cell becomes the inner 8/10 of the upscaled patch
    tw, th = max(3, round(w * 10 / 8)), max(3, round(h * 10 / 8))
    up = np.asarray(Image.fromarray(pad).resize((tw, th), Image.BICUBIC), dtype=np.float32)
    level = rng.uniform(0.35, 0.55)  # stroke weight
    ramp = 1.5 * 8.0 / max(w, h)  # intensity change over ~1.5 output px: an anti-aliased edge
    alpha = np.clip((up - level) / ramp + 0.5, 0.0, 1.0).astype(np.float32)
    if abs(angle_deg) > 0.5:
        alpha = np.asarray(Image.fromarray(alpha).rotate(angle_deg, resample=Image.BILINEAR, expand=True))
    return np.ascontiguousarray(alpha, dtype=np.float32)


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _contrasting_colour(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random RGB (float32 [3]) whose luma differs from bg's by >= 45 and RGB distance >= 90."""
    for _ in range(30):
        c = rng.uniform(0, 255, size=3).astype(np.float32)
        if abs(_luma(c) - _luma(bg)) >= 45 and float(np.linalg.norm(c - bg)) >= 90:
            return c
    return np.full(3, 255.0 if _luma(bg) < 128 else 0.0, dtype=np.float32)


def _shaded(colour: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """colour [3] with a +-20% linear gradient over a (h, w) patch -> [h, w, 3] float32."""
    h, w = shape
    gx, gy = rng.uniform(-0.2, 0.2, size=2)
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    return (1.0 + np.float32(gx) * xx + np.float32(gy) * yy)[..., None] * colour


def _blend(canvas: np.ndarray, y0: int, x0: int, alpha: np.ndarray, colour: np.ndarray, opacity: float) -> None:
    """canvas[y0:, x0:] = canvas * (1 - a) + colour * a with a = alpha * opacity, over alpha's extent (in place).

    The object owns the pixels where alpha >= 0.5 (opacity only changes how it looks).
    """
    h, w = alpha.shape
    region = canvas[y0 : y0 + h, x0 : x0 + w]
    a = (alpha * np.float32(opacity))[..., None]
    region *= 1.0 - a
    region += a * colour


def _object_alpha(label: int, side: float, pools: tuple[np.ndarray, ...], rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(alpha [ph, pw] float32 0..1, scikit-learn digit index or -1) of one object whose longer side is `side`."""
    if label < DIGIT_CLASSES:
        pool = pools[label]
        digit_index = int(pool[int(rng.integers(len(pool)))])
        h = side
        w = side * rng.uniform(0.6, 0.85)
        return _digit_alpha(_digits()[0][digit_index], w, h, rng.uniform(-15, 15), rng), digit_index
    aspect = float(np.exp(rng.uniform(-0.3, 0.3)))
    w, h = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
    return _shape_alpha(OFFLINE_NAMES[label], w, h, rng.uniform(-20, 20), rng), -1


@dataclass
class _Placement:
    y0: int  # patch top-left in the image (may be negative: partly out of frame)
    x0: int
    region: tuple[int, int, int, int]  # in-frame part: y0, y1, x0, x1
    mask_in: np.ndarray  # the object's pixels (alpha >= 0.5) within region
    covered: np.ndarray  # [k] pixels this placement takes from each earlier object


def _place(mask: np.ndarray, owner: np.ndarray, owned: list[int], objects: list[_Object],
           rng: np.random.Generator) -> _Placement | None:
    """A position for `mask` leaving it and every earlier object >= VISIBLE_MIN visible, or None."""
    height, width = owner.shape
    ph, pw = mask.shape
    full = int(mask.sum())
    for _ in range(PLACEMENT_TRIES):
        if rng.random() < 0.15 or pw > width or ph > height:  # may leave the frame (truncation)
            x0 = int(rng.integers(-pw // 2, width - pw // 2 + 1))
            y0 = int(rng.integers(-ph // 2, height - ph // 2 + 1))
        else:
            x0 = int(rng.integers(0, width - pw + 1))
            y0 = int(rng.integers(0, height - ph + 1))
        ya, yb, xa, xb = max(0, y0), min(height, y0 + ph), max(0, x0), min(width, x0 + pw)
        if yb <= ya or xb <= xa:
            continue
        m_in = mask[ya - y0 : yb - y0, xa - x0 : xb - x0]
        if int(m_in.sum()) < VISIBLE_MIN * full:
            continue
        under = owner[ya:yb, xa:xb][m_in]
        covered = np.bincount(under[under >= 0], minlength=len(objects)) if len(objects) else np.zeros(0, int)
        if any(owned[j] - covered[j] < VISIBLE_MIN * objects[j].full for j in range(len(objects))):
            continue
        return _Placement(y0, x0, (ya, yb, xa, xb), m_in, covered)
    return None


def _draw_plate(canvas: np.ndarray, at: _Placement, side: float, colour: np.ndarray, rng: np.random.Generator) -> None:
    """A translucent (alpha 0.4 < 0.5: not part of the object) rectangle around a digit's ink."""
    height, width = canvas.shape[:2]
    plate = _contrasting_colour(colour, rng)
    ya, _, xa, _ = at.region
    rows, cols = np.flatnonzero(at.mask_in.any(1)), np.flatnonzero(at.mask_in.any(0))
    m = int(max(2, 0.12 * side))
    py0, py1 = max(0, ya + int(rows[0]) - m), min(height, ya + int(rows[-1]) + 1 + m)
    px0, px1 = max(0, xa + int(cols[0]) - m), min(width, xa + int(cols[-1]) + 1 + m)
    canvas[py0:py1, px0:px1] = canvas[py0:py1, px0:px1] * 0.6 + plate * 0.4


def _render(plan: _Plan, seed: int) -> tuple[np.ndarray, list[tuple[tuple[int, int, int, int], _Object, float]]]:
    """Render one image -> (HxWx3 uint8 before JPEG, [(box x1,y1,x2,y2 ints, object, visible fraction)])."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), plan.index, 0x0FF1]))
    width, height = int(rng.integers(320, 481)), int(rng.integers(240, 401))
    canvas = np.ascontiguousarray(_background(rng, width, height))
    owner = np.full((height, width), -1, dtype=np.int16)  # which object owns each pixel
    owned: list[int] = []  # each object's pixels still its own
    objects: list[_Object] = []
    pools = digit_pools()[plan.split]
    max_side = max(MIN_SIDE_PX * 1.5, 0.5 * min(width, height))

    for label in plan.classes:
        side = float(np.exp(rng.uniform(np.log(MIN_SIDE_PX), np.log(max_side))))
        alpha, digit_index = _object_alpha(label, side, pools, rng)
        mask = alpha >= 0.5
        full = int(mask.sum())
        if full == 0:
            continue
        at = _place(mask, owner, owned, objects, rng)
        if at is None:
            continue
        ya, yb, xa, xb = at.region
        a_in = alpha[ya - at.y0 : yb - at.y0, xa - at.x0 : xb - at.x0]
        inside = int(at.mask_in.sum())
        bg_mean = canvas[ya:yb, xa:xb][at.mask_in].mean(0)
        colour = _contrasting_colour(np.clip(bg_mean, 0, 255), rng)
        if label < DIGIT_CLASSES and rng.random() < 0.3:
            _draw_plate(canvas, at, side, colour, rng)
        opacity = np.float32(rng.uniform(0.85, 1.0))
        _blend(canvas, ya, xa, a_in, _shaded(colour, a_in.shape, rng), opacity)
        for j in range(len(objects)):
            owned[j] -= int(at.covered[j])
        owner[ya:yb, xa:xb][at.mask_in] = len(objects)
        owned.append(inside)
        objects.append(_Object(label, at.region, full, inside < full, digit_index))

    if rng.random() < 0.5:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(1, 5))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0))))

    out = []
    for k, obj in enumerate(objects):
        ya, yb, xa, xb = obj.region
        sub = owner[ya:yb, xa:xb] == k
        rows, cols = np.flatnonzero(sub.any(1)), np.flatnonzero(sub.any(0))
        box = (xa + int(cols[0]), ya + int(rows[0]), xa + int(cols[-1]) + 1, ya + int(rows[-1]) + 1)
        out.append((box, obj, owned[k] / obj.full))
    return image, out


def _jpeg_quality(plan: _Plan, seed: int) -> int:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), plan.index, 0x1BE6]))
    return int(rng.integers(75, 96))


# ------------------------------------------------------------------------------------------ writing


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:  # pragma: no cover
            out[name] = "absent"
    return out


def _parameters(images: int, seed: int) -> dict[str, object]:
    return {"generator": GENERATOR, "version": VERSION, "images": int(images), "seed": int(seed)}


def _existing(out: Path, params: dict[str, object]) -> Path | None:
    """`out` if it is a complete offline set made with `params`; None if it is absent or empty; else raise."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise EnginesmithError(f"{out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return None
    meta_path = out / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise EnginesmithError(
            f"{out} exists, is not empty and is not an offline dataset (no readable metadata.json); choose another --out"
        ) from None
    have = {k: meta.get(k) for k in params}
    if have != params:
        def say(p: dict) -> str:
            return f"{p['generator']} v{p['version']} images={p['images']} seed={p['seed']}"

        raise EnginesmithError(
            f"{out} holds an offline set made as {say(have)}, not {say(params)}; choose another --out or delete it"
        )
    expected = [out / "classes.txt", out / "annotations" / "instances_test.json"]
    expected += [out / "ImageSets" / "Main" / f"{s}.txt" for s in (*SPLITS, "trainval")]
    missing = [p for p in expected if not p.is_file()]
    n_images = sum(1 for _ in (out / "JPEGImages").glob("*.jpg")) if (out / "JPEGImages").is_dir() else 0
    if missing or n_images != params["images"]:
        raise EnginesmithError(f"{out} is an incomplete offline set ({n_images} images); delete it and generate again")
    return out


def generate_offline_dataset(
    out: Path, images: int = 2000, seed: int = 0, progress: Callable[[int], None] | None = None
) -> Path:
    """Generate the offline detection set (see the module docstring) into `out`; returns `out`.

    `progress(done)` is called after each image. An `out` that already holds a complete set with the
    same images/seed/version is returned as is; any other non-empty `out` is an EnginesmithError.
    """
    out = Path(out).expanduser()
    images, seed = int(images), int(seed)
    split_sizes(images)  # validates
    params = _parameters(images, seed)
    if _existing(out, params) is not None:
        return out
    publish_folder(lambda tmp: _build(tmp, images, seed, progress), out)
    return out


def _build(root: Path, images: int, seed: int, progress: Callable[[int], None] | None) -> None:
    from PIL import Image

    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    ann_dir.mkdir()
    img_dir.mkdir()
    per_split: dict[str, list[DetectionSample]] = {s: [] for s in SPLITS}
    sources: dict[str, list[int]] = {}
    visible: list[float] = []
    for done, plan in enumerate(_plan(images, seed), start=1):
        image, objs = _render(plan, seed)
        path = img_dir / f"{plan.image_id}.jpg"
        Image.fromarray(image).save(path, format="JPEG", quality=_jpeg_quality(plan, seed))
        sample = DetectionSample(
            image_id=plan.image_id,
            image_path=path,
            width=image.shape[1],
            height=image.shape[0],
            boxes=np.asarray([b for b, _, _ in objs], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray([o.label for _, o, _ in objs], dtype=np.int64),
            difficult=np.asarray(
                [v < DIFFICULT_VISIBLE or max(b[2] - b[0], b[3] - b[1]) < DIFFICULT_SIDE_PX for b, _, v in objs],
                dtype=bool,
            ),
        )
        truncated = [o.truncated for _, o, _ in objs]
        (ann_dir / f"{plan.image_id}.xml").write_text(annotation_xml(sample, OFFLINE_NAMES, truncated, "offline"))
        per_split[plan.split].append(sample)
        sources[plan.image_id] = [o.digit_index for _, o, _ in objs]
        visible.extend(v for _, _, v in objs)
        if progress is not None:
            progress(done)

    write_class_names(root, OFFLINE_NAMES)
    splits = {**per_split, "trainval": per_split["train"] + per_split["val"]}
    for split, samples in splits.items():
        write_image_set(root, split, [s.image_id for s in samples])
        write_coco(root / "annotations" / f"instances_{split}.json", samples, OFFLINE_NAMES,
                   info={"description": f"{GENERATOR} v{VERSION} seed {seed}", "split": split})
    meta = _metadata(images, seed, per_split, visible)
    (root / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    (root / "sources.json").write_text(json.dumps(sources, separators=(",", ":")) + "\n")
    (root / "README.txt").write_text(_readme(meta))


def _metadata(images: int, seed: int, per_split: dict[str, list[DetectionSample]], visible: list[float]) -> dict:
    stats = {}
    for split, samples in per_split.items():
        labels = np.concatenate([s.labels for s in samples]) if samples else np.zeros(0, np.int64)
        difficult = np.concatenate([s.difficult for s in samples]) if samples else np.zeros(0, bool)
        counts = np.bincount(labels, minlength=len(OFFLINE_NAMES))
        stats[split] = {
            "images": len(samples),
            "objects": int(len(labels)),
            "difficult": int(difficult.sum()),
            "class_counts": {n: int(c) for n, c in zip(OFFLINE_NAMES, counts)},
        }
    pools = digit_pools()
    libs = library_versions()
    params = _parameters(images, seed)
    key = json.dumps({**params, "libraries": libs}, sort_keys=True)

    return {
        **params,
        "fingerprint": hashlib.sha256(key.encode()).hexdigest(),
        "class_names": list(OFFLINE_NAMES),
        "splits": stats,
        "occluded_objects": int(sum(v < 1.0 for v in visible)),
        "libraries": libs,
        "photos": [f"skimage/data/{p}" for p in PHOTO_FILES],
        "digit_pools": {s: [int(i) for i in np.sort(np.concatenate(pools[s]))] for s in SPLITS},
        "rules": {
            "objects_per_image": [MIN_OBJECTS, MAX_OBJECTS],
            "object_side_px": f"log-uniform [{MIN_SIDE_PX:g}, 0.5 * min(width, height)]",
            "image_width": [320, 480],
            "image_height": [240, 400],
            "visible_min": VISIBLE_MIN,
            "difficult": f"visible fraction < {DIFFICULT_VISIBLE} or box longer side < {DIFFICULT_SIDE_PX} px",
            "box": "tight box of the object's visible pixels (alpha >= 0.5)",
        },
    }


def _readme(meta: dict) -> str:
    s = meta["splits"]
    counts = ", ".join(f"{k} {v['images']} images / {v['objects']} objects ({v['difficult']} difficult)" for k, v in s.items())
    libs = ", ".join(f"{k} {v}" for k, v in meta["libraries"].items())
    return (
        f"enginesmith offline detection set ({GENERATOR} v{VERSION}), seed {meta['seed']}, {meta['images']} images.\n"
        f"Splits: {counts}.\n"
        f"Classes (id = line of classes.txt; COCO category id = id + 1): {', '.join(OFFLINE_NAMES)}.\n"
        "Backgrounds: crops of scikit-image's sample photographs (skimage/data; see scikit-image's data README\n"
        "for each photo's source and licence). Digits: scikit-learn's load_digits (UCI optdigits, CC BY 4.0),\n"
        "split into disjoint train/val/test pools (metadata.json digit_pools; sources.json gives each object's\n"
        "digit index, -1 for shapes). Shapes are drawn. Nothing was downloaded.\n"
        f"Labels: {meta['rules']['box']}; objects are >= {VISIBLE_MIN:g} visible; difficult = {meta['rules']['difficult']}.\n"
        "Layout: VOC (Annotations/, JPEGImages/, ImageSets/Main/) with COCO json in annotations/.\n"
        f"Libraries: {libs}. Regenerate: enginesmith data offline --out DIR --images {meta['images']} --seed {meta['seed']}\n"
    )
