"""download: fetch TinyStories (or read local files) into data/raw/{train,validation}.txt."""

import sys

from nanoslm.config import load_params
from nanoslm.errors import exit_on_user_error
from nanoslm.sources import download

if __name__ == "__main__":
    with exit_on_user_error():
        (out_dir,) = sys.argv[1:]
        counts = download(load_params().data, out_dir)
        print(f"download: {counts}")
