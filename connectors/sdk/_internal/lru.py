"""A bounded mapping for what a long-running client remembers per case (no I/O)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_CASE_MEMORY = 10_000
"""How many cases a HubClient remembers by default (``HubClient(case_memory=...)``)."""


class LruDict(Generic[K, V]):
    """At most ``capacity`` entries; the least recently set or read goes first.

    Thread-safe (a client may be shared by a connector's threads). What it forgets, the
    client can do without: each user says what happens then (e.g. ``push_status`` adopts
    the hub's number once).
    """

    def __init__(self, capacity: int = DEFAULT_CASE_MEMORY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: V) -> V: ...
    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
