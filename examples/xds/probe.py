#!/usr/bin/python3
"""Keeps ONE HTTP/1.1 keep-alive connection to skiff and sends a request on it
every --interval seconds until the file --stop exists (or --max-seconds pass).
It never reconnects: if skiff closed the connection, the next request fails and
is counted. Prints every change of the answering service, then a summary:

    probe: one connection 127.0.0.1:43512 -> 127.0.0.1:10000: 31 requests, 0 errors, served by A x12 then B x19

Exit status 0 when every request got a 200 on the same connection.
Used by examples/xds/run.sh to show that a route push drops no connection.
"""
import argparse
import http.client
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=10000)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--stop", required=True, help="stop once this file exists")
    ap.add_argument("--max-seconds", type=float, default=60)
    a = ap.parse_args()

    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
    conn.auto_open = 0  # a closed connection must show up as an error, not a silent reconnect
    try:
        conn.connect()
    except OSError as e:
        print("probe: cannot connect to 127.0.0.1:%d: %s" % (a.port, e), flush=True)
        return 1
    local = "%s:%d" % conn.sock.getsockname()[:2]
    runs = []  # [service, count]
    n = errors = 0
    deadline = time.monotonic() + a.max_seconds
    while not os.path.exists(a.stop) and time.monotonic() < deadline:
        n += 1
        try:
            conn.request("GET", "/probe/%d" % n)
            r = conn.getresponse()
            body = r.read()
            svc = json.loads(body)["service"] if r.status == 200 else "HTTP %d" % r.status
            if r.status != 200:
                errors += 1
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            errors += 1
            print("probe: request %d failed: %r" % (n, e), flush=True)
            break
        if not runs or runs[-1][0] != svc:
            print("probe: request %d on the same connection (%s) answered by %s" % (n, local, svc),
                  flush=True)
            runs.append([svc, 0])
        runs[-1][1] += 1
        time.sleep(a.interval)
    conn.close()
    print("probe: one connection %s -> 127.0.0.1:%d: %d requests, %d errors, served by %s" %
          (local, a.port, n, errors, " then ".join("%s x%d" % (s, c) for s, c in runs) or "nobody"),
          flush=True)
    return 0 if errors == 0 and n > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
