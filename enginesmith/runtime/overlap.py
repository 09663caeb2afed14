"""Host work overlapped with inference: one worker thread prepares the next group and finishes the last
one while the caller's thread runs the engine (torch-free).

    for result in overlapped(groups, prepare, infer, finish):
        ...

`prepare(group) -> P` (decode + preprocess) and `finish(outputs, P) -> list[R]` (decode + NMS + boxes back in
the image's pixels) run in the worker, in submission order; `infer(P) -> outputs` runs in the caller's thread,
where the backend releases the GIL (OpenVINO's InferRequest.infer, ONNX Runtime's Run), so while group k is
inferred the worker finishes group k-1 and prepares group k+1. Results come out in order. At most three groups
are held at once (one inferred, one ahead being prepared, one behind being finished). The caller's iterable is
read in the caller's thread. An exception in the worker is raised in the caller as it was raised (the same
one-line EnginesmithError the sequential loop gives); on any exit (the end, an exception, the caller closing
the generator early) the queued work is cancelled and the worker joined, so no thread outlives the call.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

G = TypeVar("G")  # a group of inputs
P = TypeVar("P")  # a prepared group
O = TypeVar("O")  # the engine's outputs
R = TypeVar("R")  # one result

WORKER_NAME = "enginesmith-overlap"


def overlapped(groups: Iterable[G], prepare: Callable[[G], P], infer: Callable[[P], O],
               finish: Callable[[O, P], list[R]]) -> Iterator[R]:
    """finish(infer(prepare(g)), prepare(g)) for each group g, flattened, in order (see the module docstring)."""
    source = iter(groups)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=WORKER_NAME)
    ahead: deque[Future[P]] = deque()
    behind: deque[Future[list[R]]] = deque()
    try:
        first = next(source, None)
        if first is not None:
            ahead.append(executor.submit(prepare, first))
        while ahead:
            prepared = ahead.popleft().result()
            nxt = next(source, None)
            if nxt is not None:  # queued behind the previous group's finish: the worker does both during infer
                ahead.append(executor.submit(prepare, nxt))
            outputs = infer(prepared)
            behind.append(executor.submit(finish, outputs, prepared))
            while behind and (behind[0].done() or len(behind) > 1):
                yield from behind.popleft().result()
        while behind:
            yield from behind.popleft().result()
    finally:
        for f in (*ahead, *behind):
            f.cancel()
        executor.shutdown(wait=True)
