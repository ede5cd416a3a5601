"""finetune: tune models/best.pt on finetune.source; write models/tuned/{best,last}.pt, dvclive-tuned metrics and
plots/tuned-loss.png.

Resumes from models/tuned/last.pt when an unfinished run with the same params and base left it there.
"""

import sys

from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.finetune import finetune

if __name__ == "__main__":
    with exit_on_user_error():
        base_path, data_dir, models_dir, live_dir, plot_path = sys.argv[1:]
        summary = finetune(load_params(), base_path, data_dir, models_dir, live_dir, plot_path)
        if summary["interrupted"]:
            print(f"finetune: interrupted at step {summary['steps']}; checkpoint saved, `dvc repro` continues from it",
                  file=sys.stderr)
            sys.exit(130)
        print(f"finetune: {summary}")
