"""Trees of arrays, and their description in the learner protocol.

The protocol describes a sample's structure as JSON (docs/learner.md,
"WELCOME"): ``{"dict": [[key, node], ...]}``, ``{"list": [...]}``,
``{"tuple": [...]}``, ``{"none": true}`` and ``{"leaf": ...}``, in optree's
flatten order. This module turns an example pytree into that description
(for the server's ``--spec`` file) and turns a server's description back
into an optree structure (for a learner that attaches without an example).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import optree
from optree import PyTreeKind

# The dtypes the Go engine stores, by numpy name (pytree.DType in Go).
SUPPORTED_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "bfloat16",
        "float32",
        "float64",
    }
)

_SEQUENCE_KINDS = {
    PyTreeKind.TUPLE: "tuple",
    PyTreeKind.NAMEDTUPLE: "tuple",
    PyTreeKind.STRUCTSEQUENCE: "tuple",
    PyTreeKind.LIST: "list",
    PyTreeKind.DEQUE: "list",
}
_MAPPING_KINDS = {PyTreeKind.DICT, PyTreeKind.ORDEREDDICT, PyTreeKind.DEFAULTDICT}


@dataclass(frozen=True)
class LeafSpec:
    """One leaf of a sample: its path (``"obs/0"``), dtype and shape."""

    path: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ExampleSpec:
    """An example pytree, flattened: what a Server needs to know of it.

    ``tree`` is the protocol's description with each leaf replaced by its
    index in flatten order, as a server's WELCOME has it; ``spec_tree`` is
    the same with each leaf as ``{"dtype": ..., "shape": [...]}``, as the
    ``--spec`` file of ``echo-server`` has it.
    """

    treedef: optree.PyTreeSpec
    leaves: tuple[LeafSpec, ...]
    tree: Any
    spec_tree: Any

    @property
    def payload_bytes(self) -> int:
        return sum(leaf.nbytes for leaf in self.leaves)


def dtype_name(dtype: np.dtype) -> str:
    """Return the protocol's name for ``dtype`` (numpy's name)."""
    return dtype.name


def numpy_dtype(name: str) -> np.dtype:
    """Return the numpy dtype the protocol calls ``name``.

    ``bfloat16`` is not one of numpy's own; it needs the ml_dtypes package.
    """
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"unknown dtype {name!r}")
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise TypeError("the server's samples have a bfloat16 leaf; install ml_dtypes to view it") from e
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def describe_example(example: Any) -> ExampleSpec:
    """Flatten ``example`` and describe it for the server.

    Raises:
        TypeError: a leaf is not a numpy array, or has a dtype the engine
            does not store, or a byte order other than the machine's.
        ValueError: the example has no leaves, or a mapping whose keys, as
            strings, are not in sorted order (the server flattens mappings
            in the sorted order of their keys, so the order of the bytes
            an actor sends would not be the order it reads them in).
    """
    leaves, treedef = optree.tree_flatten(example)
    if not leaves:
        raise ValueError("example has no array leaves")
    if not all(isinstance(leaf, np.ndarray) for leaf in leaves):
        raise TypeError("All leaves must be numpy arrays")

    specs: list[LeafSpec] = []
    tree, spec_tree = _describe_node(treedef, leaves, (), specs)
    return ExampleSpec(treedef, tuple(specs), tree, spec_tree)


def _describe_node(
    node: optree.PyTreeSpec,
    leaves: list[np.ndarray],
    path: tuple[str, ...],
    specs: list[LeafSpec],
) -> tuple[Any, Any]:
    """Describe one node; append its leaves to ``specs`` in flatten order.

    Returns the node's description twice: with leaf indices, and with
    leaf dtypes and shapes.
    """
    kind = node.kind
    if kind == PyTreeKind.LEAF:
        return _describe_leaf(leaves[len(specs)], path, specs)
    if kind == PyTreeKind.NONE:
        return {"none": True}, {"none": True}

    keys = [str(entry) for entry in node.entries()]
    children = [_describe_node(child, leaves, path + (key,), specs) for key, child in zip(keys, node.children())]
    if kind in _SEQUENCE_KINDS:
        name = _SEQUENCE_KINDS[kind]
        return (
            {name: [tree for tree, _ in children]},
            {name: [spec for _, spec in children]},
        )
    if kind in _MAPPING_KINDS or all(isinstance(e, str) for e in node.entries()):
        _check_sorted_keys(keys, path)
        return (
            {"dict": [[key, tree] for key, (tree, _) in zip(keys, children)]},
            {"dict": [[key, spec] for key, (_, spec) in zip(keys, children)]},
        )
    # A custom node with entries that are not names: keep its order.
    return (
        {"tuple": [tree for tree, _ in children]},
        {"tuple": [spec for _, spec in children]},
    )


def _describe_leaf(leaf: np.ndarray, path: tuple[str, ...], specs: list[LeafSpec]) -> tuple[Any, Any]:
    where = "/".join(path) or "<root>"
    name = dtype_name(leaf.dtype)
    if name not in SUPPORTED_DTYPES:
        raise TypeError(
            f"leaf {where}: dtype {leaf.dtype} is not one the engine stores ({', '.join(sorted(SUPPORTED_DTYPES))})"
        )
    if not leaf.dtype.isnative:
        raise TypeError(f"leaf {where}: dtype {leaf.dtype.str} is not in native byte order")
    index = len(specs)
    specs.append(LeafSpec(where, leaf.dtype, tuple(int(d) for d in leaf.shape)))
    return {"leaf": index}, {"leaf": {"dtype": name, "shape": list(leaf.shape)}}


def _check_sorted_keys(keys: list[str], path: tuple[str, ...]) -> None:
    if all(a < b for a, b in itertools.pairwise(keys)):
        return
    where = "/".join(path) or "the root"
    raise ValueError(
        f"the mapping at {where} flattens as {keys}; the server orders a mapping "
        "by its keys as strings, so they must be distinct strings that sort the "
        "same way (use str keys, and a plain dict rather than an unsorted OrderedDict)"
    )


def structure_of(tree: Any) -> tuple[optree.PyTreeSpec, list[int]]:
    """Build the optree structure a server's description names.

    Returns the structure and, for each of its leaves in optree's flatten
    order, the protocol's index of that leaf. Dicts, lists, tuples and None
    come out as the same node types as echo's batches.
    """
    skeleton = _skeleton(tree)
    order, treedef = optree.tree_flatten(skeleton)
    return treedef, order


def _skeleton(node: Any) -> Any:
    """Rebuild the description as Python containers with leaf indices as leaves."""
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError(f"bad tree node {node!r}")
    ((kind, value),) = node.items()
    if kind == "leaf":
        if not isinstance(value, int):
            raise ValueError(f"bad leaf {value!r}")
        return value
    if kind == "none":
        return None
    if kind == "list":
        return [_skeleton(child) for child in value]
    if kind == "tuple":
        return tuple(_skeleton(child) for child in value)
    if kind == "dict":
        return {key: _skeleton(child) for key, child in value}
    raise ValueError(f"unknown tree node kind {kind!r}")
