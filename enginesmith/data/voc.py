"""PASCAL VOC2007-style detection folders: read one split into a DetectionDataset; write annotations.

Layout (what `read_voc` expects under `root`):
  Annotations/<id>.xml         one file per image: size/width,height and object/name,difficult,bndbox
  JPEGImages/<filename>        the image named by the xml's <filename> (else <id>.jpg)
  ImageSets/Main/<split>.txt   one image id per line (tokens after the first, e.g. VOC's "1"/"-1", ignored)
  classes.txt                  optional, one class name per line (class id = line index); without it
                               the 20 PASCAL VOC class names (models/classes.py VOC_NAMES)

Boxes: VOC's 1-based inclusive (xmin, ymin, xmax, ymax) <-> (xmin - 1, ymin - 1, xmax, ymax)
continuous pixels (see detection.py). A missing <difficult> is 0. XML is parsed with defusedxml.
Each image's header is read when its annotation is (no pixels decoded): a <size> that differs from the
real image is an error naming both (a lying <size> would let boxes outside the image through; 0 x 0 means
"take the header's"), and a decompression bomb is refused before any work starts.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from enginesmith.data.detection import DetectionDataset, DetectionSample
from enginesmith.errors import EnginesmithError
from enginesmith.files import write_text_atomic
from enginesmith.models.classes import VOC_NAMES
from enginesmith.runtime.images import image_file_size

BOX_TOLERANCE_PX = 1.0  # a box may poke this far past the image border (rounding in real annotations)
BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


def read_class_names(root: Path) -> tuple[str, ...]:
    """Class names from `<root>/classes.txt` (one per line, blank lines skipped), else VOC's 20."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return VOC_NAMES
    try:
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as e:
        raise EnginesmithError(f"cannot read class names from {path}: {e}") from None
    if not names:
        raise EnginesmithError(f"{path} lists no class names; write one class name per line or delete it")
    if len(set(names)) != len(names):
        raise EnginesmithError(f"{path} lists a class name twice; class names must be unique")
    return names


def read_voc(root: Path, split: str) -> DetectionDataset:
    """Read split `split` of the VOC-style folder `root` (layout in the module docstring).

    Every listed image must have an annotation and an image file; boxes must lie inside the image
    (1 px tolerance) with x2 > x1, y2 > y1. Any problem is an EnginesmithError naming the file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EnginesmithError(f"VOC dataset folder not found: {root}")
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    for d in (ann_dir, img_dir):
        if not d.is_dir():
            raise EnginesmithError(
                f"{root} is not a VOC-style dataset: {d.name}/ is missing (expected Annotations/, JPEGImages/, "
                "ImageSets/Main/<split>.txt)"
            )
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise EnginesmithError(
            f"split file {split_file} not found; splits present: {', '.join(have) or 'none'}"
        )
    ids = _read_ids(split_file)
    if not ids:
        raise EnginesmithError(f"split file {split_file} lists no images; the '{split}' split is empty")
    class_names = read_class_names(root)
    index = {name: i for i, name in enumerate(class_names)}
    samples = [parse_annotation(ann_dir / f"{i}.xml", img_dir, index, image_id=i) for i in ids]
    return DetectionDataset(root=root, split=split, class_names=class_names, samples=samples)


def _read_ids(split_file: Path) -> list[str]:
    try:
        lines = split_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EnginesmithError(f"cannot read split file {split_file}: {e}") from None
    return [line.split()[0] for line in lines if line.strip()]


def _number(text: str | None, what: str, xml_path: Path) -> float:
    if text is None or not text.strip():
        raise EnginesmithError(f"malformed annotation {xml_path}: {what} is missing; fix or remove the file")
    try:
        value = float(text)
    except ValueError:
        raise EnginesmithError(f"malformed annotation {xml_path}: {what} is not a number ({text.strip()!r})") from None
    if not np.isfinite(value):
        raise EnginesmithError(f"malformed annotation {xml_path}: {what} is not finite ({text.strip()!r})")
    return value


def parse_annotation(
    xml_path: Path, image_dir: Path, class_index: dict[str, int], image_id: str | None = None
) -> DetectionSample:
    """One VOC xml -> DetectionSample (boxes [K, 4] float32 x1y1x2y2 continuous pixels)."""
    xml_path = Path(xml_path)
    image_id = image_id if image_id is not None else xml_path.stem
    tree = _read_xml(xml_path)
    filename = (tree.findtext("filename") or "").strip()
    image_path = image_dir / filename if filename else image_dir / f"{image_id}.jpg"
    if not image_path.is_file() and (image_dir / f"{image_id}.jpg").is_file():
        image_path = image_dir / f"{image_id}.jpg"
    if not image_path.is_file():
        raise EnginesmithError(f"image {image_path} (named by {xml_path}) not found")
    width, height = _checked_size(tree, xml_path, image_path)
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(tree.findall("object")):
        box, label, diff = _parse_object(obj, k, xml_path, class_index, width, height)
        boxes.append(box)
        labels.append(label)
        difficult.append(diff)
    return DetectionSample(
        image_id=image_id,
        image_path=image_path,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        annotation=xml_path,
    )


def _read_xml(xml_path: Path) -> Any:
    """The annotation's root element, read with defusedxml (entities and DTDs refused)."""
    try:
        from defusedxml import DefusedXmlException
        from defusedxml.ElementTree import parse
    except ImportError:  # pragma: no cover - defusedxml is in the [data] extra
        raise EnginesmithError("reading VOC annotations needs defusedxml: pip install 'enginesmith[data]'") from None
    if not xml_path.is_file():
        raise EnginesmithError(f"annotation {xml_path} not found (listed in the split file); add it or drop the id")
    try:
        return parse(str(xml_path)).getroot()
    except DefusedXmlException as e:
        raise EnginesmithError(
            f"malformed annotation {xml_path}: refused an unsafe XML construct ({type(e).__name__}: entities/DTDs "
            "are not allowed)"
        ) from None
    except (ET.ParseError, OSError, UnicodeDecodeError) as e:
        raise EnginesmithError(f"malformed annotation {xml_path}: {e}") from None


