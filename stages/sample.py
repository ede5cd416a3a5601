"""sample: continue the prompts in params.yaml with the best checkpoint, answer its requests (a chat checkpoint);
write them as Markdown."""

import sys

from nanoslm import checkpoint, hardware
from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.generate import write_samples

if __name__ == "__main__":
    with exit_on_user_error():
        checkpoint_path, out_path = sys.argv[1:]
        params = load_params()
        checkpoint.require_config(checkpoint_path, params.model)
        for s in write_samples(checkpoint_path, params.sample, hardware.setup(params.hardware), out_path):
            print(f"{s['prompt']}{s['text']}\n" if "prompt" in s else f"[{s['request']}]\n{s['text'].strip()}\n")
