"""Progress bars: a bar factory ``bars(desc)(total)`` gives a context manager
with ``update(k)``; the CLI passes tqdm bars on stderr, everyone else silent ones."""
from __future__ import annotations

import sys
from typing import Callable


class NoBar:
    def __init__(self, total: int):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, k: int) -> None:
        pass


def no_bar(desc: str):
    """A bar factory that shows nothing."""
    return NoBar


def tqdm_bars(enabled: bool) -> Callable[[str], Callable[[int], object]]:
    """bars(desc)(total) -> a tqdm bar on stderr, or a silent stand-in."""
    if not enabled:
        return no_bar
    from tqdm import tqdm

    def bars(desc: str):
        return lambda total: tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    return bars
