"""SampleInfo and HistSnapshot: the metrics that ride on every batch.

The field names and meanings are echo's. The server sends them in the
``BATCH`` frame of the learner protocol (docs/learner.md, "BATCH"); this
module decodes that frame's body.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# slab u32, then the ten i64 counters and gauges of SampleInfo.
_HEAD = struct.Struct("<I10q")
# One histogram: count, min_ns, max_ns (i64), mean_ns (f64), p50, p90, p99 (i64).
_HIST = struct.Struct("<3qd3q")
_HISTOGRAMS = ("drain_round", "memcpy", "queue_dwell")

BATCH_BODY_BYTES = _HEAD.size + len(_HISTOGRAMS) * _HIST.size


@dataclass(frozen=True, slots=True)
class HistSnapshot:
    """A latency histogram at the moment a batch was taken, in nanoseconds."""

    count: int
    min_ns: int
    max_ns: int
    mean_ns: float
    p50_ns: int
    p90_ns: int
    p99_ns: int


@dataclass(frozen=True, slots=True)
class SampleInfo:
    """The server's backpressure metrics at the moment a batch was taken.

    Counters (``*_total``, ``push_blocked_count``, ``notify_count``) only
    grow; gauges (``store_size``, ``active_connections``, ``queue_depth_*``)
    are the current values. The histograms restart from empty after
    ``Server.reset_histograms()``.
    """

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


def decode_batch(body: bytes) -> tuple[int, SampleInfo]:
    """Decode a ``BATCH`` body into its slab index and its SampleInfo.

    Raises:
        ValueError: the body is not exactly ``BATCH_BODY_BYTES`` long.
    """
    if len(body) != BATCH_BODY_BYTES:
        raise ValueError(f"BATCH body is {len(body)} bytes, expected {BATCH_BODY_BYTES}")
    slab, *counters = _HEAD.unpack_from(body, 0)
    histograms = [HistSnapshot(*_HIST.unpack_from(body, _HEAD.size + i * _HIST.size)) for i in range(len(_HISTOGRAMS))]
    return slab, SampleInfo(*counters, *histograms)
