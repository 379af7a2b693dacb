"""The Python sandbox: each escape of the issue is refused or stopped, and the host is unharmed.

Every test runs a real child process (about 0.1 s each). They are skipped only on a machine
where the sandbox cannot confine itself at all (then the `python` tool refuses to run).
"""

from __future__ import annotations

import ast
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.tools import SandboxLimits, Toolbox, ToolCall, jail, python_tool, run_python
from lmforge.tools.sandbox import sandbox_available

available, reason = sandbox_available()
pytestmark = pytest.mark.skipif(not available, reason=f"no sandbox here: {reason}")
FAST = SandboxLimits(seconds=10, cpu_seconds=5, memory_mb=256, disk_mb=4)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_runs_code_and_prints_chinese():
    result = run_python("import math\nprint(math.factorial(20), '你好')", FAST)
    assert result.ok and result.stdout == "2432902008176640000 你好\n"


def test_the_file_system_view_is_minimal_and_read_only_outside_work():
    code = "import os\nprint(sorted(os.listdir('/')))\nprint(os.getcwd(), os.getuid())"
    out = run_python(code, FAST).stdout.splitlines()
    top = ast.literal_eval(out[0])
    assert set(top) <= {"bin", "lib", "lib64", "usr", "work", "root", "opt", "home"}
    assert "etc" not in top and "proc" not in top and "tmp" not in top
    assert out[1] in ("/work 65534", "/work 0")  # nobody when the host is root


def test_reading_etc_passwd_is_impossible():
    result = run_python("print(open('/etc/passwd').read())", FAST)
    assert not result.ok
    assert last_line(result.stderr).startswith("FileNotFoundError")
    assert "root:" not in result.stdout


def test_writing_outside_the_directory_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    targets = [str(victim), str(tmp_path / "new.txt"), "../escape.txt", "/escape.txt", "/usr/x"]
    code = "\n".join(
        f"try:\n    open({t!r}, 'w').write('pwned')\n    print('wrote', {t!r})\n"
        f"except OSError as e:\n    print('refused', type(e).__name__)"
        for t in targets
    )
    result = run_python(code, FAST)
    assert result.stdout.split("\n")[:-1] == [
        "refused FileNotFoundError",
        "refused FileNotFoundError",
        "refused OSError",  # read-only file system
        "refused OSError",
        "refused OSError",
    ]
    assert victim.read_text() == "original" and sorted(os.listdir(tmp_path)) == ["victim.txt"]


def test_the_working_directory_is_writable_but_bounded():
    code = (
        "open('a.txt', 'w').write('ok')\nprint(open('a.txt').read())\n"
        "try:\n    open('big', 'wb').write(b'x' * (8 * 2**20))\n"
        "except OSError as e:\n    print('refused', e.errno)"
    )
    lines = run_python(code, FAST).stdout.split()
    assert lines[0] == "ok" and lines[1] == "refused" and lines[2] in ("27", "28")  # EFBIG | ENOSPC


def test_files_are_given_to_the_program():
    result = run_python("print(open('data.txt').read())", FAST, files={"data.txt": "数据"})
    assert result.stdout == "数据\n"


def test_opening_a_socket_is_refused_and_the_host_listener_sees_nothing():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
        result = run_python(code, FAST)
        assert last_line(result.stderr) == "PermissionError: [Errno 1] Operation not permitted"
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()


def test_forking_many_processes_is_refused():
    code = "import os\nfor _ in range(1000):\n    os.fork()"
    result = run_python(code, FAST)
    assert not result.timed_out
    assert last_line(result.stderr) == "PermissionError: [Errno 1] Operation not permitted"
    spawn = run_python("import subprocess\nsubprocess.run(['/bin/ls'])", FAST)
    assert last_line(spawn.stderr) == "PermissionError: [Errno 1] Operation not permitted"
    thread = "import threading\nt = threading.Thread(target=print, args=('thread',))\n"
    thread += "t.start()\nt.join()"
    assert run_python(thread, FAST).stdout == "thread\n"  # threads are not processes


def test_allocating_10_gb_fails_inside_and_costs_the_host_nothing():
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = run_python("x = bytearray(10 * 1024**3)\nprint('allocated')", FAST)
    assert last_line(result.stderr) == "MemoryError" and "allocated" not in result.stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB
    assert after <= max(before, FAST.memory_mb * 1024)


def test_an_infinite_loop_is_stopped_at_the_deadline():
    result = run_python("while True:\n    pass", SandboxLimits(seconds=1, cpu_seconds=30))
    assert result.timed_out and result.exit_code is None
    assert result.summary() == "[stopped: time limit reached]"


def test_cpu_time_is_limited_by_the_kernel():
    result = run_python("while True:\n    pass", SandboxLimits(seconds=60, cpu_seconds=1))
    assert not result.timed_out
    assert result.exit_code in (-signal.SIGXCPU, -signal.SIGKILL)


def test_the_host_cannot_be_signalled():
    result = run_python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", FAST)
    assert last_line(result.stderr) == "PermissionError: [Errno 1] Operation not permitted"
    assert os.getpid() > 0  # still here


def test_output_is_capped():
    limits = SandboxLimits(seconds=10, max_output=1000)
    result = run_python("while True:\n    print('x' * 100)", limits)
    assert result.truncated and len(result.stdout) == 1000 and not result.timed_out


def test_python_tool_reports_failures_as_errors():
    box = Toolbox([python_tool(FAST)])
    ok = box.call(ToolCall("python", {"code": "print(6 * 7)"}))
    assert (ok.content, ok.error) == ("42", False)
    bad = box.call(ToolCall("python", {"code": "1 / 0"}))
    assert bad.error and "ZeroDivisionError: division by zero" in bad.content
    assert bad.content.endswith("[exit status 1]")


@pytest.mark.parametrize(
    ("machine", "header"),
    [
        ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        ("aarch64", "/usr/include/asm-generic/unistd.h"),
    ],
)
def test_the_seccomp_tables_match_the_kernel_headers(machine, header):
    if not Path(header).is_file():
        pytest.skip(f"{header} is not installed")
    text = Path(header).read_text()
    _, table = jail.syscall_table(machine)
    for name, number in table.items():
        found = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)\b", text)
        assert found and int(found.group(1)) == number, name
    assert set(jail.DENY) - set(table) <= {"fork", "vfork", "mknod", "iopl", "ioperm"}


def test_without_root_the_sandbox_uses_a_user_namespace():
    """Started by uid 1000 (in a user namespace of its own), the jail maps itself to root of
    a new user namespace and confines itself the same way."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    script = (
        "import os\nfrom lmforge.tools import run_python\nassert os.getuid() == 1000\n"
        "r = run_python('import os, socket\\nprint(sorted(os.listdir(\"/\")))\\nsocket.socket()')\n"
        "print(r.stdout.strip())\nprint(r.stderr.strip().splitlines()[-1])"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["unshare", "--user", "--map-user=1000", "--map-group=1000", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    if done.returncode and "unshare failed" in done.stderr:
        pytest.skip("user namespaces are not available here")
    listing, error = done.stdout.splitlines()
    assert "work" in ast.literal_eval(listing) and "etc" not in ast.literal_eval(listing)
    assert error == "PermissionError: [Errno 1] Operation not permitted"
