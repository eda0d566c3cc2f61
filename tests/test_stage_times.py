"""stage_times: each stage's time and its own memory peak."""

import os

import numpy as np
import pytest

from mpq_export.stage_times import StageTimes, release_free_memory


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="per-stage peaks need Linux's /proc")
def test_each_stage_gets_its_own_memory_peak():
    timings = StageTimes().start()
    big = np.ones(300 * 2**20 // 8)  # 300 MB, touched
    del big
    timings["heavy"] = 1.0
    timings["light"] = 0.5
    assert timings.peak_rss_mb["heavy"] > timings.peak_rss_mb["light"] + 200
    assert dict(timings) == {"heavy": 1.0, "light": 0.5}
    copy = timings.copy()
    copy["more"] = 0.1
    assert "more" not in timings and copy.peak_rss_mb["heavy"] == timings.peak_rss_mb["heavy"]


def test_releasing_free_memory_is_safe_anywhere():
    release_free_memory()  # glibc: malloc_trim; elsewhere nothing
