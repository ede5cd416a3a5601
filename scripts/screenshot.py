"""(Re)make the README's screenshot of `nanoslm serve`: a story written by a real checkpoint, in headless Chromium.

    python scripts/screenshot.py --checkpoint models/best.pt --out docs/playground.png

Needs the system's Chromium and chromedriver (Debian: apt-get install chromium chromium-driver) and selenium
(pip install -e '.[test]'). Nothing is downloaded. The page is driven by nanoslm.serve.browser, as in the tests.
"""

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="models/best.pt")
    parser.add_argument("--repo", default=None, help="a DVC repo, to list its experiments too (default: none)")
    parser.add_argument("--out", default="docs/playground.png")
    parser.add_argument("--prompt", default="Once upon a time, there was a little dog named")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--size", default="1280x860", help="window WIDTHxHEIGHT (default: 1280x860)")
    args = parser.parse_args(argv)

    from nanoslm import hardware
    from nanoslm.config import HardwareConfig
    from nanoslm.serve import Registry, running
    from nanoslm.serve.browser import chrome, take

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    width, height = (int(x) for x in args.size.lower().split("x"))
    hw = hardware.setup(HardwareConfig(device="cpu", dtype="float32", compile=False, threads=0, nproc_per_node=1))
    registry = Registry(args.checkpoint, args.repo, hw)
    driver = chrome(width, height)
    try:
        with running(registry) as url:
            out = take(driver, url, Path(args.out), args.prompt, args.seed, args.max_tokens)
    finally:
        driver.quit()
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
