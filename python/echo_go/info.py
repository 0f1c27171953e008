"""SampleInfo and HistSnapshot: the metrics that ride on every batch.

The field names and meanings are echo's. The server sends them in the body
of a ``BATCH`` frame, or of an offer record, of the learner protocol
(docs/learner.md, "BATCH"); this module decodes that body.

Both classes are read-only records. A SampleInfo keeps the decoded numbers
in one tuple and builds its histograms when they are read: a batch comes
every few microseconds, and most learners read a field or two of its info,
if any.
"""

from __future__ import annotations

import struct
from typing import Any

# ticket u64, slab u32, the ten i64 counters and gauges of SampleInfo, then
# three histograms: count, min_ns, max_ns (i64), mean_ns (f64), p50, p90,
# p99 (i64).
_BODY = struct.Struct("<QI10q" + "3qd3q" * 3)
BATCH_BODY_BYTES = _BODY.size

_COUNTERS = (
    "store_size",
    "active_connections",
    "queue_depth_sum",
    "queue_depth_max",
    "push_blocked_count",
    "samples_inserted_total",
    "notify_count",
    "cas_success_total",
    "cas_failure_total",
    "reservation_retries_total",
)
_HISTOGRAMS = ("drain_round", "memcpy", "queue_dwell")
_HIST_FIELDS = ("count", "min_ns", "max_ns", "mean_ns", "p50_ns", "p90_ns", "p99_ns")


class _Record:
    """A read-only record of named fields over one tuple of values."""

    __slots__ = ("_values",)
    _fields: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values == other._values  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"


def _field(i: int) -> property:
    return property(lambda self: self._values[i])


class HistSnapshot(_Record):
    """A latency histogram at the moment a batch was taken, in nanoseconds.

    Fields: ``count``, ``min_ns``, ``max_ns``, ``mean_ns`` (a float),
    ``p50_ns``, ``p90_ns``, ``p99_ns``.
    """

    __slots__ = ()
    _fields = _HIST_FIELDS
    count: int
    min_ns: int
    max_ns: int
    mean_ns: float
    p50_ns: int
    p90_ns: int
    p99_ns: int

    def __init__(self, count: int, min_ns: int, max_ns: int, mean_ns: float, p50_ns: int, p90_ns: int, p99_ns: int):
        object.__setattr__(self, "_values", (count, min_ns, max_ns, mean_ns, p50_ns, p90_ns, p99_ns))


for _i, _name in enumerate(_HIST_FIELDS):
    setattr(HistSnapshot, _name, _field(_i))


class SampleInfo(_Record):
    """The server's backpressure metrics at the moment a batch was taken.

    Counters (``*_total``, ``push_blocked_count``, ``notify_count``) only
    grow; gauges (``store_size``, ``active_connections``, ``queue_depth_*``)
    are the current values. The histograms (``drain_round``, ``memcpy``,
    ``queue_dwell``) restart from empty after
    ``Server.reset_histograms()``.
    """

    __slots__ = ()
    _fields = _COUNTERS + _HISTOGRAMS
    store_size: int
    active_connections: int
    queue_depth_sum: int
    queue_depth_max: int
    push_blocked_count: int
    samples_inserted_total: int
    notify_count: int
    cas_success_total: int
    cas_failure_total: int
    reservation_retries_total: int
    drain_round: HistSnapshot
    memcpy: HistSnapshot
    queue_dwell: HistSnapshot

    def __init__(self, values: tuple[Any, ...]):
        """``values``: the ten counters, then the three histograms' seven fields each."""
        if len(values) != len(_COUNTERS) + len(_HISTOGRAMS) * len(_HIST_FIELDS):
            raise ValueError(f"SampleInfo takes {len(_COUNTERS)} + 3 x {len(_HIST_FIELDS)} values, got {len(values)}")
        object.__setattr__(self, "_values", values)


for _i, _name in enumerate(_COUNTERS):
    setattr(SampleInfo, _name, _field(_i))


def _histogram(k: int) -> property:
    start = len(_COUNTERS) + k * len(_HIST_FIELDS)
    return property(lambda self: HistSnapshot(*self._values[start : start + len(_HIST_FIELDS)]))


for _k, _name in enumerate(_HISTOGRAMS):
    setattr(SampleInfo, _name, _histogram(_k))


def decode_batch(body: bytes | memoryview) -> tuple[int, int, SampleInfo]:
    """Decode a ``BATCH`` body (or an offer record) into its ticket, slab and SampleInfo.

    Raises:
        ValueError: the body is not exactly ``BATCH_BODY_BYTES`` long.
    """
    if len(body) != BATCH_BODY_BYTES:
        raise ValueError(f"BATCH body is {len(body)} bytes, expected {BATCH_BODY_BYTES}")
    values = _BODY.unpack(body)
    return values[0], values[1], SampleInfo(values[2:])
