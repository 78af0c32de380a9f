#!/usr/bin/python3
"""Bounded HTTP load for the chaos experiment (examples/chaos/run.sh).

    load.py run --url URL --seconds S [--max-requests N] [--rate R] [--threads T] --out FILE
    load.py report FILE...

`run` sends GET requests over keep-alive connections from T threads, paced
to R requests/second in total, for S seconds or N requests, whichever comes
first, and writes every request's (status, latency) to FILE as JSON.
`report` prints one line per file: requests, errors (anything but 2xx, or a
failed exchange), error rate and latency p50/p90/p99."""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse


def run(args):
    u = urllib.parse.urlsplit(args.url)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    lock = threading.Lock()
    results = []
    sent = [0]
    start = time.monotonic()
    deadline = start + args.seconds
    interval = args.threads / args.rate  # per-thread pacing

    def worker(k):
        conn = None
        nxt = start + k * interval / args.threads
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if nxt > now:
                time.sleep(min(nxt - now, deadline - now))
                continue
            nxt += interval
            with lock:
                if sent[0] >= args.max_requests:
                    break
                sent[0] += 1
            t = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                status = r.status
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                status = 0
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                results.append((status, time.monotonic() - t))
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with open(args.out, "w") as f:
        json.dump({"label": args.label, "seconds": time.monotonic() - start, "results": results}, f)


def pct(sorted_v, p):
    if not sorted_v:
        return float("nan")
    i = min(len(sorted_v) - 1, max(0, int(round(p / 100.0 * len(sorted_v) + 0.5)) - 1))
    return sorted_v[i]


def report(files):
    print("%-8s %9s %7s %8s %9s %9s %9s" % ("phase", "requests", "errors", "error%", "p50 ms", "p90 ms", "p99 ms"))
    for fn in files:
        with open(fn) as f:
            d = json.load(f)
        res = d["results"]
        lat = sorted(x[1] * 1000 for x in res)
        errs = sum(1 for s, _ in res if not 200 <= s < 300)
        n = len(res)
        print("%-8s %9d %7d %7.2f%% %9.1f %9.1f %9.1f" % (
            d["label"], n, errs, 100.0 * errs / n if n else 0.0, pct(lat, 50), pct(lat, 90), pct(lat, 99)))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--url", required=True)
    r.add_argument("--seconds", type=float, required=True)
    r.add_argument("--max-requests", type=int, default=20000)
    r.add_argument("--rate", type=float, default=200.0)
    r.add_argument("--threads", type=int, default=8)
    r.add_argument("--label", default="run")
    r.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("files", nargs="+")
    a = ap.parse_args()
    if a.cmd == "run":
        if a.seconds <= 0 or a.seconds > 3600 or a.rate <= 0 or a.threads < 1 or a.max_requests < 1:
            sys.exit("load.py: bad bounds")
        run(a)
    else:
        report(a.files)


if __name__ == "__main__":
    main()
