"""What a process measures of itself: its peak resident memory. Kept apart from everything heavy
(no torch, no Hydra), so that a benchmark's measuring harness adds nothing to the child it
measures."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB.

    On Linux ``ru_maxrss`` is not clean in a subprocess: exec keeps the high-water mark of the
    parent's address space at fork time, so every child would report at least the parent's size.
    ``VmHWM`` belongs to the new address space alone.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere
