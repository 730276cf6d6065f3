"""What a 100% shadow costs the primary path, against a running baton (`make up`): the p50 and
p95 of POST /v1/agents/{agent}/invoke with the shadow off and on, in alternating blocks so that
both see the same machine, at concurrency 1 and 4.

    .venv/bin/python -m benchmarks.shadow [--agent sentiment --primary v2 --shadow v1 --requests 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TEXTS = [
    "I absolutely love this product, it works perfectly!", "The worst customer service I have ever had.",
    "The movie was boring and far too long.", "Fantastic experience, highly recommend.",
    "The food was great but the service was terribly slow.", "Not bad at all for the price.",
]


def timed_block(client: httpx.Client, agent: str, requests: int, concurrency: int) -> list[float]:
    def one(index: int) -> float:
        started = time.perf_counter()
        response = client.post(f"/v1/agents/{agent}/invoke", json={"text": TEXTS[index % len(TEXTS)]})
        response.raise_for_status()
        return (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(requests)))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--agent", default="sentiment")
    parser.add_argument("--primary", default="v2", help="the version that answers")
    parser.add_argument("--shadow", default="v1", help="the version that gets the copies")
    parser.add_argument("--requests", type=int, default=400, help="requests per condition and concurrency")
    parser.add_argument("--blocks", type=int, default=4, help="alternating off/on blocks per condition")
    args = parser.parse_args()
    key = (REPO / ".baton/dev-key").read_text().strip()
    client = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                          limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))
    client.put(f"/v1/admin/agents/{args.agent}/traffic", json={"weights": {args.primary: 100}}).raise_for_status()
    timed_block(client, args.agent, 50, 4)  # warm-up
    rows = []
    for concurrency in (1, 4):
        latencies: dict[str, list[float]] = {"off": [], "on": []}
        per_block = args.requests // args.blocks
        for _ in range(args.blocks):
            for condition, percent in (("off", 0), ("on", 100)):
                client.put(f"/v1/admin/agents/{args.agent}/shadow", json={"version": args.shadow, "percent": percent}).raise_for_status()
                time.sleep(1.5)  # every ingress replica follows the shared table within a second
                latencies[condition] += timed_block(client, args.agent, per_block, concurrency)
        client.put(f"/v1/admin/agents/{args.agent}/shadow", json={"version": args.shadow, "percent": 0}).raise_for_status()
        off, on = statistics.median(latencies["off"]), statistics.median(latencies["on"])
        rows.append({
            "concurrency": concurrency, "requests": len(latencies["on"]), "p50_off_ms": round(off, 2), "p50_on_ms": round(on, 2),
            "p50_ratio": round(on / off, 3), "p95_off_ms": round(quantile(latencies["off"], 0.95), 2),
            "p95_on_ms": round(quantile(latencies["on"], 0.95), 2),
        })
    time.sleep(3)
    stats = client.get("/v1/admin/stats").json()["agents"][args.agent].get(args.shadow, {}).get("shadow")
    print(json.dumps({"rows": rows, "shadow_stats": stats}, indent=2))
    print("\n| concurrency | requests per condition | p50 off (ms) | p50 on (ms) | on / off | p95 off (ms) | p95 on (ms) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['p50_off_ms']} | {r['p50_on_ms']} | {r['p50_ratio']:.3f} | {r['p95_off_ms']} | {r['p95_on_ms']} |")


if __name__ == "__main__":
    main()
