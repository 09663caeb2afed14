"""The state one build shares between its stages (`BuildContext`): the model (built lazily), the staged
weights, the cache, the calibration source and the images every stage is verified on."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from enginesmith.calibration.feeds import extra_inputs, feed_maker
from enginesmith.calibration.sources import calibration_batches, calibration_source
from enginesmith.cluster.executor import Executor, executor_for
from enginesmith.errors import EnginesmithError
from enginesmith.models.weights.checkpoint_info import read_checkpoint_info
from enginesmith.pipeline.accuracy import DEFAULT_BUDGET, check_classes, load_validation
from enginesmith.pipeline.artifacts import Artifact, Cache
from enginesmith.pipeline.config import BuildConfig
from enginesmith.pipeline.export import INPUT_NAME
from enginesmith.pipeline.inputs import stage_file
from enginesmith.pipeline.quantize import Calibration
from enginesmith.runtime.preprocess_override import resolve_preprocess

VERIFY_IMAGES = 8  # calibration images every stage is verified on


class BuildContext:
    """The state of one build: the model (built lazily), calibration and verification data."""

    def __init__(self, config: BuildConfig, spec: Any, on_stage: Callable[[Artifact], None]) -> None:
        self.config, self.spec, self.on_stage = config, spec, on_stage
        self._executor: Executor | None = None  # --cluster's, started when a measurement first needs it
        self.ran: list[Artifact] = []  # every stage this build ran or reused, in order (the report's stage table)
        # the weights are read once: hashed while copied into the cache, and the copy is what gets loaded
        self.weights = stage_file(Path(config.weights), Path(config.cache_dir)) if config.weights else None
        # a training checkpoint says what it was trained for; explicit options still win
        info = self._with_user_path(lambda: read_checkpoint_info(self.weights.path)) if self.weights else {}
        self.num_classes: int = int(config.num_classes or info.get("num_classes") or spec.num_classes)
        self.class_names = _class_names(spec, self.num_classes, info.get("class_names"))
        self.size = tuple(config.input_size or info.get("input_size") or spec.input_size)
        # the checkpoint family's channel order and normalisation: option, then checkpoint, then the model's
        self.preprocess, warnings = resolve_preprocess(spec.preprocess.with_size(*self.size), config.preprocess_override,
                                                       info.get("preprocess"), spec.name, str(config.weights))
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        self.cache = Cache(Path(config.cache_dir), rebuild=config.rebuild)
        self.source = calibration_source(
            Path(config.calib) if config.calib else None, spec.default_calibration, config.calib_size, seed=config.seed
        )

        static = None if config.dynamic_batch else config.batch
        # proposal-driven detectors (calibration/feeds.py): each calibration image becomes engine feeds
        self.feeds = feed_maker(spec, self.preprocess, static)
        self.extra_inputs, self.extra_axes = extra_inputs(spec)
        self.input_names = [INPUT_NAME, *self.extra_inputs]
        self.calibration = Calibration(self.source, self.preprocess, config.calib_method, static or 1, self.feeds)
        self.weights_id = self.weights.sha256 if self.weights else f"seeded:{config.seed}"

    def _with_user_path(self, read: Callable[[], Any]) -> Any:
        """Run `read()` on the staged weights; its errors name the user's file, not the cache copy."""
        try:
            return read()
        except EnginesmithError as e:
            assert self.weights is not None
            raise EnginesmithError(str(e).replace(str(self.weights.path), str(self.weights.source))) from None

    @property
    def trained(self) -> bool:
        return self.config.weights is not None

    @cached_property
    def model(self) -> Any:
        model = self.spec.create(num_classes=self.num_classes, input_size=self.size, seed=self.config.seed)
        if self.weights is not None:
            self._with_user_path(lambda: self.spec.load_weights(model, self.weights.path))
        return model.eval()

    @cached_property
    def verify_batches(self) -> list[Any]:
        """Up to VERIFY_IMAGES calibration images, as batches the engine takes (feed dicts for models with feeds)."""
        if self.feeds is not None:
            from itertools import islice

            return [f for image in islice(self.source.images(), VERIFY_IMAGES) for f in self.feeds(image)]

        per = 2 if self.config.dynamic_batch else self.config.batch
        images = np.concatenate(list(calibration_batches(self.source, self.preprocess, per)), axis=0)
        n = max(per, min(VERIFY_IMAGES, len(images)) // per * per)
        if len(images) < n:  # fewer images than one static batch: repeat them
            images = np.concatenate([images] * (n // len(images) + 1), axis=0)
        images = images[:n]
        return [images[i : i + per] for i in range(0, n, per)]

    # -- accuracy -------------------------------------------------------------------------------
    @cached_property
    def val(self) -> Any:
        val = load_validation(self.config.val, self.spec.task, self.config.val_split)  # type: ignore[arg-type]
        check_classes(val, self.num_classes)
        return val

    @property
    def budget(self) -> float:
        c = self.config
        return c.accuracy_budget if c.accuracy_budget is not None else DEFAULT_BUDGET[self.spec.task]

    def executor(self) -> Executor:
        """The executor --cluster names, started on first use (a build whose measurements are all cached starts
        none) and kept for the build's other measurements; close() ends it."""
        if self._executor is None:
            assert self.config.cluster is not None
            self._executor = executor_for(self.config.cluster)
        return self._executor

    def close(self) -> None:
        """End the executor, if one was started."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.close()

    def record(self, art: Artifact) -> Artifact:
        """Add a finished stage (cached or built) to `ran` and report it to the caller's on_stage; return it."""
        self.ran.append(art)
        self.on_stage(art)
        return art


def _class_names(spec: Any, n: int, from_checkpoint: Any = None) -> list[str]:
    """The checkpoint's names, else the spec's when the class count matches, else "0".."C-1"."""
    if from_checkpoint is not None and len(from_checkpoint) == n:
        return [str(c) for c in from_checkpoint]
    return list(spec.class_names) if len(spec.class_names) == n else [str(i) for i in range(n)]
