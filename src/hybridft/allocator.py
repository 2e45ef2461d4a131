"""Keep freed CPU memory in the process for the next step instead of handing it back to the kernel.

glibc's malloc serves a block above its mmap threshold (128 KiB at first, rising with use to at most
32 MiB) with a fresh ``mmap`` and ``munmap``s it when freed, and gives the top of its heap back to
the kernel once enough of it lies free.
A training step on the CPU frees and re-allocates the same large tensors every step (activations,
the embedding matrix's dense gradient: 45 MiB for MiniLM), so each step pays the kernel again to
zero and map every page again. Serving large blocks from the heap and never trimming it lets a
step reuse the pages of the steps before: in hybridft's full fine-tuning of MiniLM on this
project's CPU machine, 39% fewer page faults and about 4% more samples/s over four epochs, at the
same peak memory (``benchmarks/bench_malloc.py``; docs/results/throughput.md).

The cost: the process keeps its peak memory resident until it exits (a training or inference
process comes back to it every step anyway). So only the command line's own process is tuned (on
the CPU), never a process that imports hybridft or calls its Python API. ``HYBRIDFT_MALLOC=system``
leaves malloc as it is; elsewhere than glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

# from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): free top-of-heap memory stays


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; True when it is tuned. Only the command line
    calls it, for its own process: a notebook or a server that calls the Python API keeps its malloc."""
    if not sys.platform.startswith("linux") or os.environ.get("HYBRIDFT_MALLOC", "").lower() == "system":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
