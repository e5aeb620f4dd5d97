"""``python -m emulator``: the same as ``mu emulator``."""

from __future__ import annotations

import argparse
import sys

from emulator.cli import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m emulator")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
