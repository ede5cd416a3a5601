"""One stream's tokens/s through `nanoslm serve` against the engine's own, in-process, side by side.

    python scripts/bench_stream.py --checkpoint models/best.pt --tokens 200 --rounds 5 --threads 2

The server runs in a child process (`nanoslm serve --port 0`, the same --dtype and --threads); this process
runs the engine itself. Each round times the engine, then one streamed request to /v1/completions (and
/v1/chat/completions too for a chat model) with the same prompt, seed and settings, so both make the same
tokens, and the two measurements are interleaved: a machine that gets busier or quieter meanwhile moves both.
Engine: from the first step to the last token, in tokens/s, on this process's main thread, as `nanoslm
generate` runs it. (Not on a second thread: this process's main thread has an OpenMP team of its own, which
would slow it, while the server's worker is the one thread of its process that runs torch; docs/benchmarks.md,
2026-12-05 12:25.) Server: what a client sees, from sending the request to `data: [DONE]`. Prints one JSON line
per round, then the medians and the ratio of the server to the engine.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import torch

from nanoslm import hardware
from nanoslm.config import HardwareConfig, Sampling
from nanoslm.conversation import ChatTokens, render
from nanoslm.engine import generators
from nanoslm.generate import load_engine


def start_server(args, repo: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "nanoslm.cli", "serve", "--checkpoint", args.checkpoint, "--repo", repo,
           "--port", "0", "--device", "cpu", "--dtype", args.dtype, "--threads", str(args.threads),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    url = re.search(r"on (http://[^/]+)/", proc.stdout.readline()).group(1)
    return proc, url


def server_round(url: str, route: str, body: dict) -> dict:
    """(tokens, client seconds, the server's own tokens/s) of one streamed request."""
    req = urllib.request.Request(f"{url}{route}", data=json.dumps({**body, "stream": True, "stream_options": {
        "include_usage": True}}).encode(), headers={"Content-Type": "application/json"})
    start, usage = time.perf_counter(), None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                usage = chunk if chunk.get("usage") else usage
    seconds = time.perf_counter() - start
    return {"tokens": usage["usage"]["completion_tokens"], "seconds": seconds,
            "server_reported_tok_s": usage["timing"]["tokens_per_second"]}


def engine_round(engine, prompt_ids: list[int], sampling: Sampling, seed: int) -> dict:
    start, tokens = time.perf_counter(), 0
    for _ in engine.stream([prompt_ids], sampling, generators(seed, 1)):
        tokens += 1
    return {"tokens": tokens, "seconds": time.perf_counter() - start}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="models/best.pt")
    parser.add_argument("--tokens", type=int, default=200, help="max_tokens of each story (default: 200)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="auto (the server measures), float32 or bfloat16")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as repo:  # an empty --repo: no experiments to list
        proc, url = start_server(args, repo)
        try:
            run(args, url)
        finally:
            proc.terminate()
            proc.wait(30)


def run(args, url: str) -> None:
    info = json.loads(urllib.request.urlopen(f"{url}/api/model?id={args.checkpoint}", timeout=600).read())
    hw = hardware.setup(HardwareConfig(device="cpu", dtype="float32" if args.dtype == "auto" else args.dtype,
                                       compile=False, threads=args.threads, nproc_per_node=1))
    if args.dtype == "auto":  # the engine here in the dtype the server chose, so both make the same tokens
        hw = hardware.Hardware(hw.device, getattr(torch, info.get("dtype", "bfloat16")))
    engine, enc, state = load_engine(args.checkpoint, hw)
    sampling = Sampling(max_new_tokens=args.tokens, temperature=args.temperature, top_k=200)
    routes = {"/v1/completions": ({"prompt": args.prompt}, enc.encode_ordinary(args.prompt))}
    if "chat" in state:
        messages = [{"role": "user", "content": args.prompt}]
        routes["/v1/chat/completions"] = ({"messages": messages}, render(messages, enc, ChatTokens(**state["chat"]),
                                                                         reply=True)[0])
    print(json.dumps({"checkpoint": args.checkpoint, "dtype": info.get("dtype", args.dtype),
                      "threads": torch.get_num_threads(), "load_average": os.getloadavg()}))
    results = {route: {"engine": [], "server": []} for route in routes}
    for i in range(args.rounds + 1):  # round 0 warms both up and is not counted
        seed = 1000 + i
        for route, (fields, ids) in routes.items():
            e = engine_round(engine, ids, sampling, seed)
            s = server_round(url, route, {**fields, "max_tokens": args.tokens, "temperature": args.temperature,
                                          "top_k": 200, "seed": seed})
            row = {"round": i, "route": route, "engine_tok_s": round(e["tokens"] / e["seconds"], 1),
                   "server_tok_s": round(s["tokens"] / s["seconds"], 1),
                   "server_reported_tok_s": s["server_reported_tok_s"], "tokens": [e["tokens"], s["tokens"]]}
            print(json.dumps(row), flush=True)
            if i:
                for key in results[route]:
                    results[route][key].append(row[f"{key}_tok_s"])
    for route, r in results.items():
        median = {key: statistics.median(values) for key, values in r.items()}
        print(json.dumps({"route": route, **{f"median_{k}_tok_s": v for k, v in median.items()},
                          "server_over_engine": round(median["server"] / median["engine"], 3),
                          "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
