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

# The system calls the filter refuses (EPERM), by name; a name an architecture lacks is
# skipped. clone is allowed for threads only, clone3 fails with ENOSYS (glibc then uses
# clone), kill/tgkill reach the process itself only.
DENIED = """socket socketpair fork vfork execve execveat ptrace mknod mknodat pivot_root chroot
mount umount2 unshare setns bpf io_uring_setup io_uring_enter io_uring_register
name_to_handle_at open_by_handle_at userfaultfd perf_event_open add_key request_key keyctl
pidfd_open pidfd_send_signal pidfd_getfd rt_sigqueueinfo rt_tgsigqueueinfo tkill
process_vm_readv process_vm_writev open_tree move_mount fsopen fsconfig fsmount fspick
mount_setattr init_module finit_module delete_module kexec_load kexec_file_load reboot swapon
swapoff iopl ioperm acct quotactl sethostname setdomainname settimeofday clock_settime
adjtimex clock_adjtime personality"""
DENY = DENIED.split()

# Per architecture: the audit code seccomp sees and the system call numbers (from the
# kernel's unistd headers: asm/unistd_64.h for x86-64, asm-generic/unistd.h for AArch64).
NUMBERS = {
    "x86_64": (
        0xC000003E,
        """socket 41 socketpair 53 clone 56 fork 57 vfork 58 execve 59
        kill 62 ptrace 101 rt_sigqueueinfo 129 mknod 133 personality 135 pivot_root 155
        adjtimex 159 chroot 161 acct 163 settimeofday 164 mount 165 umount2 166 swapon 167
        swapoff 168 reboot 169 sethostname 170 setdomainname 171 iopl 172 ioperm 173
        init_module 175 delete_module 176 quotactl 179 tkill 200 clock_settime 227 tgkill 234
        kexec_load 246 add_key 248 request_key 249 keyctl 250 mknodat 259 unshare 272
        rt_tgsigqueueinfo 297 perf_event_open 298 name_to_handle_at 303 open_by_handle_at 304
        clock_adjtime 305 setns 308 process_vm_readv 310 process_vm_writev 311
        finit_module 313 kexec_file_load 320 bpf 321 execveat 322 userfaultfd 323
        pidfd_send_signal 424 io_uring_setup 425 io_uring_enter 426 io_uring_register 427
        open_tree 428 move_mount 429 fsopen 430 fsconfig 431 fsmount 432 fspick 433
        pidfd_open 434 clone3 435 pidfd_getfd 438 mount_setattr 442""",
    ),
    "aarch64": (
        0xC00000B7,
        """mknodat 33 umount2 39 mount 40 pivot_root 41 chroot 51
        quotactl 60 acct 89 unshare 97 kexec_load 104 init_module 105 delete_module 106
        clock_settime 112 ptrace 117 kill 129 tkill 130 tgkill 131 rt_sigqueueinfo 138
        reboot 142 sethostname 161 setdomainname 162 settimeofday 170 adjtimex 171
        socket 198 socketpair 199 add_key 217 request_key 218 keyctl 219 clone 220 execve 221
        swapon 224 swapoff 225 rt_tgsigqueueinfo 240 perf_event_open 241
        name_to_handle_at 264 open_by_handle_at 265 clock_adjtime 266 setns 268
        process_vm_readv 270 process_vm_writev 271 finit_module 273 bpf 280 execveat 281
        userfaultfd 282 kexec_file_load 294 pidfd_send_signal 424 io_uring_setup 425
        io_uring_enter 426 io_uring_register 427 open_tree 428 move_mount 429 fsopen 430
        fsconfig 431 fsmount 432 fspick 433 pidfd_open 434 clone3 435 pidfd_getfd 438
        mount_setattr 442 personality 92""",
    ),
}


def syscall_table(machine: str) -> tuple[int, dict[str, int]]:
    """(audit architecture code, {system call name: number}) of this machine."""
    audit, text = NUMBERS[machine]
    words = text.split()
    return audit, {name: int(nr) for name, nr in zip(words[::2], words[1::2])}


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


def seccomp_program(machine: str, pid: int) -> bytes:
    LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06  # ld [k]; jeq #k; jset #k; ret #k
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    ERRNO = 0x00050000
    arg0 = 16  # offsetof(struct seccomp_data, args[0]), low 32 bits on little-endian
    audit, nr = syscall_table(machine)
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, audit), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
    if machine == "x86_64":  # refuse the x32 ABI's numbering outright
        prog += [(0x35, 0, 1, 0x40000000), (RET, 0, 0, KILL)]  # jge #k
    prog += [(JEQ, "deny", 0, nr[name]) for name in DENY if name in nr]
    prog += [
        (JEQ, "clone", 0, nr["clone"]),
        (JEQ, "nosys", 0, nr["clone3"]),  # glibc then falls back to clone
        (JEQ, "signal", 0, nr["kill"]),
        (JEQ, "signal", 0, nr["tgkill"]),
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
    return assemble(prog)


def install_seccomp(machine: str) -> None:
    code = seccomp_program(machine, os.getpid())
    buffer = ctypes.create_string_buffer(code, len(code))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    program = Program(len(code) // 8, ctypes.addressof(buffer))
    call(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    call(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0), "seccomp")


# --- 9: run -------------------------------------------------------------------------------


def confine(request: dict) -> None:
    machine = platform.machine()
    if machine not in NUMBERS:
        raise OSError(ENOSYS, f"no seccomp table for {machine}")
    owner = NOBODY if os.getuid() == 0 else 0
    enter_namespaces()
    build_root(request["root"], request["disk_mb"], owner)
    pivot(request["root"], syscall_table(machine)[1]["pivot_root"])
    for name, text in request.get("files", {}).items():
        write("/work/" + name, text)
        os.chown("/work/" + name, owner, owner)
    os.chdir("/work")
    limit(request)
    drop_privileges(owner)
    install_seccomp(machine)


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
