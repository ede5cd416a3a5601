"""The `nanoslm` command: the library's functions without DVC.

    nanoslm evaluate --checkpoint models/best.pt --data validation.txt
    nanoslm generate "Once upon a time" --checkpoint models/best.pt --seed 1
    nanoslm chat --checkpoint models/best.pt
    nanoslm export --checkpoint models/best.pt --out models/hf     # and models/model.gguf
"""

import argparse
import json

from . import hardware
from .config import DEVICES, DTYPES, EvalConfig, HardwareConfig, Sampling
from .errors import exit_on_user_error
from .sampling import MAX_NEW_TOKENS, SEED, TEMPERATURE, TOP_K, TOP_P, Field

DEFAULT_CHECKPOINT = "models/best.pt"  # where the pipeline's train stage keeps its best model


def _add_checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"a checkpoint from the train stage (default: {DEFAULT_CHECKPOINT})")


def _add_hardware_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default: auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="compute dtype; auto = bfloat16 where the device has it (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = every core (default: 0)")


def _hardware(args) -> hardware.Hardware:
    return hardware.setup(HardwareConfig(device=args.device, dtype=args.dtype, compile=False, threads=args.threads,
                                         nproc_per_node=1))


def _evaluate(args) -> None:
    from .evaluate_text import evaluate_text_file

    batch_size = EvalConfig(batch_size=args.batch_size).batch_size  # checked as eval.batch_size in params.yaml is
    result = evaluate_text_file(args.checkpoint, args.data, batch_size, _hardware(args))
    print(json.dumps(result, indent=2, sort_keys=True))


def _bench(args) -> None:
    from . import bench
    from .config import load_params

    params = load_params(args.params)
    if args.threads is not None:
        params = params.updated("hardware", threads=args.threads)
    result = bench.run_bench(params, args.preset, args.steps, args.only, tokens_dir=args.tokens, corpus=args.corpus,
                             corpus_mb=args.tokenize_corpus_mb)
    print(json.dumps(result, indent=2) if args.json else bench.format_table(result))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error here: `error: ...` and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def _top_k(text: str):
    if text.lower() in ("off", "none", str(TOP_K.typed_off)):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or off, got {text!r}") from None


