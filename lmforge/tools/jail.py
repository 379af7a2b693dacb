"""The sandbox's child process: confine itself with what Linux offers, then run the code.

This file runs as a program (`python -I -S jail.py`, a JSON request on stdin), never as
an import: it uses the standard library only and nothing from lmforge. Every step below
must succeed before a line of the request's code runs; any failure exits with status 125
and a message on stderr (fail closed).

    1. unshare: a new mount namespace and a new network namespace (only a loopback that is
       down), plus a user namespace when not started as root
    2. every mount becomes private, so nothing done here reaches the host
    3. a new root on a small tmpfs:      /usr /bin /lib /lib64   read-only (programs, libraries)
                                          <Python's stdlib dirs>  read-only, same paths
                                          /work                   tmpfs of `disk_mb`, the cwd
    4. pivot_root into it and detach the old root: no path leads to the host's files
    5. the new root is remounted read-only (only /work is writable)
    6. rlimits: address space, CPU seconds, file size, open files, processes, no core
    7. root drops to nobody (65534), so no capability survives
    8. no_new_privs + a seccomp filter: socket, fork/vfork/clone (except threads), exec,
       ptrace, mount, namespaces, kernel keys, BPF, io_uring, signals to other processes...
       fail with EPERM
    9. exec(code) with __name__ == "__main__"
"""

import ctypes
import json
import os
import platform
import resource
import signal
import struct
import sys
import traceback

SETUP_FAILED = 125
NOBODY = 65534
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
CLONE_THREAD = 0x00010000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
EPERM, ENOSYS = 1, 38

# Per architecture: the audit code seccomp sees, pivot_root's number, and the numbers of
# the system calls the filter refuses (from the kernel's unistd headers).
ARCHES = {
    "x86_64": dict(
        audit=0xC000003E,
        pivot_root=155,
        deny=[
            41,
            53,
            57,
            58,
            59,
            322,
            101,
            133,
            259,
            155,
            161,
            165,
            166,
            272,
            308,
            321,
            425,
            426,
            427,
            303,
            304,
            323,
            298,
            248,
            249,
            250,
            434,
            424,
            438,
            129,
            297,
            200,
            310,
            311,
            428,
            429,
            430,
            431,
            432,
            433,
            442,
            175,
            313,
            176,
            246,
            320,
            169,
            167,
            168,
            172,
            173,
            163,
            179,
            170,
            171,
            164,
            227,
            159,
            305,
            135,
        ],
        clone=56,
        clone3=435,
        kill=62,
        tgkill=234,
    ),  # fmt: skip
    "aarch64": dict(
        audit=0xC00000B7,
        pivot_root=41,
        deny=[
            198,
            199,
            221,
            281,
            117,
            33,
            41,
            51,
            40,
            39,
            97,
            268,
            280,
            425,
            426,
            427,
            264,
            265,
            282,
            241,
            217,
            218,
            219,
            434,
            424,
            438,
            138,
            240,
            130,
            270,
            271,
            428,
            429,
            430,
            431,
            432,
            433,
            442,
            105,
            273,
            106,
            104,
            294,
            142,
            224,
            225,
            89,
            60,
            161,
            162,
            170,
            112,
            171,
            266,
        ],
        clone=220,
        clone3=435,
        kill=129,
        tgkill=131,
    ),  # fmt: skip
}

libc = ctypes.CDLL(None, use_errno=True)


def call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    call(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# --- 1-5: namespaces and the new root ---------------------------------------------------


def enter_namespaces() -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | (0 if uid == 0 else CLONE_NEWUSER)
    call(libc.unshare(flags), "unshare")
    if uid != 0:  # become root of the new user namespace, mapped to the caller outside
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", f"0 {uid} 1")
        write("/proc/self/gid_map", f"0 {gid} 1")
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def bind_read_only(source: str, root: str) -> None:
    target = root + source
    os.makedirs(target, exist_ok=True)
    mount(source, target, None, MS_BIND | MS_REC)
    # A remount must keep the flags the source mount has locked (in a user namespace).
    kept = os.statvfs(target).f_flag & (MS_NOSUID | MS_NODEV | 8)  # 8 = noexec
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | kept)


def build_root(root: str, disk_mb: int, owner: int) -> None:
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for top in ("/bin", "/lib", "/lib64"):
        if os.path.islink(top):
            os.symlink(os.readlink(top), root + top)
        elif os.path.isdir(top):
            bind_read_only(top, root)
    bind_read_only("/usr", root)
    for path in sys.path:  # the standard library, wherever this Python keeps it
        if os.path.isdir(path) and not path.startswith("/usr/"):
            bind_read_only(path, root)
    os.mkdir(root + "/work")
    mount("tmpfs", root + "/work", "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={disk_mb}m,mode=0700,uid={owner},gid={owner}")  # fmt: skip


