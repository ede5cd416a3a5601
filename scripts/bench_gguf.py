"""New tokens/s at batch 1: llama.cpp on the exported GGUF file (f32, f16, q8_0) beside Nano-SLM's engine (float32,
bfloat16), in one process, on the same CPU threads.

    python scripts/bench_gguf.py --checkpoint models/best.pt --tokens 200 --rounds 5 --threads 2

llama.cpp runs through llama-cpp-python (its Python loop per token included). Every round runs each contender once,
in turn, so a busy neighbour slows them alike; the table gives the median round. Each run is greedy from the same
prompt and never stops at <|endoftext|>: prompt + tokens must fit in the model's context, since llama.cpp's GPT-2
has no window past its learned positions. Needs llama-cpp-python (in the test extra).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nanoslm import checkpoint
from nanoslm.config import Sampling
from nanoslm.engine import Engine
from nanoslm.generate import load_engine
from nanoslm.gguf_export import GGUF_TYPES, export_gguf
from nanoslm.hardware import Hardware


def ours(checkpoint_path: str, dtype: torch.dtype, prompt: list[int], n: int):
    model, _ = checkpoint.load_model(checkpoint_path)
    engine = Engine(model, Hardware(torch.device("cpu"), dtype), eot=-1)  # eot -1: never stops early
    sampling = Sampling(max_new_tokens=n, temperature=0.0, top_k=None, top_p=1.0)
    return lambda: len(engine.generate([prompt], sampling, [torch.Generator()])[0])


def llama(path: Path, threads: int, n_ctx: int, prompt: list[int], n: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          verbose=False)

    def run():
        count = 0
        for _ in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):  # greedy, past <|endoftext|>
            count += 1
            if count == n:
                return count
    run.close = llm.close  # llama-cpp-python's own cleanup at interpreter exit prints tracebacks
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="models/best.pt")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine, enc, _ = load_engine(args.checkpoint, Hardware(torch.device("cpu"), torch.float32))
    prompt, n_ctx = enc.encode_ordinary(args.prompt), engine.block_size
    if len(prompt) + args.tokens > n_ctx:
        parser.error(f"prompt + --tokens must fit the model's context of {n_ctx} tokens")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {f"nanoslm engine {name}": ours(args.checkpoint, dtype, prompt, args.tokens)
                for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
        for t in GGUF_TYPES:
            path = export_gguf(args.checkpoint, Path(tmp) / f"model-{t}.gguf", t)
            runs[f"llama.cpp {t}"] = llama(path, args.threads, n_ctx, prompt, args.tokens)
        for run in runs.values():
            run()  # warm-up
        seconds = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                assert run() == args.tokens
                seconds[name].append(time.perf_counter() - start)
        for run in runs.values():
            getattr(run, "close", lambda: None)()
    print(f"{args.tokens} new tokens at batch 1 after a {len(prompt)}-token prompt, {args.threads} threads, "
          f"median of {args.rounds} rounds ({args.checkpoint})")
    print("| runtime | tokens/s (median) | min-max |")
    print("|---|---:|---:|")
    for name, s in seconds.items():
        rates = sorted(args.tokens / x for x in s)
        print(f"| {name} | {statistics.median(rates):,.0f} | {rates[0]:,.0f}-{rates[-1]:,.0f} |")


if __name__ == "__main__":
    main()
