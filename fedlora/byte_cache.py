"""A least-recently-used cache bounded by the bytes of the tensors it holds.

A Ray worker serves many simulated clients; caching every client's encoded latents it has seen
grows with the number of clients. Bounded by bytes, the cache keeps the clients sampled lately
and encodes the others again (encoding is deterministic, so eviction never changes a result).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """``get_or_make(key, make)``: the cached value, or ``make()``'s, kept while the total stays under
    ``max_bytes`` (the oldest entries are dropped first; a value larger than the bound is not kept)."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]):
        self.max_bytes = int(max_bytes)
        self.size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def values(self) -> list[V]:
        return [value for value, _ in self._items.values()]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = make()
        size = self.size_of(value)
        if size <= self.max_bytes:
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped
        return value