def _checked_size(tree: Any, xml_path: Path, image_path: Path) -> tuple[int, int]:
    """(width, height) of the image from its own header (no pixels decoded; decompression bombs refused): the truth
    the boxes are checked against, since a <size> that lies would let boxes outside the real image through. A
    <size> that disagrees is refused; some real VOC files carry 0 x 0, and then the header's size is used."""
    size = tree.find("size")
    width = height = 0
    if size is not None and size.findtext("width") is not None:
        width = int(_number(size.findtext("width"), "size/width", xml_path))
        height = int(_number(size.findtext("height"), "size/height", xml_path))
    real_w, real_h = image_file_size(image_path)
    if width > 0 and height > 0 and (width, height) != (real_w, real_h):
        raise EnginesmithError(
            f"annotation {xml_path}: <size> says {width}x{height} but the image {image_path} is {real_w}x{real_h}; "
            "fix <size> (and check its boxes) or the image"
        )
    return real_w, real_h


def _parse_object(obj: Any, k: int, xml_path: Path, class_index: dict[str, int], width: int,
                  height: int) -> tuple[tuple[float, float, float, float], int, bool]:
    """Object `k`: (box x1y1x2y2, VOC's 1-based inclusive corners as (xmin-1, ymin-1, xmax, ymax); class index;
    difficult), its class known and its box inside the image."""
    name = (obj.findtext("name") or "").strip()
    if name not in class_index:
        known = ", ".join(list(class_index)[:25])
        raise EnginesmithError(
            f"annotation {xml_path}: object {k} has unknown class {name!r} (known: {known}); "
            "list the dataset's classes in classes.txt at the dataset root"
        )
    bb = obj.find("bndbox")
    if bb is None:
        raise EnginesmithError(f"malformed annotation {xml_path}: object {k} ({name}) has no <bndbox>")
    xmin, ymin, xmax, ymax = (_number(bb.findtext(f), f"object {k} bndbox/{f}", xml_path) for f in BOX_FIELDS)
    box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
    check_box(box, width, height, f"annotation {xml_path}: object {k} ({name})")
    diff_text = obj.findtext("difficult")
    diff = bool(int(_number(diff_text, f"object {k} difficult", xml_path))) if diff_text is not None else False
    return box, class_index[name], diff


def check_box(box: Sequence[float], width: int, height: int, where: str) -> None:
    """Raise EnginesmithError(`where` ...) unless x2 > x1, y2 > y1 and the box lies in the image (+-1 px)."""
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise EnginesmithError(f"{where}: empty box x1,y1,x2,y2 = {x1:g},{y1:g},{x2:g},{y2:g} (needs x2 > x1, y2 > y1)")
    t = BOX_TOLERANCE_PX
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise EnginesmithError(
            f"{where}: box x1,y1,x2,y2 = {x1:g},{y1:g},{x2:g},{y2:g} lies outside the {width}x{height} image"
        )


# ---------------------------------------------------------------------------------------------- writer


def annotation_xml(
    sample: DetectionSample,
    class_names: Sequence[str],
    truncated: Sequence[bool] | None = None,
    folder: str = "",
) -> str:
    """The VOC xml text for `sample` (its image_path's name is the <filename>).

    Boxes are written 1-based inclusive: xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2, rounded to
    whole pixels (VOC stores integers), so integer boxes round-trip exactly through read_voc.
    """
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = Path(sample.image_path).name
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(int(sample.width))
    ET.SubElement(size, "height").text = str(int(sample.height))
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "0"
    for k in range(len(sample.labels)):
        x1, y1, x2, y2 = (float(v) for v in sample.boxes[k])
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = class_names[int(sample.labels[k])]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(bool(truncated[k]))) if truncated is not None else "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(sample.difficult[k])))
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(BOX_FIELDS, (round(x1) + 1, round(y1) + 1, round(x2), round(y2))):
            ET.SubElement(bb, tag).text = str(int(v))
    ET.indent(ann, space="  ")
    return ET.tostring(ann, encoding="unicode") + "\n"


def write_voc_annotation(
    path: Path, sample: DetectionSample, class_names: Sequence[str], truncated: Sequence[bool] | None = None
) -> None:
    """Write `sample` as a VOC xml at `path` (atomically)."""
    write_text_atomic(Path(path), annotation_xml(sample, class_names, truncated))


def write_image_set(root: Path, split: str, ids: Sequence[str]) -> Path:
    """Write `<root>/ImageSets/Main/<split>.txt` (one id per line); returns its path."""
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(f"{i}\n" for i in ids))
    return path


def write_class_names(root: Path, class_names: Sequence[str]) -> Path:
    """Write `<root>/classes.txt` (one name per line, class id = line index)."""
    path = Path(root) / "classes.txt"
    write_text_atomic(path, "".join(f"{n}\n" for n in class_names))
    return path
