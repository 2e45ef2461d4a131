"""Progress for people: tqdm bars on a terminal; elsewhere (nohup, CI, a log file) one plain status
line every ``STATUS_EVERY_S`` seconds, so that a long run never looks hung; or nothing at all."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

STATUS_EVERY_S = 30.0


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, desc: str, show: bool, initial: int = 0, leave: bool = True):
        self.total, self.desc, self.done = total, desc, initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=leave, mininterval=1.0, dynamic_ncols=True) \
            if show and sys.stderr.isatty() else None
        self.lines = show and self.bar is None
        self.started = self.last = time.monotonic()
        self.first = initial
        self.postfix: dict = {}

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        self.postfix = postfix or self.postfix
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
        elif self.lines and time.monotonic() - self.last >= STATUS_EVERY_S:
            self.status()

    def status(self) -> None:
        now = time.monotonic()
        self.last = now
        rate = (self.done - self.first) / max(now - self.started, 1e-9)
        eta = f", ETA {duration((self.total - self.done) / rate)}" if rate > 0 and self.total > self.done else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.done}/{self.total}{extra}, {duration(now - self.started)} elapsed{eta}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and time.monotonic() - self.started >= STATUS_EVERY_S:
            self.status()  # a last line for anything that took long enough to have shown one


def track(items: list, desc: str, show: bool, leave: bool = False):
    """Iterate ``items`` with progress shown as above."""
    progress = Progress(len(items), desc, show, leave=leave)
    for item in items:
        yield item
        progress.update(1)
    progress.close()
