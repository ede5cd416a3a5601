"""instruct: ask models/tuned/best.pt for the held-out requests' stories and check them: metrics/instruct.json."""

import json
import sys

from nanoslm import hardware
from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.instruct_score import score_requests

if __name__ == "__main__":
    with exit_on_user_error():
        checkpoint_path, requests_path, train_txt, tokens_dir, out_path = sys.argv[1:]
        params = load_params()
        metrics = score_requests(checkpoint_path, requests_path, train_txt, tokens_dir, params.sample,
                                 params.instruct.seeds, params.instruct.requests, params.instruct.nudge,
                                 params.eval.batch_size, hardware.setup(params.hardware), out_path)
        print(f"instruct: {json.dumps(metrics)}")
