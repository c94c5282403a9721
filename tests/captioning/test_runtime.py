import platform
import subprocess
import sys
from pathlib import Path

import pytest

from captioning.api import CaptionerOptions

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter (the heap policy is process-wide), in a worker thread as Beam runs
# inference: rounds of a forward-like chain of 64 MB activations, each made from the last and the
# last freed; print the page faults of the last four rounds.
FAULTS = """
import resource, sys, threading
import torch
from captioning.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
counts = []
def rounds():
    for i in range(5):
        if i == 1:
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        x = torch.zeros(2**24 + 1000 * i)  # (16 Mi,) float32 = 64 MB, a little more each round
        for layer in range(6):
            x = x + 1.0  # a new activation; the previous one is freed
        del x
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
t = threading.Thread(target=rounds)
t.start()
t.join()
print(counts[1] - counts[0])
"""


def _faults(policy: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, policy],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_kept_heap_reuses_freed_memory_instead_of_faulting_it_in_again():
    system, keep = _faults("system"), _faults("keep")
    pages = 4 * 7 * 2**26 // 4096  # four rounds of seven 64 MB tensors, in 4 KiB pages
    if system < pages // 4:
        pytest.skip(f"this kernel faulted only {system} pages by default (huge pages?)")
    # not zero: torch allocates 64-byte aligned, and glibc's memalign cannot always reuse a freed
    # block of exactly the size asked for (measured here: 131,094 against 458,823)
    assert keep < system // 2, (keep, system)


def test_cpu_heap_option_is_checked():
    with pytest.raises(ValueError, match="--cpu-heap must be keep or system, got 'none'"):
        CaptionerOptions(cpu_heap="none")
