"""Memory measurement: peak RSS of a code block (sampled) and of the whole process, and
peak CUDA memory of a code block.

Owns the memory numbers reported for a run. RSS is in MiB (2**20 bytes) despite the
conventional ``_mb`` suffix. ``process_peak_rss_mb`` is the kernel's peak since the
process started or since ``reset_process_peak_rss`` (Linux: ``/proc/self/clear_refs``),
which each run calls first: a second run in the same process (``quantexp.run`` in a
loop, ``launch.isolation=inline``) reports its own peak, not the largest so far.
"""

from __future__ import annotations

import resource
import sys
import threading
from types import TracebackType
from typing import Self

import psutil

_MIB = 1024 * 1024


class PeakRSSSampler:
    """Context manager sampling this process's RSS on a daemon thread.

    ``baseline_mb`` is the RSS at entry, ``peak_mb`` the highest RSS seen until exit,
    ``peak_delta_mb`` their difference. RSS is also sampled once at entry and once at exit,
    so even a block shorter than the interval gets values. Peaks shorter than the interval
    can be missed; ``process_peak_rss_mb`` is the kernel's exact (but process-lifetime) peak.
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak_bytes = 0
        self._baseline_bytes = 0
        self.n_samples = 0

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        self.n_samples += 1
        # Only this thread and the entry/exit calls write; a lost update could at worst
        # drop one sample, never report a value that was not observed.
        self._peak_bytes = max(self._peak_bytes, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> Self:
        self._stop.clear()
        self.n_samples = 0
        self._baseline_bytes = self._proc.memory_info().rss
        self._peak_bytes = self._baseline_bytes
        self.n_samples = 1
        self._thread = threading.Thread(
            target=self._run, name="PeakRSSSampler", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()

    @property
    def baseline_mb(self) -> float:
        return self._baseline_bytes / _MIB

    @property
    def peak_mb(self) -> float:
        return self._peak_bytes / _MIB

    @property
    def peak_delta_mb(self) -> float:
        return (self._peak_bytes - self._baseline_bytes) / _MIB

    def summary(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}baseline_mb": self.baseline_mb,
            f"{prefix}peak_mb": self.peak_mb,
            f"{prefix}peak_delta_mb": self.peak_delta_mb,
        }


def reset_process_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0:
    writing 5 to /proc/self/clear_refs resets VmHWM, which getrusage's ru_maxrss
    follows). False where that is not possible: the peak then stays the process's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def process_peak_rss_mb() -> float:
    """Peak RSS of this process in MiB since it started or since the last
    ``reset_process_peak_rss``, from getrusage (exact, kernel-tracked)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    if sys.platform == "darwin":
        return maxrss / _MIB
    return maxrss / 1024


class CudaPeakMemory:
    """Peak CUDA memory allocated through PyTorch during the block, in MiB: what was
    already allocated (the weights) plus the block's own peak (``peak_mb`` stays None
    when ``device`` is not "cuda"). Exact, from the caching allocator's statistics (not
    sampled); memory that other libraries allocate outside PyTorch is not seen."""

    def __init__(self, device: str) -> None:
        self.active = device == "cuda"
        self.peak_mb: float | None = None

    def __enter__(self) -> Self:
        if self.active:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.active:
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / _MIB
