"""export: write the best checkpoint as a Hugging Face transformers folder (GPT-2 architecture), ready to share."""

import sys

from nanoslm.errors import exit_on_user_error
from nanoslm.export import export

if __name__ == "__main__":
    with exit_on_user_error():
        checkpoint_path, out_dir = sys.argv[1:]
        print(f"wrote {export(checkpoint_path, out_dir)}")
