"""stage_times: each stage's time and its own memory peak."""

import os
import time

import numpy as np
import pytest

from mpq_export.util.stage_times import StageTimes, release_free_memory


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="per-stage peaks need Linux's /proc")
def test_each_stage_gets_its_own_memory_peak():
    timings = StageTimes().start()
    with timings.stage("heavy"):
        big = np.ones(300 * 2**20 // 8)  # 300 MB, touched
        del big
    with timings.stage("light"):
        time.sleep(0.01)
    assert timings.peak_rss_mb["heavy"] > timings.peak_rss_mb["light"] + 200
    assert set(timings) == {"heavy", "light"} and timings["light"] >= 0.01
    copy = timings.copy()
    with copy.stage("more"):
        pass
    assert "more" not in timings and copy.peak_rss_mb["heavy"] == timings.peak_rss_mb["heavy"]
    timings["plain"] = 1.0  # a plain assignment is only a number: no collection, no peak
    assert "plain" not in timings.peak_rss_mb


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from Linux's /proc")
def test_freed_heap_memory_goes_back_to_the_system():
    """270 MB of 100 kB blocks (glibc serves them from the heap) freed between blocks still alive stay
    resident until release_free_memory trims the heap."""
    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    blocks = [bytearray(100_000) for _ in range(3000)]
    for b in blocks:
        b[::4096] = b"\x01" * len(b[::4096])  # touch every page
    alive = blocks[9::10]  # every tenth, the last included: no freed run reaches the heap's top
    del blocks
    freed = rss_mb()
    release_free_memory()
    assert rss_mb() < freed - 150
    del alive


def test_the_collector_skips_objects_older_than_the_run():
    """Stage ends collect cycles; objects that existed before the run are frozen out of those collections
    (a test session or notebook holds millions), the run's own cycles are still freed, and the freeze
    ends with the run unless the caller had frozen first."""
    import gc
    import weakref

    from mpq_export.util.stage_times import collector_skips_older_objects, release_free_memory

    class Node:
        pass

    assert gc.get_freeze_count() == 0
    old = [Node() for _ in range(1000)]
    left, right = Node(), Node()
    left.other, right.other = right, left  # garbage an earlier run left: freed, not frozen
    before = weakref.ref(left)
    del left, right
    with collector_skips_older_objects():
        assert before() is None
        assert gc.get_freeze_count() >= len(old)
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made during the run, as graph surgeon's graphs are
        ref = weakref.ref(a)
        del a, b
        release_free_memory()
        assert ref() is None
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        with collector_skips_older_objects():
            pass
        assert gc.get_freeze_count() > 0  # the caller's freeze is its own
    finally:
        gc.unfreeze()
