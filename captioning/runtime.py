"""The process's settings for inference: torch threads and the CPU heap policy (freed memory kept).

A batched CPU forward pass allocates and frees the same large activations every batch (BLIP-base
at batch 32: (32, 577, 3072) float32 = 227 MB per MLP layer). glibc's malloc serves blocks that
large with a fresh `mmap` and `munmap`s them on free, and a worker thread's arena does the same
past 64 MB, so every batch touches new pages and the kernel faults and zeroes each 4 KiB page again
(on the development VM, keeping freed memory made BLIP and GIT 14-17% faster at batch 32:
docs/benchmarks.md, "Choice: the kept CPU heap").

`keep_freed_memory` turns that off with glibc's own knobs (`mallopt`): no mmap for large blocks,
one arena for every thread, and free memory at the top of the heap kept up to 2 GiB instead of
128 KiB. The cost: the process keeps its peak heap (up to 2 GiB of it free) instead of handing it
back, and all threads share one arena's lock (measured on 2 cores only; a many-core worker whose
threads allocate heavily may contend). Reuse is partial (tests/captioning/test_runtime.py:
about 30% of the faults remain): torch allocates 64-byte aligned, glibc's memalign asks for a
little more than the block, so a freed block of exactly that size serves again only once merged
with a free neighbour.

jemalloc or tcmalloc through LD_PRELOAD do the same job and are what PyTorch's CPU tuning guide
suggests, but they must be installed and preloaded into every worker; mallopt needs nothing.
Written by hand because no Python library sets these.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

__all__ = ["CPU_HEAP_POLICIES", "keep_freed_memory", "set_up_process"]

CPU_HEAP_POLICIES = ("keep", "system")  # CaptionerOptions.cpu_heap

# glibc malloc.h parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_KEEP_BYTES = 2**31 - 1  # mallopt takes an int: the most free top-of-heap memory it can keep


def keep_freed_memory() -> bool:
    """Make this process's malloc reuse freed memory; True if applied (glibc), False otherwise.

    Process-wide and meant to be called once per worker process before its first batch; calling
    it again changes nothing. On a C library without glibc's mallopt (musl, macOS) it does nothing.
    """
    libc = _glibc()
    if libc is None:
        logger.debug("not glibc: the C library's malloc policy is left as it is")
        return False
    settings = (
        (_M_MMAP_MAX, 0),  # large blocks from the heap, not fresh mmaps
        (_M_ARENA_MAX, 1),  # Beam runs inference in worker threads: same heap for them
        (_M_TRIM_THRESHOLD, _KEEP_BYTES),  # do not hand freed memory back after each batch
    )
    ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        logger.warning("mallopt refused a setting: the C library's malloc policy is partly default")
    return ok


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # gnu_get_libc_version exists only in glibc; musl has a mallopt that ignores everything
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def set_up_process(threads: int | None, cpu_heap: str, device_type: str) -> None:
    """The process-wide settings for inference: torch CPU threads, and on a CPU the heap policy
    ("keep" -> keep_freed_memory). Called explicitly, once per process (CaptionerOptions)."""
    import torch  # the heap policy alone needs no torch; thread counts do

    if threads is not None:
        torch.set_num_threads(threads)
    if cpu_heap == "keep" and device_type == "cpu":
        keep_freed_memory()
