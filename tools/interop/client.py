"""Drives echo's own TcpClient against a server, for the Go interop tests.

    client.py MODE --port P [--case C] [--clients N] [--samples S] [--first F]

Modes:
  send        N TcpClients (one thread each) send S samples each, wait(),
              close(); prints {"sent": N*S}.
  mismatch    connects with case C against a server of another case and
              expects echo's spec-mismatch ValueError; prints the message.
  wrongsize   sends a sample of the wrong size, expects echo's ValueError
              raised before sending, then sends one good sample (client F,
              seq 0) and waits; prints the message.
  serverclose sends until the server goes away; expects
              ConnectionClosedError; prints how many were acked before it.
Every result is one JSON line on stdout; failures exit non-zero.
"""

import argparse
import json
import sys
import threading

import numpy as np

import echo
import samples


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--case", default="alltypes")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--first", type=int, default=0)
    args = ap.parse_args()
    example = samples.build(samples.load_case(args.case))

    if args.mode == "send":
        errors = []

        def run(client_id):
            try:
                c = echo.TcpClient(args.host, args.port, example)
                for seq in range(args.samples):
                    c.send(samples.sample(example, client_id, seq))
                c.wait()
                c.close()
            except Exception as e:  # reported to the Go test
                errors.append(f"client {client_id}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=run, args=(args.first + i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            sys.exit("\n".join(errors))
        print(json.dumps({"sent": args.clients * args.samples}))

    elif args.mode == "mismatch":
        try:
            echo.TcpClient(args.host, args.port, example)
        except ValueError as e:
            print(json.dumps({"error": str(e)}))
            return
        sys.exit("TcpClient connected despite a spec mismatch")

    elif args.mode == "refused":
        # A server that requires a shared secret opens with a challenge
        # where echo expects its handshake: echo's client must refuse it.
        try:
            c = echo.TcpClient(args.host, args.port, example)
        except Exception as e:  # echo raises its own error types
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
            return
        c.close()
        sys.exit("TcpClient connected to a server that requires authentication")

    elif args.mode == "wrongsize":
        c = echo.TcpClient(args.host, args.port, example)
        bad = samples.sample(example, args.first, 0)
        bad["alpha"]["u8"] = np.zeros(4, dtype=np.uint8)  # one byte short
        try:
            c.send(bad)
        except ValueError as e:
            c.send(samples.sample(example, args.first, 0))
            c.wait()
            c.close()
            print(json.dumps({"error": str(e)}))
            return
        sys.exit("send of a short sample did not raise")

    elif args.mode == "serverclose":
        c = echo.TcpClient(args.host, args.port, example)
        print(json.dumps({"connected": True}), flush=True)
        seq = 0
        try:
            while True:
                c.send(samples.sample(example, args.first, seq))
                seq += 1
        except echo.ConnectionClosedError as e:
            print(json.dumps({"closed": str(e), "sent": seq}))
            c.close()
            return

    else:
        sys.exit(f"unknown mode {args.mode}")


if __name__ == "__main__":
    main()
