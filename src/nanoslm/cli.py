"""The `nanoslm` command: the library's functions without DVC.

    nanoslm evaluate --checkpoint models/best.pt --data validation.txt
"""

import argparse
import json

from . import hardware
from .config import DEVICES, DTYPES, HardwareConfig
from .errors import exit_on_user_error

DEFAULT_CHECKPOINT = "models/best.pt"  # where the pipeline's train stage keeps its best model


def _add_hardware_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default: auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="compute dtype; auto = bfloat16 where the device has it (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = every core (default: 0)")


def _hardware(args) -> hardware.Hardware:
    return hardware.setup(HardwareConfig(device=args.device, dtype=args.dtype, compile=False, threads=args.threads))


def _evaluate(args) -> None:
    from .evaluate import evaluate_text_file

    result = evaluate_text_file(args.checkpoint, args.data, args.batch_size, _hardware(args))
    print(json.dumps(result, indent=2, sort_keys=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoslm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = commands.add_parser(
        "evaluate", help="validation loss, perplexity and bits per byte of a checkpoint on a text file",
        description="Score every token of FILE (TinyStories' .txt layout: stories separated by lines holding "
                    "exactly <|endoftext|>) once, as the pipeline's evaluate stage does; print JSON.")
    ev.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"default: {DEFAULT_CHECKPOINT}")
    ev.add_argument("--data", required=True, metavar="FILE", help="text file in the hub's .txt layout")
    ev.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default: 16)")
    _add_hardware_args(ev)
    ev.set_defaults(run=_evaluate)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        args.run(args)


if __name__ == "__main__":
    main()
