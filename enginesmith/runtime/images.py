"""Any image an app holds -> (H, W, 3) uint8 RGB, by one stated rule (numpy + Pillow, torch-free).

Accepted: a path (str or Path) to a file Pillow decodes, a PIL image, or a numpy array.

- Arrays are (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), uint8 or uint16, channels in `channels`
  order ("RGB", or "BGR" as OpenCV gives them).
- Gray (2-D or one channel) is repeated into R, G and B.
- Alpha (the 4th channel, RGBA/BGRA, PIL "RGBA"/"LA"/"PA") is dropped: the colour channels are used
  as stored, not composited onto a background (Pillow's and OpenCV's RGBA -> RGB rule).
- 16-bit (uint16 arrays, PIL "I;16*" and "I" modes) maps 0..65535 onto 0..255 as round(v / 257),
  so 65535 -> 255 and 257 * k -> k exactly; values outside 0..65535 are clipped first.
- Floating-point or other dtypes are refused: scale them to uint8 yourself (the rule would be a guess).
- Files are decoded as stored (EXIF orientation is not applied); the pipeline's `load_image`
  (runtime/preprocess.py) is this function, so boxes are in the pixel grid of the stored image.
- Files whose header claims more than MAX_IMAGE_PIXELS (Pillow's default limit, ~89 megapixels) are refused
  before any pixel is decoded (decompression bombs), as are empty and undecodable files: one-line
  EnginesmithErrors naming the file. `decode_image_bytes` applies the same rules to bytes already read.
"""

from __future__ import annotations

import io
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Union

import numpy as np

from enginesmith.errors import EnginesmithError

Channels = Literal["RGB", "BGR"]
ImageLike = Union[str, Path, np.ndarray, Any]  # Any: a PIL.Image.Image (Pillow is imported lazily)


def from_uint16(values: np.ndarray) -> np.ndarray:
    """16-bit intensities -> uint8 as round(v / 257) (0 -> 0, 65535 -> 255); clipped to 0..65535 first."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 65535)
    return np.rint(v / 257.0).astype(np.uint8)


def _array_to_rgb(arr: np.ndarray, channels: Channels, what: str) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = from_uint16(arr)
    elif arr.dtype != np.uint8:
        raise EnginesmithError(
            f"{what}: dtype {arr.dtype} is not an image dtype this runtime converts; give uint8 or uint16 "
            "(scale float images to 0..255 and cast with .astype(np.uint8))"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise EnginesmithError(
            f"{what}: shape {arr.shape} is not an image; give (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EnginesmithError(f"{what}: the image is empty (shape {arr.shape})")
    rgb = arr[:, :, :3]
    if channels == "BGR":
        rgb = rgb[:, :, ::-1]
    elif channels != "RGB":
        raise EnginesmithError(f"unknown channel order {channels!r}; use 'RGB' or 'BGR' (OpenCV frames)")
    return np.ascontiguousarray(rgb)


def _pil_to_rgb(im: Any, what: str) -> np.ndarray:
    """A PIL image in any mode -> (H, W, 3) uint8 RGB by the module's rule."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        return _array_to_rgb(np.asarray(im).astype(np.int64).clip(0, 65535).astype(np.uint16), "RGB", what)
    if mode == "F":
        raise EnginesmithError(f"{what}: 32-bit float image (PIL mode F); convert it to 8 or 16 bits first")
    if mode == "P":  # palette: expand through the palette (with its transparency, then dropped)
        im = im.convert("RGBA")
    if mode != "RGB":
        im = im.convert("RGB")  # L, LA, 1, CMYK, YCbCr, RGBA, ...: Pillow drops alpha, replicates gray
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


# Pillow's own default (Image.MAX_IMAGE_PIXELS: 1024**3 // 4 // 3 pixels, ~0.25 GiB of 24-bit RGB), held here so a
# program that lowers or disables Pillow's limit does not change what enginesmith decodes. A file whose header
# claims more is refused before any pixel is decoded (a decompression bomb: a small PNG can claim 50000x50000).
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
_MAX_SIDE = int(MAX_IMAGE_PIXELS**0.5)
DECODABLE = "give a readable JPEG/PNG/BMP/TIFF/WebP file"


