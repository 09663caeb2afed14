"""Training recipes: the schedule, optimiser and augmentation each model trains with.

A recipe is part of a checkpoint's identity (its hash is in the cache key), so changing one retrains.
The per-model recipes below were chosen by the measurements in benchmarks/ (see the report of issue 4);
other models get the family default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from enginesmith.training.augment import AugmentConfig
from enginesmith.training.losses import YoloLossWeights


@dataclass(frozen=True)
class Recipe:
    """epochs: full passes over the training split; lr: peak learning rate after `warmup_epochs` of
    linear warm-up, then cosine decay to lr * final_lr_fraction; AdamW (decoupled weight decay on
    conv/linear weights only) or SGD with Nesterov momentum 0.9; ema: decay of the weights' exponential
    moving average used for evaluation and the checkpoint (0 disables)."""

    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    final_lr_fraction: float = 0.05
    ema: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    yolo: YoloLossWeights = field(default_factory=YoloLossWeights)
    eval_every: int = 0  # evaluate val mAP every this many epochs (0: only at the end)

    def key(self) -> str:
        """A stable hash of every field that shapes the weights (the cache identity of the recipe);
        eval_every only adds evaluations, so it is left out."""
        fields = asdict(self)
        fields.pop("eval_every")
        text = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=list))


# Measured on the offline set (2000 images, seed 0), this 2-core CPU: see the issue-4 report. Epochs are
# what fits ~20 minutes of training at the quiet-CPU speed with 2 threads (yolov3-tiny-256 25.7 img/s,
# yolov3-tiny-3l-256 20.8 img/s, ssd-slim-256 16.9 img/s at batch 8).
EDGE_AUGMENT = AugmentConfig(zoom=(0.75, 1.5), translate=0.15)
DETECTOR_DEFAULT = Recipe(epochs=20, batch_size=8, lr=2e-3, ema=0.999, augment=EDGE_AUGMENT)
CLASSIFIER_DEFAULT = Recipe(epochs=15, batch_size=64, lr=2e-3, weight_decay=1e-4, warmup_epochs=0.5,
                            augment=AugmentConfig.off())

RECIPES: dict[str, Recipe] = {
    "yolov3-tiny-256": replace(DETECTOR_DEFAULT, epochs=22),
    "yolov3-tiny-3l-256": replace(DETECTOR_DEFAULT, epochs=18),
    "ssd-slim-256": replace(DETECTOR_DEFAULT, epochs=14),
    # Two-stage detectors (issue 8; training/rcnn.py and training/fast_rcnn.py hold the region sampling, SVM
    # and regression settings). batch_size counts images per step: R-CNN 4 images x 32 warped regions = the
    # paper's 128-region minibatch; Fast R-CNN the paper's 2 images x 64 RoIs. No image augmentation beyond
    # the trainers' horizontal flip of mirror-symmetric classes.
    "rcnn-vgg16-slim": Recipe(epochs=3, batch_size=4, optimizer="adamw", lr=2e-3, weight_decay=5e-4,
                              warmup_epochs=0.2, final_lr_fraction=0.05, augment=AugmentConfig.off()),
    # Fast R-CNN: 2 epochs reached val VOC07 16.4 (loss still 1.35); 5 is what the arc benchmark's checkpoint used
    "fast-rcnn-vgg16-slim": Recipe(epochs=5, batch_size=2, optimizer="adamw", lr=1e-3, weight_decay=5e-4,
                                   warmup_epochs=0.2, final_lr_fraction=0.05, augment=AugmentConfig.off()),
    # Faster R-CNN on the same backbone (training/faster_rcnn.py: 256 RPN anchors and 128 RoIs per image), Fast
    # R-CNN's optimiser and data (2 images per step, flips of mirror-symmetric classes only). 4 epochs with 1 thread
    # beside another training (bf16 backbone): 255-355 s per epoch, 21.4 min in all; val VOC07 mAP 34.6.
    "faster-rcnn-vgg16-slim": Recipe(epochs=4, batch_size=2, optimizer="adamw", lr=1e-3, weight_decay=5e-4,
                                     warmup_epochs=0.2, final_lr_fraction=0.05, augment=AugmentConfig.off()),
}


def recipe_for(model: str, task: str, epochs: int | None = None) -> Recipe:
    """The recipe of `model` (a registry name), with `epochs` overriding its default when given."""
    base = RECIPES.get(model, CLASSIFIER_DEFAULT if task == "classification" else DETECTOR_DEFAULT)
    return replace(base, epochs=int(epochs)) if epochs is not None else base
