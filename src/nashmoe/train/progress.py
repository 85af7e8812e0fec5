"""A progress bar with loss, tokens/s and ETA: tqdm when installed (imported lazily), else a plain
line every few seconds on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["CountBar", "Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75`` → ``"1:15"``, ``3700`` → ``"1:01:40"``."""
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Steps ``start .. total`` of a run.

    Args:
        total: last step.
        start: first step (a resumed run starts part-way).
        desc: label in front of the bar.
        enabled: False prints nothing (ranks other than 0, ``--no-progress``).
        plain: force the plain fallback even when tqdm is installed.
        stream: where the plain fallback writes.
        min_interval: seconds between plain lines.
    """

    def __init__(
        self,
        total: int,
        *,
        start: int = 0,
        desc: str = "",
        enabled: bool = True,
        plain: bool = False,
        stream: TextIO | None = None,
        min_interval: float = 10.0,
    ) -> None:
        self.total, self.start, self.desc = total, start, desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._bar = None
        self._t0 = time.perf_counter()
        self._last_print = -float("inf")
        self._step = start
        self._fields: dict[str, str] = {}
        if not enabled or plain:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True, leave=True
        )

    def update(self, step: int, **fields: float | str) -> None:
        """Move to ``step`` and show ``fields`` (e.g. ``loss=2.1, tok_s=5000``)."""
        if not self.enabled:
            return
        for k, v in fields.items():
            if isinstance(v, float):
                self._fields[k] = f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3g}"
            else:
                self._fields[k] = str(v)
        if self._bar is not None:
            self._bar.update(step - self._step)
            if fields:
                self._bar.set_postfix(self._fields, refresh=False)
            self._step = step
            return
        self._step = step
        now = time.perf_counter()
        if now - self._last_print < self.min_interval and step < self.total:
            return
        self._last_print = now
        done = step - self.start
        elapsed = now - self._t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        extra = " ".join(f"{k}={v}" for k, v in self._fields.items())
        eta_s = format_duration(eta) if eta == eta else "?"
        print(
            f"{self.desc} step {step}/{self.total} {extra} "
            f"elapsed {format_duration(elapsed)} eta {eta_s}",
            file=self.stream,
            flush=True,
        )

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CountBar:
    """A bar over a count of items (images, sentences ...): tqdm when installed, else a plain
    line every ``min_interval`` seconds on stderr with the rate."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        unit: str = "it",
        min_interval: float = 30.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.enabled, self.unit = total, desc, enabled, unit
        self.min_interval = min_interval
        self.stream = stream or sys.stderr
        self.done = 0
        self._t0 = self._last = time.perf_counter()
        self._bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True)

    def update(self, n: int) -> None:
        """``n`` more items done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and now - self._last > self.min_interval:
            self._last = now
            rate = self.done / max(now - self._t0, 1e-9)
            print(
                f"{self.desc}: {self.done}/{self.total} {self.unit}, {rate:.0f} {self.unit}/s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
