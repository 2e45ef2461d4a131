"""Keep freed memory inside the process between training steps (Linux/glibc, CPU runs).

Every training step allocates and frees the same activation and gradient buffers. With glibc's
defaults, large blocks are mmap'ed fresh and unmapped again, and the heap is trimmed back to the
OS, so every step page-faults its working set back in. Raising the mmap and trim thresholds keeps
those pages in the process: same results, less kernel work per step. The peak memory (max RSS) is
unchanged; the process just does not shrink between steps. Opt out with HYBRIDFT_MALLOC_TUNING=0.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Apply the glibc settings; True if they were applied."""
    if not sys.platform.startswith("linux") or os.environ.get("HYBRIDFT_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
