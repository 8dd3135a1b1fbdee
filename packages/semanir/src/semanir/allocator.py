"""glibc's malloc told to keep freed large blocks, for long CPU jobs (``semanir`` commands).

A CPU training step of a tiny denoiser (8 x 96x96 patches, 2 threads) frees and takes again a
few hundred MB of activations. By default glibc gives blocks of that size back to the kernel
(it maps blocks above its mmap threshold on their own and trims the heap's free top above its
trim threshold), and the next step touches them again as fresh pages: about 95,000 minor page
faults and 0.18 s of kernel time per 1.2 s step. With the thresholds below the blocks stay in
the process and are reused (about 2,000 faults; 1.09 s per step). This is what the
environment variables ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_TOP_PAD_`` do; PyTorch's CPU tuning guide suggests jemalloc or tcmalloc for the same
reason. The price: memory freed after a peak stays with the process (up to the trim
threshold) instead of going back to the system.

The ``semanir`` console script calls :func:`keep_freed_memory` once at start; the library's
functions (``restore``, the models) never change process-wide settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
SETTINGS = (
    (M_MMAP_THRESHOLD, 32 * 2**20),  # glibc's largest: blocks up to 32 MiB come from the heap
    (M_TRIM_THRESHOLD, 2**30),  # the heap's free top is returned only above 1 GiB
    (M_TOP_PAD, 512 * 2**20),  # and grown 512 MiB at a time
)
# the user's own malloc settings win: with any of these set, nothing is changed
ENVIRONMENT = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",  # jemalloc, tcmalloc
)


def keep_freed_memory() -> bool:
    """Set :data:`SETTINGS` with glibc's ``mallopt`` for this process.

    Returns:
        True when set; False (nothing changed) off glibc, or when one of :data:`ENVIRONMENT`
        is set (the user chose an allocator or its settings).
    """
    if any(os.environ.get(name) for name in ENVIRONMENT):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS)
