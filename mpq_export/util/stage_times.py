"""Each stage's time and peak memory, for the report, and handing freed memory back to the system."""

from __future__ import annotations

import time
from contextlib import contextmanager


def release_free_memory() -> None:
    """Hand memory the process has freed back to the system (glibc's malloc_trim).

    Stages free GBs of weights and activations, but glibc keeps freed heap pages, and after freeing
    a large mmapped block it raises its mmap threshold so later blocks come from the heap too: most of
    a freed multi-GB model stays resident until a trim (malloc_trim(3)). Graph surgeon's graphs are reference cycles: they, and the model
    protos they point into, are freed only by the cycle collector, so it runs first."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def collector_skips_older_objects():
    """While the block runs, the cycle collector ignores every object that existed before it (gc.freeze).

    release_free_memory runs a full collection at each stage end for graph surgeon's cycles. In a process
    that already holds millions of objects (a notebook with diffusers loaded, a test session) each full
    collection would walk all of them again, for nothing: the cycles worth freeing are the run's own.
    gc.freeze moves the existing objects to a permanent generation that collections ignore (Python's gc
    module docs); gc.unfreeze puts them back after the run. One collection first, so the cycles an earlier
    run left behind are freed rather than frozen for this run's length. A caller that froze already keeps
    its choice."""
    import gc

    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def keep_large_blocks_out_of_the_heap(threshold: int = 1 << 20) -> None:
    """Fix glibc's mmap threshold (M_MMAP_THRESHOLD) so every block over `threshold` is its own mapping,
    returned to the system when freed. Process-wide, so the CLI calls it, not the library."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _stage_peak_mb() -> float:
    """Peak resident memory since the last call, in MB.

    Linux keeps the peak in /proc/self/status (VmHWM) and lets a process reset it (clear_refs 5), so
    each stage gets its own peak; elsewhere the process's peak so far (getrusage) stands in."""
    try:
        with open("/proc/self/status") as f:
            peak = next(float(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024.0  # kB
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return peak
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    except (ImportError, OSError):
        return 0.0


class StageTimes(dict):
    """stage -> seconds, and `peak_rss_mb`: stage -> the process's peak resident memory during the stage
    (from the end of the stage before), so the report shows which stage needs the memory."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peak_rss_mb: dict[str, float] = {}

    def start(self) -> "StageTimes":
        _stage_peak_mb()  # the first stage's peak starts here
        return self

    @contextmanager
    def stage(self, stage: str):
        """Time the block as `stage`; at its end, hand what it freed back to the system (so it does not count
        toward the next stage's peak) and record the stage's peak resident memory."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = time.perf_counter() - t
            release_free_memory()
            self.peak_rss_mb[stage] = _stage_peak_mb()

    def copy(self) -> "StageTimes":
        c = StageTimes(self)
        c.peak_rss_mb = dict(self.peak_rss_mb)
        return c
