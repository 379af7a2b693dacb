"""`lmforge VERB --nproc N ...`: the same command in N processes on this machine, via torchrun.

    lmforge pretrain --nproc 2 --train.distributed fsdp ...
      └─► python -m torch.distributed.run --standalone --nproc-per-node 2 -m lmforge pretrain ...
            ├─► rank 0: lmforge pretrain ...      (each in its own session: a terminal's Ctrl-C
            └─► rank 1: lmforge pretrain ...       reaches them once, through torchrun)

The launcher starts torchrun in a session of its own and passes each SIGTERM or SIGINT it
receives on to it; torchrun passes it to every rank, the ranks agree on a step boundary,
write their checkpoint and stop, and the launcher exits with 128 + the signal, as a
one-process run does. Several machines: run torchrun yourself (docs/distributed.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from types import FrameType

from lmforge.train.signals import SIGNALS

# Seconds torchrun waits for the ranks to save and exit after a signal before killing them.
SHUTDOWN_TIMEOUT = 600


def torchrun_command(args: list[str], nproc: int) -> list[str]:
    """The torchrun command that runs `python -m lmforge ARGS` in `nproc` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--shutdown-timeout={SHUTDOWN_TIMEOUT}",
        "-m",
        "lmforge",
        *args,
    ]


def without_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` less `flag VALUE` and `flag=VALUE`."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


def launch(args: list[str], nproc: int) -> int:
    """Run `lmforge ARGS` in `nproc` processes through torchrun; returns the exit code.

    Each process gets OMP_NUM_THREADS = cores / nproc unless it is set (torchrun's default
    is 1 thread per process)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    child = subprocess.Popen(torchrun_command(args, nproc), env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in SIGNALS}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and code != 0:
        return 128 + received[0]
    return code
