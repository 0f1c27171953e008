"""A learner on echo's Python API for tools/echo-bench: echo's own Server,
or this project's (echo_go, the Go engine behind the same API), taking
batches as fast as they complete, touching one byte of every leaf, until
stdin closes.

    bench_server.py --workload FILE [--module echo|echo_go]

Prints {"port": P, "version": V} once listening and, after stdin closes,
{"batches": N, "cpu_s": C, "handoff_us": [p50, p99], "handoffs": H}: the
CPU seconds of this process and of its children (echo_go's server) from
the first batch on, and the time sample() took when a whole batch was
already waiting (the hand-off alone, request to views ready).
"""

import argparse
import importlib
import json
import os
import resource
import sys
import threading
import time

import numpy as np
import optree

import samples

TICKS = os.sysconf("SC_CLK_TCK")


def example_of(workload):
    return {k: np.zeros(v["shape"], dtype=np.dtype(v["dtype"])) for k, v in workload["tree"].items()}


def children_cpu():
    """CPU seconds of the live children of this process, from /proc."""
    me = os.getpid()
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return total


def cpu_now():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + children_cpu()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    ap.add_argument("--module", default="echo")
    args = ap.parse_args()
    echo = importlib.import_module(args.module)
    with open(args.workload) as f:
        workload = json.load(f)
    batch = workload["batch_size"]
    server = echo.Server(example_of(workload), batch, transport=echo.TcpTransport(0))
    port = samples.start(server)
    print(json.dumps({"port": port, "version": getattr(echo, "__version__", "")}), flush=True)

    stopping = threading.Event()
    cpu_end = [0.0]

    def stop_on_eof():
        sys.stdin.read()
        cpu_end[0] = cpu_now()  # while the children still run
        stopping.set()
        server.close()

    threading.Thread(target=stop_on_eof, daemon=True).start()
    batches, handoffs, cpu0 = 0, [], None
    ready = False  # a whole batch waited when this request was made
    sink = 0
    while True:
        t0 = time.perf_counter_ns()
        smp = server.sample()
        t1 = time.perf_counter_ns()
        if smp is None:
            break
        if ready:
            handoffs.append((t1 - t0) / 1e3)
        for leaf in optree.tree_leaves(smp.batch):
            sink ^= int(leaf.reshape(-1)[:1].view(np.uint8)[0])
        if cpu0 is None:
            cpu0 = cpu_now()
        batches += 1
        ready = smp.info.store_size >= batch
    handoffs.sort()
    pct = lambda q: handoffs[min(len(handoffs) - 1, int(q * len(handoffs)))] if handoffs else 0.0
    print(json.dumps({
        "batches": batches,
        "cpu_s": max(0.0, cpu_end[0] - cpu0) if cpu0 is not None else 0.0,
        "handoff_us": [pct(0.5), pct(0.99)],
        "handoffs": len(handoffs),
        "sink": sink,
    }), flush=True)


if __name__ == "__main__":
    main()
