"""Stopping a run on a signal without losing a step.

SIGTERM (what a scheduler or `docker stop` sends) and SIGINT (Ctrl-C) only set
`GracefulStop.received`; the loop sees it at the next step boundary, writes a checkpoint and
stops. A second signal stops at once (KeyboardInterrupt), as an impatient user expects.
Handlers are installed only in the main thread (Python delivers signals there alone) and the
previous ones are restored on exit. With several processes a signal may reach the ranks at
different moments; the loop takes the largest signal number over the ranks at every step
boundary (`Dist.agree`), so every rank stops after the same step and they write one
checkpoint together.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    def __init__(self) -> None:
        self.received: int | None = None  # the first signal's number, once one arrived
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