def _add_sampling_arg(parser: argparse.ArgumentParser, field: Field, metavar=None, parse=None, shown=None) -> None:
    """--<name> from nanoslm.sampling's table: its type, default and help; config.Sampling checks the value."""
    parser.add_argument(f"--{field.name.replace('_', '-')}", type=parse or field.kind, default=field.default,
                        metavar=metavar, help=f"{field.help} (default: {field.default if shown is None else shown})")


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, the sampling settings, --seed and the hardware flags of generate and chat."""
    _add_checkpoint_arg(parser)
    _add_sampling_arg(parser, MAX_NEW_TOKENS, metavar="N")
    _add_sampling_arg(parser, TEMPERATURE)
    _add_sampling_arg(parser, TOP_K, metavar="K", parse=_top_k)
    _add_sampling_arg(parser, TOP_P, metavar="P")
    _add_sampling_arg(parser, SEED, shown="a random one")
    _add_hardware_args(parser)


def _sampling(args) -> Sampling:
    return Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p)


def _seed(args) -> int:
    import random

    return args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)


def _generate(args) -> None:
    import sys

    from .engine import generators
    from .errors import UserError
    from .generate import load_engine, stream_text

    if args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {args.num_samples}")
    sampling = _sampling(args)
    engine, enc, _ = load_engine(args.checkpoint, _hardware(args))
    sampling = sampling.check(engine.model.config.vocab_size)
    seed = _seed(args)
    try:
        for i, generator in enumerate(generators(seed, args.num_samples)):
            if args.num_samples > 1:
                print(f"{chr(10) if i else ''}--- sample {i + 1} of {args.num_samples} (seed {seed + i}) ---")
            print(args.prompt, end="", flush=True)
            for piece in stream_text(engine, enc, args.prompt, sampling, generator):
                print(piece, end="", flush=True)
            print()
    except KeyboardInterrupt:
        print()
        sys.exit(130)


def _chat(args) -> None:
    import sys

    from .chat import Chat
    from .conversation import ChatTokens
    from .generate import load_engine

    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    engine, enc, state = load_engine(args.checkpoint, _hardware(args))
    chat = ChatTokens(**state["chat"]) if "chat" in state else None  # a chat checkpoint takes requests
    Chat(engine, enc, _sampling(args), _seed(args), chat).run()


def _export(args) -> None:
    from pathlib import Path

    from .export import export
    from .gguf_export import export_gguf

    out = export(args.checkpoint, args.out)
    print(f"wrote {out}: load it with transformers' AutoModelForCausalLM.from_pretrained({str(out)!r}) "
          f"and AutoTokenizer.from_pretrained({str(out)!r})")
    if not args.no_gguf:
        gguf = export_gguf(args.checkpoint, args.gguf or Path(args.out).parent / "model.gguf", args.gguf_type)
        print(f"wrote {gguf} ({args.gguf_type}): run it with llama.cpp (llama-completion -m {gguf}), ollama "
              f"(a Modelfile with FROM {gguf.name}) or LM Studio")


def _serve(args) -> None:
    from .errors import UserError
    from .serve import Registry, serve_forever
    from .serve.server import LOOPBACK

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {args.port}")
    if args.max_engines < 1:
        raise UserError(f"--max-engines must be at least 1, got {args.max_engines}")
    registry = Registry(args.checkpoint, args.repo, _hardware(args), max_engines=args.max_engines,
                        measure_dtype=args.dtype == "auto")  # a dtype the user named is used as named
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who can reach this machine on port {args.port} can use "
              f"the models, without a password", flush=True)

    def ready(url):
        print(f"Nano-SLM playground on {url}/ (API: {url}/v1); Ctrl-C stops", flush=True)

    try:
        serve_forever(registry, args.host, args.port, log_level=args.log_level, on_ready=ready)
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None


def build_parser() -> argparse.ArgumentParser:
    from . import bench  # its defaults; the module imports no torch
    from .gguf_export import DEFAULT_GGUF_TYPE, GGUF_TYPES

    parser = _Parser(prog="nanoslm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = commands.add_parser(
        "evaluate", help="validation loss, perplexity and bits per byte of a checkpoint on a text file",
        description="Score every token of FILE (TinyStories' .txt layout: stories separated by lines holding "
                    "exactly <|endoftext|>) once, as the pipeline's evaluate stage does; print JSON.")
    _add_checkpoint_arg(ev)
    ev.add_argument("--data", required=True, metavar="FILE", help="text file in the hub's .txt layout")
    ev.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default: 16)")
    _add_hardware_args(ev)
    ev.set_defaults(run=_evaluate)

    be = commands.add_parser(
        "bench", help="training tokens/s vs a plain PyTorch loop, MFU, peak memory, tokenize and sampling speed",
        description="Benchmark the current params (or a preset): the train step's tokens/s, FLOP/s and MFU against a "
                    "matmul peak measured on the spot, side by side with a plain fp32 PyTorch loop on the same "
                    "model, weights and batches; tokenize MB/s and tokens/s on a generated corpus; sampling "
                    "tokens/s. Each phase runs in its own process and reports its own peak RSS. Progress goes to "
                    "stderr.")
    be.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    be.add_argument("--preset", default="default",
                    help=f"named overrides of the model/train sections: default (the params as they are), "
                         f"{', '.join(p for p in bench.PRESETS if p != 'default')} (default: default)")
    be.add_argument("--steps", type=int, default=bench.DEFAULT_STEPS,
                    help=f"timed training steps, after {bench.WARMUP_STEPS} warm-up steps "
                         f"(default: {bench.DEFAULT_STEPS})")
    be.add_argument("--only", default=",".join(bench.PHASES),
                    help=f"comma-separated phases among {', '.join(bench.PHASES)} (default: all)")
    be.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    be.add_argument("--tokenize-corpus-mb", type=float, default=bench.DEFAULT_CORPUS_MB, metavar="MB",
                    help=f"size of the generated tokenize corpus (default: {bench.DEFAULT_CORPUS_MB:g}, over 10x "
                         f"the shared sample)")
    be.add_argument("--corpus", metavar="FILE", help="a .txt file in the hub's layout whose stories seed the "
                                                     "tokenize corpus (default: generated TinyStories-like text)")
    be.add_argument("--tokens", default="data/tokens", metavar="DIR",
                    help="tokenized data for the training batches; random token ids when DIR holds none "
                         "(default: data/tokens)")
    be.add_argument("--threads", type=int, help="CPU threads, overriding hardware.threads (0 = every core)")
    be.set_defaults(run=_bench)
    gen = commands.add_parser(
        "generate", help="continue a prompt as a story, streaming the text as it is made",
        description="Continue PROMPT with a trained model and print the story as the tokens come. Each sample "
                    "ends at <|endoftext|> or after --max-new-tokens tokens; sample i uses seed --seed + i.")
    gen.add_argument("prompt", nargs="?", default="", metavar="PROMPT",
                     help="the start of the story (default: empty, a story from scratch)")
    gen.add_argument("--num-samples", type=int, default=1, metavar="N", help="stories to write (default: 1)")
    _add_generation_args(gen)
    gen.set_defaults(run=_generate)

    chat = commands.add_parser(
        "chat", help="interactive story assistant: type a request (or a beginning), the model writes the story",
        description="An interactive loop, streaming. With a chat checkpoint (finetune's models/tuned/best.pt), type "
                    "a request (\"a story about a dog who finds a red ball\") and the model writes it; the "
                    "conversation goes on, its oldest turns dropped once it outgrows the model's context, until "
                    "/new; /system TEXT sets a system message. With a base checkpoint, type the start of a story "
                    "and the model continues it. Commands: /temp X, /topk N|off, /topp X, /max N, /seed N, "
                    "/settings, /help, /quit. Ctrl-C stops a reply; Ctrl-D, /quit or Ctrl-C at the prompt leaves.")
    _add_generation_args(chat)
    chat.set_defaults(run=_chat)

    ex = commands.add_parser(
        "export", help="write a Hugging Face transformers folder and a GGUF file (GPT-2) from a checkpoint",
        description="Write DIR with config.json, model.safetensors and GPT-2 tokenizer files, offline, so that "
                    "transformers' AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR) "
                    "load the model. Replaces an earlier export in DIR; refuses a folder holding other files, "
                    "and a model GPT-2 cannot express. Loading it needs transformers: pip install 'nanoslm[export]'. "
                    "Beside it, model.gguf (GPT-2 architecture, the same tokenizer) runs in llama.cpp, ollama and "
                    "LM Studio.")
    _add_checkpoint_arg(ex)
    ex.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    ex.add_argument("--gguf", metavar="FILE", help="also write the model as one GGUF file for llama.cpp, ollama "
                                                   "and LM Studio here (default: model.gguf beside DIR)")
    ex.add_argument("--gguf-type", choices=GGUF_TYPES, default=DEFAULT_GGUF_TYPE,
                    help=f"the GGUF file's weights: f32, f16 or q8_0 (8-bit) (default: {DEFAULT_GGUF_TYPE})")
    ex.add_argument("--no-gguf", action="store_true", help="write only the transformers folder")
    ex.set_defaults(run=_export)

    sv = commands.add_parser(
        "serve", help="a local web page and an OpenAI-compatible API that write stories, side by side",
        description="Serve a playground page (prompt, sampling settings, the story streaming in; DVC experiments "
                    "side by side; a chat model's request box) and OpenAI's completions and chat APIs (POST "
                    "/v1/completions, POST /v1/chat/completions, GET /v1/models) plus GET /health. Offline: the page and its assets come with the package. Listens on 127.0.0.1 only, "
                    "unless --host says otherwise.")
    _add_checkpoint_arg(sv)
    sv.add_argument("--repo", default=".", metavar="DIR",
                    help="a DVC repository whose experiments (dvc exp show) are offered side by side, each "
                         "one's models/best.pt read from the local DVC cache (default: .)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1, this machine only); --host 0.0.0.0 is your "
                         "explicit choice to let any machine that reaches this one use it, with no password")
    sv.add_argument("--port", type=int, default=8000, help="TCP port; 0 = any free one (default: 8000)")
    sv.add_argument("--max-engines", type=int, default=3, metavar="N",
                    help="models kept loaded at once; the least recently used goes first (default: 3)")
    sv.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                    help="server log detail; debug logs every request (default: info)")
    _add_hardware_args(sv)
    sv.set_defaults(run=_serve)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        args.run(args)


if __name__ == "__main__":
    main()
