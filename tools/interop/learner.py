"""A learner process on echo_go, for the Go tests of learners.

    learner.py --socket PATH --out FILE [--hold]

Attaches to a running server's learner socket, takes batches until the
server closes, and writes each batch's leaves, in flatten order, to FILE
(raw bytes, batch after batch); then prints {"batches": N}. It prints
{"attached": true} once attached; with --hold, {"holding": true} after its
first batch, and then waits to be killed.
"""

import argparse
import json
import sys
import time

import numpy as np
import optree

import echo_go


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--hold", action="store_true")
    args = ap.parse_args()
    learner = echo_go.attach(args.socket)
    print(json.dumps({"attached": True}), flush=True)
    n = 0
    with open(args.out, "wb") as f:
        while True:
            smp = learner.sample()
            if smp is None:
                break
            for leaf in optree.tree_leaves(smp.batch):
                f.write(np.ascontiguousarray(leaf).tobytes())
            f.flush()
            n += 1
            if args.hold:
                print(json.dumps({"holding": True}), flush=True)
                while True:
                    time.sleep(1)
    print(json.dumps({"batches": n}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
