"""Progress of long runs: a tqdm bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


class Progress:
    """Count work done towards ``total``; shows rate and ETA.

    ``enabled=None`` picks a bar when stderr is a terminal and a line every
    ``log_every`` seconds otherwise (CI logs, redirected output); ``False``
    keeps quiet. ``postfix`` returns values shown after the count, called
    only when the bar or line is drawn: formatting them every step would cost
    more than a small step.
    """

    def __init__(
        self, total: int, *, desc: str, unit: str = "sample", initial: int = 0,
        enabled: bool | None = None, log_every: float = 10.0, postfix: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.enabled = enabled is not False
        self.log_every = log_every
        self.start = self._last_log = time.perf_counter()
        self.initial = initial
        self.postfix: dict[str, Any] = {}
        self.postfix_source = postfix
        self.bar = None
        if self.enabled and (enabled or sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, count: int, **postfix: Any) -> None:
        self.done += count
        if postfix:
            self.postfix.update(postfix)
        if self.bar is not None:
            drawn = self.bar.update(count)
            if drawn and self.postfix_source is not None:  # shown at the next refresh
                self.postfix.update(self.postfix_source())
            if postfix or drawn and self.postfix_source is not None:
                self.bar.set_postfix(self.postfix, refresh=False)
        elif self.enabled and time.perf_counter() - self._last_log >= self.log_every:
            self._last_log = time.perf_counter()
            if self.postfix_source is not None:
                self.postfix.update(self.postfix_source())
            print(self.line(), file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return (self.done - self.initial) / max(self.elapsed, 1e-9)

    def line(self) -> str:
        eta = (self.total - self.done) / self.rate if self.rate > 0 else float("inf")
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        units = self.unit + ("es" if self.unit.endswith(("ch", "s")) else "s")
        return f"{self.desc}: {self.done}/{self.total} {units}, {self.rate:,.0f} {units}/s, ETA {eta:.0f}s{extra}"

    def close(self) -> None:
        if self.bar is not None:
            if self.postfix_source is not None:  # the final figures on the last line
                self.bar.set_postfix({**self.postfix, **self.postfix_source()}, refresh=False)
            self.bar.close()
