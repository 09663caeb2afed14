"""runtime/overlap.py: results in order whatever the stages' timing, where each stage runs, how far ahead the
worker gets, errors from each stage raised as they were, and no worker thread left after any exit."""

from __future__ import annotations

import random
import threading
import time

import pytest

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.overlap import WORKER_NAME, overlapped


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(WORKER_NAME)]


def _groups(n: int, size: int) -> list[list[int]]:
    items = list(range(n))
    return [items[i:i + size] for i in range(0, n, size)]


@pytest.mark.parametrize("n,size", [(0, 2), (1, 1), (5, 1), (7, 3), (9, 3)])
def test_results_in_order_with_random_stage_times(n, size):
    rng = random.Random(n)

    def nap() -> None:
        time.sleep(rng.random() * 0.003)

    def prepare(g):
        nap()
        return [v * 10 for v in g]

    def infer(p):
        nap()
        return [v + 1 for v in p]

    def finish(o, p):
        nap()
        assert len(o) == len(p)
        return [(v, q) for v, q in zip(o, p)]

    got = list(overlapped(_groups(n, size), prepare, infer, finish))
    assert got == [(10 * i + 1, 10 * i) for i in range(n)]
    assert not _workers()


def test_infer_runs_in_the_callers_thread_and_host_work_in_one_worker():
    where: dict[str, set[str]] = {"prepare": set(), "infer": set(), "finish": set()}

    def stage(name, value):
        where[name].add(threading.current_thread().name)
        return value

    list(overlapped(_groups(6, 2), lambda g: stage("prepare", g), lambda p: stage("infer", p),
                    lambda o, p: stage("finish", o)))
    assert where["infer"] == {threading.current_thread().name}
    assert len(where["prepare"] | where["finish"]) == 1 and next(iter(where["prepare"])).startswith(WORKER_NAME)


def test_the_source_is_read_in_the_callers_thread_at_most_one_group_ahead():
    read: list[int] = []
    inferred: list[int] = []
    readers: set[str] = set()

    def source():
        for k in range(6):
            readers.add(threading.current_thread().name)
            read.append(k)
            yield [k]

    def infer(p):
        assert len(read) <= p[0] + 2  # group k is inferred before group k + 2 is read
        inferred.append(p[0])
        return p

    assert list(overlapped(source(), lambda g: g, infer, lambda o, p: o)) == list(range(6))
    assert readers == {threading.current_thread().name} and inferred == list(range(6))


def test_host_work_overlaps_inference():
    """prepare + finish (in the worker) take as long as infer: overlapped, a group costs about one infer."""
    delay, n = 0.02, 8

    def sleep(v, s=delay / 2):
        time.sleep(s)
        return v

    t0 = time.perf_counter()
    list(overlapped(_groups(n, 1), sleep, lambda p: sleep(p, delay), lambda o, p: sleep(o)))
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.8 * 2 * delay * n  # sequential: 2 * delay per group


@pytest.mark.parametrize("stage", ["prepare", "infer", "finish"])
def test_an_error_in_any_stage_is_raised_as_it_was_and_no_thread_is_left(stage):
    def maybe_fail(name, value, group_first):
        if name == stage and group_first == 4:
            raise EnginesmithError("cannot decode image bad.jpg: not an image")
        return value

    before = threading.active_count()
    with pytest.raises(EnginesmithError, match=r"^cannot decode image bad.jpg: not an image$"):
        list(overlapped(_groups(9, 1), lambda g: maybe_fail("prepare", g, g[0]), lambda p: maybe_fail("infer", p, p[0]),
                        lambda o, p: maybe_fail("finish", o, o[0])))
    assert not _workers() and threading.active_count() == before


def test_an_error_from_the_source_leaves_no_thread():
    def source():
        yield [0]
        yield [1]
        raise EnginesmithError("the camera stopped")

    with pytest.raises(EnginesmithError, match="the camera stopped"):
        list(overlapped(source(), lambda g: g, lambda p: p, lambda o, p: o))
    assert not _workers()


def test_stopping_early_cancels_queued_work_and_joins_the_worker():
    prepared: list[int] = []

    def prepare(g):
        prepared.append(g[0])
        return g

    gen = overlapped(_groups(100, 1), prepare, lambda p: p, lambda o, p: o)
    assert [next(gen), next(gen)] == [0, 1]
    gen.close()
    assert not _workers()
    assert len(prepared) <= 4  # nothing is prepared beyond the group after the one in flight
