"""OpenVINO throughput path for the runtime: a THROUGHPUT-compiled model fed through an AsyncInferQueue.

Several infer requests run at once (OpenVINO's CPU streams), while worker threads preprocess the next
images and the caller's thread post-processes the finished ones; results come back in submission order. Output names are the model's own (the CPU
plugin may rename a port when it folds the op behind it), as in backends/openvino.py.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from enginesmith.backends.base import first_line
from enginesmith.errors import EnginesmithError
from enginesmith.runtime.overlap import WORKER_NAME

T = TypeVar("T")
G = TypeVar("G")
P = TypeVar("P", bound=tuple)
R = TypeVar("R")

# Threads preparing groups in `pipeline`, beside the caller's thread that feeds the requests and post-processes:
# with the engine's streams on every core, the caller's thread alone got too small a share of the CPU to keep the
# requests fed. Measured on 2 cores (yolov3-tiny-256 OpenVINO INT8, batch 1, e2e_stream, 3 alternating pairs):
# batch() 122, 150, 134 images/s against 101, 131, 120 with the caller's thread preparing.
PREPARE_WORKERS = 2


def _name(port: Any, fallback: str) -> str:
    try:
        return port.get_any_name()
    except Exception:
        return fallback


class AsyncEngine:
    """Compile `xml` for CPU with PERFORMANCE_HINT THROUGHPUT (NUM_STREAMS `streams` when given, else the plugin's
    choice); `run` feeds batches through an async queue."""

    def __init__(self, xml: str | Path, inference_precision: str = "f32", requests: int = 0,
                 streams: int | None = None) -> None:
        import openvino as ov

        self.requests_asked = int(requests)
        xml = Path(xml)
        try:
            model = ov.Core().read_model(str(xml), str(xml.with_suffix(".bin")))
            self.output_names = [_name(p, f"output{i}") for i, p in enumerate(model.outputs)]
            config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": inference_precision}
            if streams:
                config["NUM_STREAMS"] = int(streams)
            self._compiled = ov.Core().compile_model(model, "CPU", config)
        except Exception as e:
            raise EnginesmithError(f"cannot compile {xml} for throughput: {first_line(e)}; rebuild the engine") from None
        self._queue = ov.AsyncInferQueue(self._compiled, self.requests_asked)

    @property
    def jobs(self) -> int:
        """How many infer requests run at once."""
        return len(self._queue)

    def run(self, input_name: str, batches: Iterable[tuple[np.ndarray, T]]) -> Iterator[tuple[dict[str, np.ndarray], T]]:
        """(x [N, C, H, W], tag) pairs in -> ({output name: array}, tag) out, in the same order."""
        done: dict[int, tuple[dict[str, np.ndarray], Any]] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()
        names = self.output_names

        def callback(request: Any, userdata: tuple[int, Any]) -> None:
            index, tag = userdata
            try:
                outs = {n: np.array(request.get_output_tensor(i).data) for i, n in enumerate(names)}
            except BaseException as e:  # surfaced in the caller's thread
                errors.append(e)
                outs = {}
            with lock:
                done[index] = (outs, tag)

        self._queue.set_callback(callback)
        submitted = emitted = 0
        try:
            for x, tag in batches:
                self._queue.start_async({input_name: np.ascontiguousarray(x, dtype=np.float32)}, (submitted, tag))
                submitted += 1
                while True:
                    with lock:
                        item = done.pop(emitted, None)
                    if item is None:
                        break
                    if errors:
                        raise errors[0]
                    yield item
                    emitted += 1
            self._queue.wait_all()
        except EnginesmithError:
            raise
        except Exception as e:
            raise EnginesmithError(f"OpenVINO async inference failed: {first_line(e)}") from None
        finally:  # also when the caller stops early: no request may outlive this call
            self._queue.wait_all()
        if errors:
            raise EnginesmithError(f"OpenVINO async inference failed: {first_line(errors[0])}")
        while emitted < submitted:
            with lock:
                item = done.pop(emitted)
            yield item
            emitted += 1

    def pipeline(self, input_name: str, groups: Iterable[G], prepare: Callable[[G], P],
                 finish: Callable[[dict[str, np.ndarray], P], list[R]]) -> Iterator[R]:
        """finish(outputs of prepared[0], prepared) for prepared = prepare(group), each group in order, flattened.

        prepare(group) -> (x, ...) runs in PREPARE_WORKERS worker threads (named runtime/overlap.py's WORKER_NAME),
        at most `jobs` + PREPARE_WORKERS groups ahead of the requests; finish runs in the caller's thread as each
        request comes back; the caller's iterable is read in the caller's thread. An EnginesmithError in prepare is
        raised in the caller as it was raised (others as `run` words them); on any exit (the end, an exception, the caller closing the generator early)
        the queued preparation is cancelled and the workers joined, so no thread outlives the call."""
        source = iter(groups)
        executor = ThreadPoolExecutor(max_workers=PREPARE_WORKERS, thread_name_prefix=WORKER_NAME)
        ahead: deque[Future[P]] = deque()

        def prepared() -> Iterator[tuple[np.ndarray, P]]:
            for group in itertools.islice(source, self.jobs + PREPARE_WORKERS):
                ahead.append(executor.submit(prepare, group))
            while ahead:
                p = ahead.popleft().result()
                nxt = next(source, None)
                if nxt is not None:
                    ahead.append(executor.submit(prepare, nxt))
                yield p[0], p

        requests = self.run(input_name, prepared())
        try:
            for outputs, p in requests:
                yield from finish(outputs, p)
        finally:
            requests.close()  # its requests waited for now, not when the generator is collected
            for f in ahead:
                f.cancel()
            executor.shutdown(wait=True)
