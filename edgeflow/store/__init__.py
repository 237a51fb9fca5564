"""The durable store: one SQLite file (WAL) for persisting sink buffers and actor state.

A message entering a persisting sink is appended here and acknowledged upstream only once its group
is committed; the sink reads from the store in order and deletes only what the destination
acknowledged, so a restart replays exactly what was not acknowledged, in order.

- `api`: `Store` and `Buffer`, the asyncio face (messages are encoded and decoded there, on the loop).
- `writer`: the writer thread, group commit, reads, removals.
- `rows`: the row layout: each appended batch is one row of concatenated records.
- `schema`: opening, corruption quarantine, forward migrations.
- `faults`: `StoreFull` / `StoreUnavailable` (retryable) and the SQLite error translation.
"""

from edgeflow.errors import StoreError
from edgeflow.store.api import Buffer, Store
from edgeflow.store.faults import StoreFull, StoreUnavailable
from edgeflow.store.schema import SCHEMA_VERSION
from edgeflow.store.writer import BufferStats

__all__ = ["SCHEMA_VERSION", "Buffer", "BufferStats", "Store", "StoreError", "StoreFull", "StoreUnavailable"]
