"""echo's own TcpClient as a load generator for tools/echo-bench.

    bench_client.py --port P --workload FILE --clients N --samples S

N TcpClients, one thread each, connect; then each sends S samples and
waits for their acks. Prints {"seconds": T, "samples": N*S}, T timed from
the moment every client is connected until the last wait() returns.
"""

import argparse
import json
import threading
import time

import numpy as np

import echo
from bench_server import example_of


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--samples", type=int, required=True)
    args = ap.parse_args()
    with open(args.workload) as f:
        workload = json.load(f)
    example = example_of(workload)
    sample = {k: np.ones_like(v) for k, v in example.items()}
    clients = [echo.TcpClient(args.host, args.port, example) for _ in range(args.clients)]
    start = threading.Barrier(args.clients + 1)
    errors = []

    def run(c):
        start.wait()
        try:
            for _ in range(args.samples):
                c.send(sample)
            c.wait()
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    for c in clients:
        c.close()
    if errors:
        raise SystemExit("\n".join(errors[:5]))
    print(json.dumps({"seconds": seconds, "samples": args.clients * args.samples}))


if __name__ == "__main__":
    main()
