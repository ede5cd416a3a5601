"""requests: a request derived from each story, as conversations in data/requests/{train,validation}.jsonl."""

import sys

from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.request_data import write_requests

if __name__ == "__main__":
    with exit_on_user_error():
        raw_dir, tokens_dir, out_dir = sys.argv[1:]
        params = load_params()
        print(f"requests: {write_requests(raw_dir, tokens_dir, out_dir, params.model.block_size, params.train.seed)}")
