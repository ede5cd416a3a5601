"""tokenize: GPT-2 BPE of data/raw/*.txt into data/tokens/{train,validation}.bin + meta.json."""

import sys

from nanoslm.tokenization import tokenize
from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error

if __name__ == "__main__":
    with exit_on_user_error():
        raw_dir, out_dir = sys.argv[1:]
        params = load_params()
        meta = tokenize(raw_dir, out_dir, params.tokenizer, params.hardware.threads)
        print(f"tokenize: {meta['splits']}")
