"""Run untrusted Python in a separate, confined process (the `python` tool).

    host (this process)                          child: python -I -S -u jail.py
    ───────────────────                          ──────────────────────────────
    request {code, limits} ──stdin──►  namespaces → new root → rlimits → nobody → seccomp
    read stdout/stderr (capped)  ◄──pipes──  exec(code) in /work (a tmpfs of disk_mb)
    wall-clock deadline: kill the process group

The confinement is done by the child itself, before any of the code runs (see jail.py for
the steps); the host only starts it, feeds it, reads at most `max_output` bytes of each
stream and kills it at the deadline. What is and is not isolated is listed in
docs/tools.md, with the test of each escape (tests/tools/test_sandbox.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.tools.registry import Tool, ToolError

JAIL = Path(__file__).with_name("jail.py")
SETUP_FAILED = 125  # jail.py's exit status when it could not confine itself


@dataclass(frozen=True)
class SandboxLimits:
    seconds: float = 5.0  # wall-clock limit; the child is killed when it is reached
    cpu_seconds: int = 5  # CPU time limit (RLIMIT_CPU)
    memory_mb: int = 512  # address-space limit (RLIMIT_AS)
    disk_mb: int = 16  # size of the writable /work tmpfs, and the largest file
    max_processes: int = 16  # RLIMIT_NPROC for the sandbox user (fork is refused anyway)
    max_output: int = 65536  # bytes kept of stdout and of stderr each

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ConfigError(f"sandbox.{name} must be positive, got {value!r}")


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None  # None when killed by the host at the deadline
    timed_out: bool  # the wall-clock limit was reached
    truncated: bool  # some output was dropped beyond max_output

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def summary(self) -> str:
        """What the model reads: the output, then how the run ended when it did not succeed."""
        text = self.stdout
        if self.stderr:
            text += ("\n" if text and not text.endswith("\n") else "") + self.stderr
        if self.truncated:
            text += "\n[output truncated]"
        if self.timed_out:
            text += "\n[stopped: time limit reached]"
        elif self.exit_code is not None and self.exit_code < 0:
            text += f"\n[killed by {signal.Signals(-self.exit_code).name}]"
        elif self.exit_code:
            text += f"\n[exit status {self.exit_code}]"
        return text.strip() or "[no output]"


class SandboxUnavailable(ConfigError):
    """This machine does not let the sandbox confine itself (namespaces or seccomp refused)."""


def _read_capped(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool]:
    """Read both pipes until they close or the deadline passes, keeping `cap` bytes each.

    A stream that overflows is closed: the child's next write fails instead of filling the
    host's memory."""
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    truncated = False
    with selectors.DefaultSelector() as sel:
        for stream in kept:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                buf = kept[key.fileobj]
                if chunk:
                    buf += chunk[: cap - len(buf)]
                if not chunk or len(buf) >= cap:
                    truncated |= bool(chunk)
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
    return bytes(kept[proc.stdout]), bytes(kept[proc.stderr]), truncated


def run_python(
    code: str, limits: SandboxLimits | None = None, files: dict[str, str] | None = None
) -> SandboxResult:
    """Run `code` confined; `files` (name → text) are put in its working directory first."""
    limits = limits or SandboxLimits()
    limits.validate()
    with tempfile.TemporaryDirectory(prefix="lmforge-sandbox-") as mountpoint:
        request = {
            "code": code,
            "root": mountpoint,  # an empty host directory; the child mounts its tmpfs on it
            "files": files or {},
            "memory_mb": limits.memory_mb,
            "cpu_seconds": limits.cpu_seconds,
            "disk_mb": limits.disk_mb,
            "max_processes": limits.max_processes,
        }
        env = {"PATH": "/usr/bin:/bin", "HOME": "/work", "TMPDIR": "/work", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-u", str(JAIL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=mountpoint,
            start_new_session=True,  # its own process group, killed as a whole
        )
        deadline = time.monotonic() + limits.seconds
        try:
            proc.stdin.write(json.dumps(request).encode("utf-8"))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; its stderr says why
        out, err, truncated = _read_capped(proc, deadline, limits.max_output)
        timed_out = _wait_or_kill(proc, deadline)
    stderr = err.decode("utf-8", "replace")
    if proc.returncode == SETUP_FAILED:
        raise SandboxUnavailable(
            f"the Python sandbox could not confine itself on this machine ({stderr.strip()}); "
            "it needs Linux with mount and network namespaces (root or user namespaces) and "
            "seccomp. Leave `python` out of --tools to run without it"
        )
    code_ = None if timed_out else proc.returncode
    return SandboxResult(out.decode("utf-8", "replace"), stderr, code_, timed_out, truncated)


def _wait_or_kill(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for the child until the deadline; then kill its process group. True if killed."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


@functools.lru_cache(maxsize=1)
def sandbox_available() -> tuple[bool, str]:
    """(whether the sandbox confines itself here, why not)."""
    try:
        result = run_python("print('ok')", SandboxLimits(seconds=10))
    except SandboxUnavailable as e:
        return False, str(e)
    return result.stdout.strip() == "ok", result.summary()


def python_tool(limits: SandboxLimits | None = None, name: str = "python") -> Tool:
    """A tool that runs a program in the sandbox and returns what it printed."""
    limits = limits or SandboxLimits()
    limits.validate()

    def python(code: str) -> str:
        """Run a Python program in a sandbox (no network, no host files); returns what it prints.

        Args:
            code: a complete program; print the values you need
        """
        result = run_python(code, limits)
        if not result.ok:
            raise ToolError(result.summary())
        return result.summary()

    return Tool.from_function(python, name)