def pivot(root: str, pivot_root_nr: int) -> None:
    os.chdir(root)
    call(libc.syscall(pivot_root_nr, b".", b"."), "pivot_root")  # old root now stacked on /
    call(libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# --- 6-7: limits and identity -------------------------------------------------------------


def limit(request: dict) -> None:
    mb = 1024 * 1024
    cpu = request["cpu_seconds"]
    for which, value in [
        (resource.RLIMIT_AS, request["memory_mb"] * mb),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU, then SIGKILL a second later
        (resource.RLIMIT_FSIZE, request["disk_mb"] * mb),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_NPROC, request["max_processes"]),
        (resource.RLIMIT_CORE, 0),
    ]:
        resource.setrlimit(which, value if isinstance(value, tuple) else (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises OSError instead


def drop_privileges(owner: int) -> None:
    if os.getuid() != 0 or owner == 0:
        return
    os.setgroups([])
    os.setgid(owner)
    os.setuid(owner)
    if os.getuid() != owner or os.geteuid() != owner:
        raise OSError(EPERM, "could not drop root")


# --- 8: seccomp ---------------------------------------------------------------------------


def assemble(program: list) -> bytes:
    """Encode (code, jt, jf, k) instructions; jt/jf may name a label ("=NAME" entries)."""
    labels, code = {}, []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(code)
        else:
            code.append(item)
    out = []
    for i, (op, jt, jf, k) in enumerate(code):
        offsets = [labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        assert all(0 <= o < 256 for o in offsets), "seccomp jump out of range"
        out.append(struct.pack("HBBI", op, offsets[0], offsets[1], k))
    return b"".join(out)


def seccomp_program(arch: dict, pid: int) -> bytes:
    LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06  # ld [k]; jeq #k; jset #k; ret #k
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    ERRNO = 0x00050000
    arg0 = 16  # offsetof(struct seccomp_data, args[0]), low 32 bits on little-endian
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch["audit"]), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
    prog += [(JEQ, "deny", 0, nr) for nr in arch["deny"]]
    prog += [
        (JEQ, "clone", 0, arch["clone"]),
        (JEQ, "nosys", 0, arch["clone3"]),  # glibc then falls back to clone
        (JEQ, "signal", 0, arch["kill"]),
        (JEQ, "signal", 0, arch["tgkill"]),
        (RET, 0, 0, ALLOW),
        "clone",
        (LD, 0, 0, arg0),
        (JSET, "allow", "deny", CLONE_THREAD),  # a thread, not a process
        "signal",
        (LD, 0, 0, arg0),
        (JEQ, "allow", 0, pid),  # signals to itself only (its own process group is itself)
        (JEQ, "allow", "deny", 0),
        "allow",
        (RET, 0, 0, ALLOW),
        "deny",
        (RET, 0, 0, ERRNO | EPERM),
        "nosys",
        (RET, 0, 0, ERRNO | ENOSYS),
    ]
    if platform.machine() == "x86_64":  # refuse the x32 ABI's numbering outright
        prog[4:4] = [(0x35, 0, 1, 0x40000000), (RET, 0, 0, KILL)]  # jge #k
    return assemble(prog)


def install_seccomp(arch: dict) -> None:
    code = seccomp_program(arch, os.getpid())
    buffer = ctypes.create_string_buffer(code, len(code))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    program = Program(len(code) // 8, ctypes.addressof(buffer))
    call(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    call(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0), "seccomp")


# --- 9: run -------------------------------------------------------------------------------


def confine(request: dict) -> None:
    arch = ARCHES.get(platform.machine())
    if arch is None:
        raise OSError(ENOSYS, f"no seccomp table for {platform.machine()}")
    owner = NOBODY if os.getuid() == 0 else 0
    enter_namespaces()
    build_root(request["root"], request["disk_mb"], owner)
    pivot(request["root"], arch["pivot_root"])
    for name, text in request.get("files", {}).items():
        write("/work/" + name, text)
        os.chown("/work/" + name, owner, owner)
    os.chdir("/work")
    limit(request)
    drop_privileges(owner)
    install_seccomp(arch)


def main() -> None:
    try:
        request = json.loads(sys.stdin.read())
        confine(request)
    except BaseException as e:  # noqa: BLE001 - anything at all: refuse to run the code
        print(f"sandbox setup failed: {e}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    try:
        exec(compile(request["code"], "<sandbox>", "exec"), {"__name__": "__main__"})
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - reported like an uncaught exception
        traceback.print_exception(
            type(e), e, e.__traceback__.tb_next
        )  # the code's frames only, not this file's
        sys.exit(1)


if __name__ == "__main__":
    main()
