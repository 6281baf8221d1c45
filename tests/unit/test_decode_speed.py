"""The decode side of indexing: the gate that keeps decoders off the cores while the
model runs, and the Reader stream that uses it (same results, no stuck threads)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.photos import make_camera_jpeg
from vitdex.config import load_settings
from vitdex.indexer.images import decode_image
from vitdex.indexer.stages import DecodeGate, GateClosedError, Prepared, Reader, Task


def _task() -> Prepared:
    return Prepared(Task(1, "x", 0, 0, None, False, 0))


def test_gate_holds_back_tasks_while_the_consumer_is_away() -> None:
    gate = DecodeGate(idle=2, busy=0)
    gate.consumer_waiting(False)
    assert gate.limit == 0
    started = threading.Event()

    def work() -> Prepared:
        started.set()
        return _task()

    thread = threading.Thread(target=gate.run, args=(work,))
    thread.start()
    assert not started.wait(0.2)  # held: a forward pass has the cores
    gate.consumer_waiting(True)
    assert gate.limit == 2
    assert started.wait(5)
    thread.join(5)
    assert not thread.is_alive()


def test_gate_runs_at_most_limit_tasks_at_once() -> None:
    gate = DecodeGate(idle=2, busy=1)
    running, peak, lock = [0], [0], threading.Lock()

    def work() -> Prepared:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return _task()

    threads = [threading.Thread(target=gate.run, args=(work,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak[0] == 2
    gate.consumer_waiting(False)
    assert gate.limit == 1


def test_gate_releases_its_slot_when_the_task_fails() -> None:
    gate = DecodeGate(idle=1, busy=1)

    def boom() -> Prepared:
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError):
        gate.run(boom)
    assert gate.run(_task).task.image_id == 1  # the slot is free again


def test_closed_gate_drops_held_back_tasks() -> None:
    gate = DecodeGate(idle=1, busy=0)
    gate.consumer_waiting(False)
    ran, raised = threading.Event(), threading.Event()

    def work() -> Prepared:
        ran.set()
        return _task()

    def held() -> None:
        try:
            gate.run(work)
        except GateClosedError:
            raised.set()

    thread = threading.Thread(target=held)
    thread.start()
    gate.close()
    thread.join(5)
    assert raised.is_set() and not ran.is_set()
    with pytest.raises(GateClosedError):
        gate.run(_task)


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    return [
        make_camera_jpeg(folder / f"p{i}.jpg", size=(400, 300), seed=i, quality=85)
        for i in range(6)
    ]


def _reader(folder: Path, workers: int = 0) -> Reader:
    settings = load_settings(decode_workers=workers, batch_size=2)
    return Reader(settings, {0: (folder.resolve(),)}, (32, 32), defaultdict(float))


def _tasks(files: list[Path]) -> list[Task]:
    return [
        Task(i, str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns, None, False, 0)
        for i, p in enumerate(files)
    ]


@pytest.mark.parametrize("workers", [0, 1])
def test_stream_gives_the_pixels_of_a_direct_decode(photos: list[Path], workers: int) -> None:
    reader = _reader(photos[0].parent, workers)
    seen = {}
    for item in reader.stream(_tasks(photos), {}):
        assert item.error is None and item.decoded is not None
        time.sleep(0.01)  # the consumer is "busy with the model": decoders hold back
        seen[item.task.image_id] = item
    assert sorted(seen) == list(range(len(photos)))
    for i, path in enumerate(photos):
        direct = decode_image(path.read_bytes(), min_size=(32, 32))
        got = seen[i].decoded
        assert got is not None
        assert np.array_equal(np.asarray(got.image), np.asarray(direct.image))
        assert (got.width, got.height) == (400, 300)


def test_stream_closed_early_stops_its_workers(photos: list[Path]) -> None:
    reader = _reader(photos[0].parent)
    before = {t.name for t in threading.enumerate()}
    stream = reader.stream(_tasks(photos), {})
    first = next(stream)  # the consumer is away now: the gate holds the others back
    assert first.decoded is not None
    stream.close()  # must not hang on held-back workers
    left = [
        t
        for t in threading.enumerate()
        if t.name.startswith("vitdex-decode") and t.name not in before
    ]
    assert not left
