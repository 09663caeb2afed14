"""The model registry: one `ModelSpec` per network, registered by its family file.

Adding a model is one file in models/ that calls `register(ModelSpec(...))`; registering the same
name twice is an error. `get(name)` suggests the closest names for a typo.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import PreprocessSpec

Task = Literal["classification", "detection", "dense"]

# A plain ceiling on each side of an input, checked before anything else looks at the size (even the memory
# estimate, models/memory.py): the largest native input in the zoo is 800x800 and no model here gains from 10x
# that. 8192 x 8192 x 3 float32 is already 768 MiB for the input tensor alone.
MAX_INPUT_SIDE = 8192


def check_input_side(size: tuple[int, ...], native: tuple[int, ...] | None = None) -> None:
    """Each side at least 1 and at most MAX_INPUT_SIDE pixels; else a one-line EnginesmithError (`native`: the
    model's own size, suggested in the message)."""
    dims = tuple(int(d) for d in size)
    text = "x".join(str(d) for d in dims)
    hint = f"drop --input-size for the model's native {'x'.join(str(d) for d in native)}" if native else \
        "e.g. --input-size 416x416"
    if any(d < 1 for d in dims):
        raise EnginesmithError(f"input size {text} has a side of 0 pixels; {hint}")
    if any(d > MAX_INPUT_SIDE for d in dims):
        raise EnginesmithError(f"input size {text} is over {MAX_INPUT_SIDE} pixels a side, the most enginesmith "
                               f"builds; give each side at most {MAX_INPUT_SIDE} ({hint})")


# Modules of enginesmith.models that are not model families; every other module is imported (once,
# the first time the registry is read) and registers its models itself.
NOT_FAMILIES = {"registry", "ops", "profile", "catalog", "catalog_cache", "layers", "weights", "classes", "memory",
                "darknet_plan", "darknet_net"}


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about one network.

    - builder(num_classes, input_size) -> torch.nn.Module in eval mode, deterministically
      initialised (the caller seeds torch). Classification models output `logits [N, C]`;
      detectors output `boxes [N, A, 4]` (x1, y1, x2, y2, input pixels) and `scores [N, A, C]`
      (probabilities), with all box decoding inside submodules named `decode` so quantizers can
      keep it in float (node names then contain "/decode/").
    - check_input_size((H, W)) raises EnginesmithError for sizes the architecture cannot take.
    - load_weights(model, path) loads a checkpoint by path (format chosen from the file), raising
      EnginesmithError with a clear message for missing/truncated/mismatched files.
    - default_calibration: name of the offline calibration source ("photos" or "digits").
    """

    name: str
    task: Task
    builder: Callable[..., object]
    input_size: tuple[int, int]
    num_classes: int
    preprocess: PreprocessSpec
    output_names: tuple[str, ...]
    check_input_size: Callable[[tuple[int, int]], None]
    load_weights: Callable[[object, Path], None]
    class_names: tuple[str, ...] = ()
    default_calibration: str = "photos"
    paper: str = ""
    source_file: str = ""  # the family file, hashed into the export cache key
    ci_input_size: tuple[int, int] | None = None  # the size the CI zoo test builds it at; None: slow tests only
    two_stage: Literal["rcnn", "fast-rcnn"] | None = None  # proposals on the host around the engine (runtime/two_stage.py)
    feeds: Literal["rcnn_regions", "fast_rcnn_rois"] | None = None  # engine feeds per image (calibration/feeds.py)
    static_batch: bool = False  # exported with batch 1 only (a per-image proposal stage)
    image_model: bool = True  # False: its input is not an image (volumetric); build-engine does not take it
    input_shape: tuple[int, ...] | None = None  # per-sample input shape when it is not (C, *input_size)
    trainer: Literal["faster-rcnn"] | None = None  # a training loop of its own (training/loop.py)
    details: dict = field(default_factory=dict, compare=False, hash=False)  # published constants, for people and tests
    # the file a network was built from (a user's Darknet cfg, models/darknet_net.py): {"format", "file", "sha256"};
    # its sha256 enters the export stage's key and the engine manifest records it. None for the zoo's own models.
    definition: dict[str, str] | None = field(default=None, compare=False, hash=False)

    def check_size(self, size: tuple[int, int]) -> None:
        """The plain ceiling (check_input_side), then what the architecture takes (check_input_size)."""
        check_input_side(size, self.input_size)
        self.check_input_size(tuple(int(s) for s in size))  # type: ignore[arg-type]

    def create(self, num_classes: int | None = None, input_size: tuple[int, int] | None = None, seed: int = 0):
        """Build the network (eval mode), seeded so the untrained weights are reproducible."""
        import torch

        size = tuple(input_size or self.input_size)
        self.check_size(size)  # type: ignore[arg-type]
        torch.manual_seed(seed)
        model = self.builder(num_classes=num_classes or self.num_classes, input_size=size)
        return model.eval()


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model; a second model with the same name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import pkgutil

        import enginesmith.models as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if info.name not in NOT_FAMILIES and not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")


def get(name: str) -> ModelSpec:
    """The spec of `name`, or an EnginesmithError naming the closest registered models."""
    _load_families()
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise EnginesmithError(f"unknown model {name!r}{hint} (`enginesmith models` lists them all)")


def names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def all_specs() -> list[ModelSpec]:
    return [_REGISTRY[n] for n in names()]
