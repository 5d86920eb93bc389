"""Retry work that ran out of memory on smaller pieces instead of letting it kill an hours-long run.

A labeler processes items (box crops, images) in chunks. When a chunk does not fit in memory (GPU
`torch.cuda.OutOfMemoryError`, or on the CPU a `MemoryError` or a RuntimeError saying "out of
memory"), the same items are tried again in halves, down to one item at a time; only an item that
does not fit alone ends the run. The chunk size that worked is kept for the rest of the call.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")
log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` means "this did not fit in memory" (and a smaller piece might)."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def map_chunks(fn: Callable[[slice], T], total: int, chunk_size: int) -> list[T]:
    """`fn(slice)` over `range(total)` in chunks of `chunk_size`, halving the chunk on out-of-memory.

    Returns the results in order, one per chunk actually run (the caller concatenates them).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    results: list[T] = []
    start = 0
    while start < total:
        size = min(chunk_size, total - start)
        try:
            results.append(fn(slice(start, start + size)))
        except Exception as e:
            if not is_out_of_memory(e) or size == 1:
                raise
            chunk_size = size // 2
            log.warning("out of memory on %d items at once; retrying %d at a time", size, chunk_size)
            del e  # drop the traceback, which holds the failed chunk's tensors
            _release_memory()
            continue
        start += size
    return results
