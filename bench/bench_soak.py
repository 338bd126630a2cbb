"""
Soak test of serve.py: 8 streaming chat clients (real requests, max_tokens 64, back to back)
for --minutes, twice, each time on a fresh server: once alone, once with one hostile client
mixed in (stop strings at the length limit, streams left mid-reply, prompts over the
character limits, broken and 200,000-deep JSON, all back to back). Prints a table: requests,
p50/p95 time to first token of the 8 normal clients, their tokens/s, 5xx answers (and error
events inside a stream), the server's RSS at the 2nd and at the last minute (for runs under 5
minutes, the 2nd and the last fifth), and the targets, pass or fail:
  - p95 TTFT with the hostile client within 1.5x of without;
  - RSS of the last minute within 5 % of the 2nd minute's (no growth: no leak per request);
  - no 5xx at all.

    python bench/bench_soak.py --ckpt out/chat/best.pt --minutes 10
"""
import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter

import httpx

from bench import QUESTIONS, print_table, start_server, stream_chat  # bench/, beside this file

CLIENTS, MAX_TOKENS = 8, 64
TTFT_RATIO, RSS_GROWTH = 1.5, 0.05  # the targets


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS:"))) * 1024


class Phase:
    """What one run records: each normal request's (TTFT, tokens), answers by status, RSS samples."""

    def __init__(self, seconds: float):
        self.seconds, self.lock = seconds, threading.Lock()
        self.results, self.statuses, self.hostile = [], Counter(), Counter()
        self.rss: list[tuple[float, int]] = []
        self.t0 = self.end = 0.0

    def running(self) -> bool:
        return time.perf_counter() < self.end


def normal_client(url: str, i: int, phase: Phase):
    """A chat client: streaming requests back to back until the phase ends."""
    r = 0
    while phase.running():
        try:
            ttft, tokens = stream_chat(url, QUESTIONS[(i + r) % len(QUESTIONS)], seed=1000 * i + r,
                                       max_tokens=MAX_TOKENS)
            status = 200 if tokens else "error event"  # a reply of 64 tokens ends with its usage
        except httpx.HTTPStatusError as e:
            ttft, tokens, status = None, 0, e.response.status_code
        with phase.lock:
            phase.statuses[status] += 1
            if ttft is not None and tokens:
                phase.results.append((ttft, tokens))
        r += 1


def attacks(context: int) -> list:
    """The hostile client's requests, (name, send(client, url) -> status), in the order it loops."""
    stops = [chr(ord("a") + i) * 255 + "!" for i in range(4)]  # 4 of 256 characters: the limit
    huge = "x" * (16 * context + 1)  # one character over the message limit (checks.py: 16 per token)
    deep = b'{"messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"

    def post(body):
        def send(client, url):
            kw = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = client.post(url + "/v1/chat/completions", headers={"Content-Type": "application/json"}, **kw)
            return r.status_code
        return send

    def leave_mid_stream(client, url):
        body = {"messages": [{"role": "user", "content": "Tell me about rivers."}], "stream": True, "max_tokens": 256}
        with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # the first words: leave
        return r.status_code
    ask = {"role": "user", "content": "What is a river?"}
    return [("stop strings at the limit", post({"messages": [ask], "stop": stops, "n": 4, "max_tokens": MAX_TOKENS})),
            ("leaves mid-stream", leave_mid_stream),
            ("message over the limit", post({"messages": [{"role": "user", "content": huge}]})),
            ("history over the limit", post({"messages": [ask | {"content": huge[:16 * context]}] * 5})),
            ("broken JSON", post(b'{"messages": [')),
            ("JSON 200,000 deep", post(deep))]


def hostile_client(url: str, phase: Phase, context: int):
    with httpx.Client(timeout=300) as client:
        while phase.running():
            for name, send in attacks(context):
                try:
                    status = send(client, url)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                with phase.lock:
                    phase.hostile[f"{name}: {status}"] += 1


def sample_rss(pid: int, phase: Phase):
    every = min(5.0, phase.seconds / 50)  # every few seconds; 50 samples at least
    while phase.running():
        phase.rss.append((time.perf_counter() - phase.t0, rss(pid)))
        time.sleep(every)


