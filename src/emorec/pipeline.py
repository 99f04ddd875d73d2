"""Overlapping I/O and CPU work with the model: bounded look-ahead in background threads.

OpenCV's decoders and ONNX Runtime release the GIL, so while the main thread
classifies one batch, worker threads decode and crop the next images or
video frames. Look-ahead is bounded, so memory stays flat on any number of
files or frames.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()
WORKERS = 2  # threads that decode and locate faces while the main thread classifies


def model_threads() -> int:
    """ONNX Runtime threads for a model that classifies while WORKERS threads locate faces: the cores they leave.

    At least one. On 2 cores, 1-thread sessions made the folder and video
    pipelines 8-15% faster than one thread per core, which fought the
    detector threads for the same cores.
    """
    return max(1, (os.cpu_count() or 1) - WORKERS)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = WORKERS, ahead: int = 8) -> Iterator[tuple[T, R | Exception]]:
    """(item, fn(item)) in input order, computed by worker threads at most `ahead` items in advance.

    An exception raised by fn(item) is yielded in place of its result, so
    one bad item never stops the others. Closing the iterator early cancels
    the work not yet started.
    """
    source = iter(items)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for item in source:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= ahead:
                    break
            while pending:
                item, future = pending.popleft()
                following = next(source, _END)
                if following is not _END:
                    pending.append((following, pool.submit(fn, following)))
                yield item, _outcome(future)
        finally:
            for _, future in pending:
                future.cancel()


def _outcome(future):
    try:
        return future.result()
    except Exception as error:  # handed to the caller, who reports it per item
        return error


def in_background(items: Iterable[T], ahead: int = 8) -> Iterator[T]:
    """The items of an iterator produced by a background thread, at most `ahead` in advance.

    For sequential sources such as video frames: the next frames decode
    while the current ones are processed. An exception in the producer is
    raised here; closing this iterator stops the producer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(buffer, (item, None), stop):
                    return
            _put(buffer, (_END, None), stop)
        except BaseException as error:  # re-raised in the consumer
            _put(buffer, (_END, error), stop)

    thread = threading.Thread(target=produce, name="emorec-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _put(buffer: queue.Queue, entry, stop: threading.Event) -> bool:
    """Put entry unless the consumer stopped; False once it has."""
    while not stop.is_set():
        try:
            buffer.put(entry, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