def _bomb_error(what: str, pixels: int, size: tuple[int, int] | None = None) -> EnginesmithError:
    dims = f"{size[0]}x{size[1]} = " if size else ""
    return EnginesmithError(
        f"image {what} claims {dims}{pixels:,} pixels, over the {MAX_IMAGE_PIXELS:,} (about {_MAX_SIDE}x{_MAX_SIDE}) enginesmith "
        f"decodes: a decompression bomb or a mislabelled file; {DECODABLE} of at most that size"
    )


@contextmanager
def _opened(source: Any, what: str) -> Iterator[Any]:
    """Pillow's image for `source` (a path or a binary file object), its header checked (size within
    MAX_IMAGE_PIXELS, not empty) before the caller decodes any pixel; any failure inside the block, the decode
    included, becomes a one-line EnginesmithError naming `what`."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice it and raises above: both are refusals here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise _bomb_error(what, w * h, (w, h))
                if w == 0 or h == 0:
                    raise EnginesmithError(f"image {what} is empty ({w}x{h} pixels); {DECODABLE}")
                yield im
    except EnginesmithError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _bomb_error(what, int(found.group(1)) if found else MAX_IMAGE_PIXELS + 1) from None
    except MemoryError:
        raise EnginesmithError(f"image {what} is too large to decode in the memory available; {DECODABLE}") from None
    except Image.UnidentifiedImageError:  # its text names the file object; say it the same way for path and bytes
        raise EnginesmithError(f"cannot decode image {what}: not an image format Pillow reads; {DECODABLE}") from None
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, EOFError, struct.error... on bad data
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnginesmithError(f"cannot decode image {what}: {reason}; {DECODABLE}") from None


def _decode(source: Any, what: str) -> np.ndarray:
    """Decode `source` (a path or a binary file object) -> (H, W, 3) uint8 RGB by the module's rule."""
    with _opened(source, what) as im:
        im.load()
        return _pil_to_rgb(im, what)


def _checked_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"image not found: {p}; give the path of an image file")
    try:
        empty = p.stat().st_size == 0
    except OSError as e:
        raise EnginesmithError(f"cannot read image {p}: {e.strerror or e}") from None
    if empty:
        raise EnginesmithError(f"cannot decode image {p}: the file is empty (0 bytes); {DECODABLE}")
    return p


def decode_image_bytes(data: bytes, what: str) -> np.ndarray:
    """Decode the bytes of an image file (already read, e.g. to hash them) -> (H, W, 3) uint8 RGB, by exactly the
    rules and refusals of read_image_file; `what` names the source in error messages (e.g. its path)."""
    if not data:
        raise EnginesmithError(f"cannot decode image {what}: the file is empty (0 bytes); {DECODABLE}")
    return _decode(io.BytesIO(data), what)


def read_image_file(path: str | Path) -> np.ndarray:
    """Decode an image file -> (H, W, 3) uint8 RGB. Missing, undecodable or over MAX_IMAGE_PIXELS (a decompression
    bomb): a one-line EnginesmithError naming the file."""
    p = _checked_file(path)
    return _decode(p, str(p))


def image_file_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from an image file's header, no pixel decoded, with read_image_file's refusals (missing,
    unreadable, decompression bomb)."""
    p = _checked_file(path)
    with _opened(p, str(p)) as im:
        return int(im.width), int(im.height)


def to_rgb(image: ImageLike, channels: Channels = "RGB") -> np.ndarray:
    """A path, PIL image or array -> (H, W, 3) uint8 RGB (see the module docstring for the rule).

    `channels` says the order of a 3/4-channel array ("BGR" for OpenCV frames); paths and PIL images
    are always decoded as RGB.
    """
    if isinstance(image, (str, Path)):
        return read_image_file(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, channels, f"image array {image.shape}")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a runtime dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        return _pil_to_rgb(image, f"PIL image ({image.mode}, {image.size[0]}x{image.size[1]})")
    raise EnginesmithError(
        f"cannot use a {type(image).__name__} as an image; give a file path, a PIL image or an (H, W, 3) uint8 array"
    )