def rss_windows(phase: Phase) -> tuple[float, float]:
    """Median RSS in the 2nd minute and in the last one (runs under 5 minutes: the 2nd and the
    last fifth of the run)."""
    T = phase.seconds
    second, last = ((60, 120), (T - 60, T)) if T >= 300 else ((T / 5, 2 * T / 5), (4 * T / 5, T))
    pick = lambda lo, hi: statistics.median(m for t, m in phase.rss if lo <= t < hi)  # noqa: E731
    return pick(*second), pick(*last)


def run_phase(ckpt: str, seconds: float, hostile: bool, log) -> Phase:
    proc, url = start_server(ckpt, stderr=log)
    try:
        stream_chat(url, "Hello!", 0, 8)  # warm-up
        context = httpx.get(url + "/health").json()["context_length"]
        phase = Phase(seconds)
        phase.t0 = time.perf_counter()
        phase.end = phase.t0 + seconds
        threads = [threading.Thread(target=normal_client, args=(url, i, phase)) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=sample_rss, args=(proc.pid, phase)))
        if hostile:
            threads.append(threading.Thread(target=hostile_client, args=(url, phase, context)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        phase.wall = time.perf_counter() - phase.t0  # the last requests end after the clock
    finally:
        proc.terminate()
        proc.wait()
    return phase


def row(name: str, phase: Phase) -> tuple:
    ttfts = sorted(t for t, _ in phase.results)
    q = statistics.quantiles(ttfts, n=20) if len(ttfts) > 1 else ttfts * 19
    second, last = rss_windows(phase)
    errors = sum(n for s, n in phase.statuses.items() if s == "error event" or s >= 500)
    return (name, {"requests": len(phase.results), "p50": statistics.median(ttfts), "p95": q[18],
                   "tok_s": sum(n for _, n in phase.results) / phase.wall, "5xx": errors,
                   "rss_2nd": second, "rss_last": last})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="out/chat/best.pt", help="a chat checkpoint")
    p.add_argument("--minutes", type=float, default=10, help="length of each of the two runs")
    args = p.parse_args()
    seconds = 60 * args.minutes
    with tempfile.NamedTemporaryFile("w+", prefix="soak-server-", suffix=".log", delete=False) as log:
        alone = row("8 clients alone", run_phase(args.ckpt, seconds, False, log))
        mixed_phase = run_phase(args.ckpt, seconds, True, log)
        mixed = row("8 clients + 1 hostile", mixed_phase)
    rows = []
    for name, r in (alone, mixed):
        rows.append((name, f"{r['requests']} requests, TTFT p50 {1000 * r['p50']:.0f} ms, "
                           f"p95 {1000 * r['p95']:.0f} ms, "
                           f"{r['tok_s']:,.0f} tok/s, 5xx {r['5xx']}, RSS {r['rss_2nd'] / 2**20:.0f} MB at the 2nd "
                           f"{'minute' if seconds >= 300 else 'fifth'}, {r['rss_last'] / 2**20:.0f} MB at the last"))
    rows.append(("hostile client's requests", json.dumps(dict(sorted(mixed_phase.hostile.items())))))
    a, m = alone[1], mixed[1]
    growth = max(r["rss_last"] / r["rss_2nd"] - 1 for r in (a, m))
    verdicts = [(f"target: p95 TTFT with the hostile client <= {TTFT_RATIO}x alone",
                 f"x{m['p95'] / a['p95']:.2f}: {'pass' if m['p95'] <= TTFT_RATIO * a['p95'] else 'FAIL'}"),
                (f"target: RSS of the last {'minute' if seconds >= 300 else 'fifth'} within {RSS_GROWTH:.0%}",
                 f"{growth:+.1%} (the larger of the two runs): {'pass' if growth <= RSS_GROWTH else 'FAIL'}"),
                ("target: no 5xx", f"{a['5xx'] + m['5xx']}: {'pass' if a['5xx'] + m['5xx'] == 0 else 'FAIL'}")]
    print_table(rows + verdicts)
    print(f"\nthe servers' log: {log.name}")
    sys.exit(0 if all(v.endswith("pass") for _, v in verdicts) else 1)


if __name__ == "__main__":
    main()
