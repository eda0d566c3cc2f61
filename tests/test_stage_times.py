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
