"""Tokens/s of a running `nanoslm serve` with 1, then N concurrent streaming clients.

    nanoslm serve --checkpoint models/best.pt --port 8000 &
    python scripts/bench_serve.py --url http://127.0.0.1:8000 --streams 1,4 --max-tokens 200

Each client streams one completion (its own seed) and counts the tokens the server reports; the table gives the
wall time of the round, the total tokens/s over all clients and the mean tokens/s one client sees.
"""

import argparse
import json
import threading
import time
import urllib.request


def stream(url: str, model, max_tokens: int, seed: int, prompt: str) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    start, usage = time.perf_counter(), None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return {"tokens": usage["completion_tokens"], "seconds": time.perf_counter() - start}


def round_of(url: str, model, clients: int, max_tokens: int, prompt: str) -> dict:
    results = [None] * clients

    def run(i):
        results[i] = stream(url, model, max_tokens, 1000 + i, prompt)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "tokens": tokens, "wall_s": round(wall, 2), "total_tok_s": round(tokens / wall, 1),
            "per_client_tok_s": round(sum(r["tokens"] / r["seconds"] for r in results) / clients, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", help="a model id from GET /v1/models (default: the server's checkpoint)")
    parser.add_argument("--streams", default="1,4", help="comma-separated client counts (default: 1,4)")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--prompt", default="Once upon a time")
    args = parser.parse_args(argv)
    round_of(args.url, args.model, 1, 8, args.prompt)  # warm up: loads the model
    for n in (int(x) for x in args.streams.split(",")):
        print(json.dumps(round_of(args.url, args.model, n, args.max_tokens, args.prompt)))


if __name__ == "__main__":
    main()
