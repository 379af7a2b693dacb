"""`lmforge VERB --nproc N ...`: the same command in N processes on this machine, via torchrun.

    lmforge pretrain --nproc 2 --train.distributed fsdp ...
      └─► torchrun's agent, in this process: --nproc-per-node 2 -m lmforge pretrain ...
            ├─► rank 0: lmforge pretrain ...      (each in a session of its own, so a
            └─► rank 1: lmforge pretrain ...       terminal's Ctrl-C reaches it once, via the agent)

SIGTERM or SIGINT reach the agent, which passes the signal to every rank; the ranks agree on
a step boundary, write their checkpoint together and stop, and this process exits with
128 + the signal, as a one-process run does. Several machines: run torchrun yourself on each
(docs/distributed.md).
"""

from __future__ import annotations

import os
import sys

# Seconds torchrun waits for the ranks to save and exit after a signal before killing them.
SHUTDOWN_TIMEOUT = 600


def torchrun_args(args: list[str], nproc: int) -> list[str]:
    """torchrun's arguments that run `python -m lmforge ARGS` in `nproc` local processes."""
    return [
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
    """Run `lmforge ARGS` in `nproc` processes through torchrun; returns the exit code: 0,
    128 + a signal that stopped the run, or the first failed rank's code.

    Each process gets OMP_NUM_THREADS = cores / nproc unless it is set (torchrun's default
    is 1 thread per process)."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        run(parse_args(torchrun_args(args, nproc)))
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        print(f"lmforge: rank {rank} of {nproc} exited with code {code}", file=sys.stderr)
        return code
    return 0
