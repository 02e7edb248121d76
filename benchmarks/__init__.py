"""Benchmarks: each measures against its floor in the same run (see README.md)."""

from __future__ import annotations

import sys
import time


def say(text: str) -> None:
    """A progress line on stderr, with the time (stdout is left to the figures)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
