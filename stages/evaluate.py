"""evaluate: score the best checkpoint on the whole validation split into metrics/eval.json."""

import json
import sys

from nanoslm import checkpoint, hardware
from nanoslm.atomic import write_json
from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.evaluate import evaluate_checkpoint

if __name__ == "__main__":
    with exit_on_user_error():
        checkpoint_path, tokens_dir, out_path = sys.argv[1:]
        params = load_params()
        checkpoint.require_config(checkpoint_path, params.model)
        hw = hardware.setup(params.hardware)
        result = evaluate_checkpoint(checkpoint_path, tokens_dir, params.eval.batch_size, hw)
        write_json(out_path, result)
        print(json.dumps(result))
