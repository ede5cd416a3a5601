"""train: fit the GPT on data/tokens; write models/{best,last}.pt, dvclive metrics and plots/loss.png."""

import sys

from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.trainer import train

if __name__ == "__main__":
    with exit_on_user_error():
        tokens_dir, models_dir, live_dir, plot_path = sys.argv[1:]
        summary = train(load_params(), tokens_dir, models_dir, live_dir, plot_path)
        print(f"train: {summary}")
