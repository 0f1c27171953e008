"""Sample trees shared by the interop scripts and the Go tests.

A case (cases.json) describes a tree: {"dict": {...}}, {"list": [...]},
{"tuple": [...]} or {"array": {"dtype": ..., "shape": [...]}}. Every sample
of a case is filled from (client, seq): leaf i (in optree's flatten order),
element k holds v = (client*7919 + seq*104729 + i*31 + k*17) % 251, as the
leaf's dtype: odd v for a bool, v - 125 for a signed integer, v for an
unsigned one, v / 4 for a float (exact even in float16). The top-level "id"
leaf holds [client, seq] instead. The Go tests compute the same values, so
any byte moved, dropped or reordered on either side shows up.
"""

import json
import os
import sys
import time

import numpy as np
import optree

HERE = os.path.dirname(os.path.abspath(__file__))


def load_case(name):
    with open(os.path.join(HERE, "cases.json")) as f:
        return json.load(f)[name]


def build(node):
    """The example tree of a case node, zero-filled."""
    if "dict" in node:
        # Insertion order as written (unsorted): optree sorts it.
        return {k: build(v) for k, v in node["dict"].items()}
    if "list" in node:
        return [build(v) for v in node["list"]]
    if "tuple" in node:
        return tuple(build(v) for v in node["tuple"])
    a = node["array"]
    return np.zeros(a["shape"], dtype=np.dtype(a["dtype"]))


def expected_leaf(client, seq, i, leaf):
    n = leaf.size
    k = np.arange(n, dtype=np.int64)
    v = (client * 7919 + seq * 104729 + i * 31 + k * 17) % 251
    if leaf.dtype == np.bool_:
        out = v % 2 == 1
    elif np.issubdtype(leaf.dtype, np.signedinteger):
        out = v - 125
    elif np.issubdtype(leaf.dtype, np.unsignedinteger):
        out = v
    else:
        out = v / 4.0
    return out.astype(leaf.dtype).reshape(leaf.shape)


def sample(example, client, seq):
    """The sample (client, seq) of a case: same structure as example."""
    leaves, treedef = optree.tree_flatten(example)
    out = [expected_leaf(client, seq, i, leaf) for i, leaf in enumerate(leaves)]
    tree = optree.tree_unflatten(treedef, out)
    tree["id"] = np.array([client, seq], dtype=np.int64)
    return tree


def check(example, batch, rows):
    """Checks every row of a batch; returns the (client, seq) ids in order."""
    leaves, _ = optree.tree_flatten(example)
    got, _ = optree.tree_flatten(batch)
    ids = batch["id"]
    out = []
    paths = optree.tree_flatten_with_path(example)[0]
    id_index = paths.index(("id",))
    for r in range(rows):
        client, seq = int(ids[r][0]), int(ids[r][1])
        for i, leaf in enumerate(leaves):
            if i == id_index:
                continue
            want = expected_leaf(client, seq, i, leaf)
            if not np.array_equal(got[i][r], want):
                raise AssertionError(f"row {r} (client {client} seq {seq}) leaf {i}: {got[i][r]!r} != {want!r}")
        out.append([client, seq])
    return out


def start(server):
    """Starts an echo Server and returns its port once it listens."""
    server.start()
    deadline = time.monotonic() + 10
    while not server.port:
        if time.monotonic() > deadline:
            sys.exit("echo server did not report a port")
        time.sleep(0.01)
    return server.port
