"""requests: a request derived from each story, as conversations in data/requests/{train,validation}.jsonl, and the
train stage's tokens in data/mixed (requests.mix of the train stories after their request)."""

import sys

from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.request_data import write_requests

if __name__ == "__main__":
    with exit_on_user_error():
        raw_dir, tokens_dir, out_dir, mixed_dir = sys.argv[1:]
        params = load_params()
        counts = write_requests(raw_dir, tokens_dir, out_dir, mixed_dir, params.model.block_size, params.train.seed,
                                params.requests.mix, params.requests.spare)
        print(f"requests: {counts}")
