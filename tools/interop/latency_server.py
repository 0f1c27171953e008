"""echo's own server as a learner process for echo-bench's latency section.

    latency_server.py --batch B

Listens on loopback for 16-byte samples {"t": int64, "x": float32[2]},
where t is the actor's CLOCK_MONOTONIC send time in ns, and records, for
every sample of every batch, the time from t to sample() returning. Speaks
the protocol of bench.ServeLatency on stdin/stdout: prints {"addr": ...},
then answers "reset" with {"ok": true} and "report" with the window's
figures as JSON; exits when stdin ends.
"""

import argparse
import json
import os
import resource
import sys
import threading
import time

import numpy as np

import echo
import samples


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, required=True)
    args = ap.parse_args()
    example = {"t": np.zeros((), dtype=np.int64), "x": np.zeros(2, dtype=np.float32)}
    server = echo.Server(example, args.batch, transport=echo.TcpTransport(0))
    port = samples.start(server)
    lock = threading.Lock()
    window = {"lat": [], "start": time.monotonic(), "cpu": cpu_seconds()}

    def learn():
        while True:
            smp = server.sample()
            if smp is None:
                return
            now = time.monotonic_ns()
            lat = now - np.asarray(smp.batch["t"], dtype=np.int64)
            with lock:
                window["lat"].append(lat)

    learner = threading.Thread(target=learn, daemon=True)
    learner.start()
    print(json.dumps({"addr": "127.0.0.1:%d" % port}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "reset":
            with lock:
                window = {"lat": [], "start": time.monotonic(), "cpu": cpu_seconds()}
            print(json.dumps({"ok": True}), flush=True)
        elif cmd == "report":
            with lock:
                lat = np.concatenate(window["lat"]) if window["lat"] else np.zeros(0, dtype=np.int64)
                wall = time.monotonic() - window["start"]
                cpu = cpu_seconds() - window["cpu"]
            lat = np.sort(lat)

            def q(p):
                return float(lat[int(p * (len(lat) - 1))]) / 1e3 if len(lat) else 0.0

            print(json.dumps({"N": int(len(lat)), "P50": q(0.50), "P99": q(0.99), "P999": q(0.999),
                              "CPUSeconds": cpu, "Wall": wall}), flush=True)
    server.close()
    learner.join(timeout=10)
    sys.stdout.flush()
    # The learner thread may still sit in the Rust core; finalising the
    # interpreter under it aborts the process. Nothing is left to clean up.
    os._exit(0)


if __name__ == "__main__":
    main()
