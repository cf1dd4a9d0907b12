"""Batching shared by every pipeline: per-example dicts -> stacked numpy batches."""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np


def stack(examples: Sequence[dict]) -> dict:
    """A list of same-keyed example dicts -> one dict of arrays with a leading batch dim."""
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def index_order(count: int, shuffle: bool, seed: int, repeat: bool) -> Iterator[int]:
    """Indices 0..count-1, reshuffled every epoch (epoch e uses seed (seed, e))."""
    epoch = 0
    while True:
        order = np.arange(count)
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(count)
        yield from (int(i) for i in order)
        if not repeat:
            return
        epoch += 1


def rows_range(batch_size: int, rows: slice) -> range:
    """The positions `rows` selects in a batch of `batch_size` (contiguous, non-empty)."""
    wanted = range(batch_size)[rows]
    if not wanted or wanted.step != 1:
        raise ValueError(f"rows={rows} must select a contiguous, non-empty part of a batch "
                         f"of {batch_size}")
    return wanted


def rows_of_batches(items: Iterable, batch_size: int, rows: slice) -> Iterator:
    """The items at positions `rows` of each consecutive group of `batch_size` (one
    process's share of every global batch; the shares of all processes partition it)."""
    wanted = rows_range(batch_size, rows)
    for position, item in enumerate(items):
        if wanted.start <= position % batch_size < wanted.stop:
            yield item


def batch_examples(examples: Iterable[dict], batch_size: int,
                   drop_remainder: bool = True) -> Iterator[dict]:
    """Groups an example stream into batches of `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pending = []
    for example in examples:
        pending.append(example)
        if len(pending) == batch_size:
            yield stack(pending)
            pending = []
    if pending and not drop_remainder:
        yield stack(pending)


def source_batches(source, decode: Callable[[dict], dict], batch_size: int,
                   shuffle: bool = True, seed: int = 0, repeat: bool = True,
                   drop_remainder: bool = True, rows: slice = slice(None)) -> Iterator[dict]:
    """Batches of a random-access source (len() and [i], e.g. a tfds data source);
    `rows` of every batch only (only those examples are decoded)."""
    count = len(source)
    if count == 0:
        raise ValueError("the data source is empty")
    share = len(rows_range(batch_size, rows))
    order = rows_of_batches(index_order(count, shuffle, seed, repeat), batch_size, rows)
    return batch_examples((decode(source[i]) for i in order), share, drop_remainder)


def ordered_map(fn: Callable, items: Iterable, num_workers: int,
                prefetch: int = 4) -> Iterator:
    """fn over items in order, `num_workers` threads ahead (0: in this thread)."""
    if num_workers <= 0:
        yield from map(fn, items)
        return
    items = iter(items)
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= num_workers * prefetch:
                break
        while pending:
            result = pending.popleft().result()
            for item in items:  # top up by one
                pending.append(pool.submit(fn, item))
                break
            yield result
