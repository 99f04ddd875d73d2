"""Background work with bounded look-ahead: order kept, errors per item, producers stopped."""

from __future__ import annotations

import threading
import time

import pytest

from emorec.pipeline import WORKERS, in_background, model_threads, ordered_map


def test_ordered_map_keeps_order_and_reports_errors_per_item():
    def work(n):
        time.sleep(0.01 * (n % 3))  # finish out of order
        if n == 4:
            raise ValueError("bad four")
        return n * n

    out = list(ordered_map(work, range(8), workers=3, ahead=4))
    assert [item for item, _ in out] == list(range(8))
    assert [r for _, r in out if not isinstance(r, Exception)] == [0, 1, 4, 9, 25, 36, 49]
    assert isinstance(out[4][1], ValueError) and str(out[4][1]) == "bad four"


def test_ordered_map_looks_ahead_a_bounded_number_of_items():
    started = []
    lock = threading.Lock()

    def source():
        for n in range(100):
            with lock:
                started.append(n)
            yield n

    stream = ordered_map(lambda n: n, source(), workers=2, ahead=5)
    next(stream)
    time.sleep(0.05)
    assert len(started) <= 6  # the item handed out plus the look-ahead
    stream.close()


def test_in_background_yields_everything_in_order_and_reraises():
    assert list(in_background(iter(range(50)), ahead=3)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(in_background(failing()))


def test_closing_in_background_stops_its_producer():
    produced = []

    def endless():
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    stream = in_background(endless(), ahead=2)
    assert next(stream) == 0
    stream.close()
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count <= 5


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (16, 16 - WORKERS)])
def test_the_model_gets_the_cores_the_worker_threads_leave(monkeypatch, cores, threads):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert model_threads() == threads
