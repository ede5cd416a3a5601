"""train: fit the GPT on data/tokens; write models/{best,last}.pt, dvclive metrics and plots/loss.png.

Resumes from models/last.pt when an unfinished run with the same params left it there.
"""

import sys

from nanoslm import distributed
from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.train import train

if __name__ == "__main__":
    with exit_on_user_error():
        tokens_dir, models_dir, live_dir, plot_path = sys.argv[1:]
        params = load_params()
        if params.hardware.nproc_per_node > 1 and not distributed.under_torchrun():
            distributed.relaunch_with_torchrun(params.hardware.nproc_per_node, __file__, sys.argv[1:])
        summary = train(params, tokens_dir, models_dir, live_dir, plot_path)
        if summary["interrupted"]:
            print(f"train: interrupted at step {summary['steps']}; checkpoint saved, `dvc repro` continues from it",
                  file=sys.stderr)
            sys.exit(130)
        print(f"train: {summary}")
