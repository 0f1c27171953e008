"""TrajectoryAccumulator: an actor's fixed-size buffer, filled step by step."""

from __future__ import annotations

from typing import Any

import numpy as np
import optree


class TrajectoryAccumulator:
    """Multi-timescale accumulator: fixed-size pytree buffer.

    Per timescale, the example pytree determines how many ``add()`` calls
    fit before the buffer is full:

    * **Buffered timescale**: every leaf shares the same leading dim ``N``
      (``N > 1``); each ``add()`` writes one item into the next of the
      ``N`` slots (``stored[s:s+1] = incoming``). ``N`` is the timescale's
      capacity.

    * **Single-item timescale**: the timescale holds one piece of context
      (a bootstrap step, an episode return) rather than a buffer. It is
      one when at least one leaf is 0-d, or every leaf has ``shape[0] ==
      1``. Capacity is ``1``; ``add()`` replaces each whole leaf, so non-0-d
      leaves may have any per-item shape (apart from the optional leading 1).

    Args:
        example: Dict with timescale names as top-level keys. Each value is
            a pytree whose leaves declare the per-timescale layout per the
            rule above.

    Raises:
        TypeError: ``example`` is not a dict.
        ValueError: a timescale has no leaves, or a buffered timescale's
            leaves differ in leading dimension.
    """

    def __init__(self, example: dict[str, Any]):
        if not isinstance(example, dict):
            raise TypeError("example must be a dict with timescale names as top-level keys")
        self._capacity: dict[str, int] = {}
        self._single_item: dict[str, bool] = {}
        for name, subtree in example.items():
            self._capacity[name], self._single_item[name] = _layout(name, optree.tree_leaves(subtree))
        self._tree: dict[str, Any] = {
            name: optree.tree_map(np.zeros_like, subtree) for name, subtree in example.items()
        }
        self._next: dict[str, int] = dict.fromkeys(example, 0)

    def add(self, name: str, data: Any) -> None:
        """Write a single-item pytree into the next slot for timescale *name*.

        Raises:
            KeyError: *name* is not a timescale of the example.
            IndexError: the timescale's slots are all filled.
        """
        if name not in self._capacity:
            raise KeyError(f"Unknown timescale '{name}'. Known: {list(self._capacity)}")
        slot = self._next[name]
        if slot >= self._capacity[name]:
            raise IndexError(
                f"Timescale '{name}' has {self._capacity[name]} slots, but you tried to add at index {slot}"
            )
        where = Ellipsis if self._single_item[name] else slice(slot, slot + 1)

        def write(stored: np.ndarray, incoming: Any) -> None:
            stored[where] = incoming

        optree.tree_map_(write, self._tree[name], data)
        self._next[name] = slot + 1

    def build(self) -> dict[str, Any]:
        """Return the filled pytree and reset slot counters.

        The returned tree aliases internal buffers; callers must finish using
        it (e.g. complete the synchronous send) before the next ``add()``.
        """
        self.reset()
        return self._tree

    def reset(self) -> None:
        """Reset slot counters without sending (e.g. on episode abort)."""
        self._next = dict.fromkeys(self._next, 0)


def _layout(name: str, leaves: list[np.ndarray]) -> tuple[int, bool]:
    """Return a timescale's (capacity, single_item) from its example leaves."""
    if not leaves:
        raise ValueError(f"Timescale '{name}' has no array leaves")
    if any(leaf.ndim == 0 for leaf in leaves) or all(leaf.shape[0] == 1 for leaf in leaves):
        return 1, True
    leading = [leaf.shape[0] for leaf in leaves]
    if any(n != leading[0] for n in leading):
        raise ValueError(
            f"All leaves in buffered timescale '{name}' must share the same leading dimension "
            f"(got {leading}); make any leaf 0-d or all shape (1, ...) to mark the timescale "
            "single-item instead"
        )
    return leading[0], False
