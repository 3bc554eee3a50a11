"""Kernel-side guards the executor puts on itself (and so on all user code it starts), with
the standard library only (ctypes): it works in any image that has python3.

- ``PR_SET_DUMPABLE 0``: user code runs as the same uid, but cannot ptrace the executor or read
  its /proc files (memory, environment, file descriptors).
- A seccomp filter, on top of Docker's profile, refusing (EPERM) what a sandbox never needs and
  what widens the kernel's attack surface: new namespaces (``unshare``, ``clone`` with
  namespace flags, ``setns``; ``clone3`` answers ENOSYS so libc falls back to ``clone``), the
  mount API, bpf, perf_event_open, io_uring, keyrings, userfaultfd, module and kexec loading,
  file handles. Docker's profile keys on the container's capabilities; this one holds whatever
  the container was given (the in-container mount strategy gives it SYS_ADMIN).
- Two answers a local disk would give that s3fs does not: ``truncate(2)`` (by path) answers
  EOPNOTSUPP, because s3fs (1.90 to 1.95) leaves the file as it was and reports success, a silent
  loss of what the caller asked (``ftruncate`` on an open file works, and is what the ``truncate``
  command, sqlite and git use); ``chown`` to another user or group answers EPERM, as the kernel
  does for any process without CAP_CHOWN (s3fs accepts it and pretends).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000

# BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06

NAMESPACE_FLAGS = 0x7E020080  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET,TIME}

# name -> (x86_64, aarch64)
DENIED = {
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "setns": (308, 268),
    "bpf": (321, 280), "perf_event_open": (298, 241),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "userfaultfd": (323, 282),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "acct": (163, 89), "swapon": (167, 224),
    "swapoff": (168, 225), "quotactl": (179, 60), "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265), "syslog": (103, 116),
}
TRUNCATE = (76, 45)
# name -> (x86_64, aarch64) number, and the index of the uid argument (gid follows it).
CHOWNS = {"chown": ((92, None), 1), "lchown": ((94, None), 1), "fchown": ((93, 55), 1),
          "fchownat": ((260, 54), 2)}
UNCHANGED = 0xFFFFFFFF  # (uid_t) -1: leave the owner (or group) as it is
CLONE = (56, 220)
CLONE3 = (435, 435)
UNSHARE = (272, 97)
ARCHES = {"x86_64": (0, 0xC000003E), "amd64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7), "arm64": (1, 0xC00000B7)}


class GuardError(RuntimeError):
    pass


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _chown_rule(number: int, uid_arg: int, uid: int, gid: int) -> list[bytes]:
    """For syscall NUMBER: EPERM unless the new owner and group are unchanged or this process's own."""
    eperm = RET_ERRNO | errno.EPERM
    rule = [_insn(LD_W_ABS, 0, 0, 16 + 8 * uid_arg),
            _insn(JEQ_K, 2, 0, UNCHANGED), _insn(JEQ_K, 1, 0, uid), _insn(RET_K, 0, 0, eperm),
            _insn(LD_W_ABS, 0, 0, 16 + 8 * (uid_arg + 1)),
            _insn(JEQ_K, 2, 0, UNCHANGED), _insn(JEQ_K, 1, 0, gid), _insn(RET_K, 0, 0, eperm),
            _insn(RET_K, 0, 0, RET_ALLOW)]
    return [_insn(JEQ_K, 0, len(rule), number), *rule]


def program(machine: str | None = None, uid: int | None = None, gid: int | None = None) -> bytes:
    """The BPF program for this machine's architecture (seccomp_data: nr at 0, arch at 4, args[0]
    at 16), for a process of UID and GID (default: this one's)."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    machine = machine or os.uname().machine
    if machine not in ARCHES:
        raise GuardError(f"no syscall filter for architecture {machine}: refusing to run user code unfiltered")
    column, audit_arch = ARCHES[machine]
    eperm, enosys = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
    code = [
        _insn(LD_W_ABS, 0, 0, 4),
        _insn(JEQ_K, 1, 0, audit_arch),
        _insn(RET_K, 0, 0, RET_KILL_PROCESS),  # another ABI (e.g. 32-bit entry points): never
        _insn(LD_W_ABS, 0, 0, 0),
    ]
    if column == 0:
        code += [_insn(JGE_K, 0, 1, 0x40000000), _insn(RET_K, 0, 0, eperm)]  # the x32 ABI
    for numbers in DENIED.values():
        code += [_insn(JEQ_K, 0, 1, numbers[column]), _insn(RET_K, 0, 0, eperm)]
    code += [_insn(JEQ_K, 0, 1, CLONE3[column]), _insn(RET_K, 0, 0, enosys)]
    code += [_insn(JEQ_K, 0, 1, TRUNCATE[column]), _insn(RET_K, 0, 0, RET_ERRNO | errno.EOPNOTSUPP)]
    for chown_numbers, uid_arg in CHOWNS.values():
        number = chown_numbers[column]
        if number is not None:
            code += _chown_rule(number, uid_arg, uid, gid)
    for numbers in (CLONE, UNSHARE):
        code += [
            _insn(JEQ_K, 0, 4, numbers[column]),
            _insn(LD_W_ABS, 0, 0, 16),  # low 32 bits of the flags
            _insn(JSET_K, 0, 1, NAMESPACE_FLAGS),
            _insn(RET_K, 0, 0, eperm),
            _insn(RET_K, 0, 0, RET_ALLOW),
        ]
    code.append(_insn(RET_K, 0, 0, RET_ALLOW))
    return b"".join(code)


def _prctl(libc: ctypes.CDLL, option: int, arg: int | ctypes.c_void_p) -> None:
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise GuardError(f"prctl({option}) failed: {os.strerror(err)}")


def apply() -> None:
    """Make this process non-dumpable and filter its (and its descendants') system calls.
    Call before starting any thread."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        raise GuardError(f"cannot load libc: {exc}") from None
    _prctl(libc, PR_SET_DUMPABLE, 0)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)  # required to install a filter without privileges
    filt = program()
    buf = ctypes.create_string_buffer(filt, len(filt))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(filt) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise GuardError(f"cannot install the syscall filter: {os.strerror(err)}")


def child_setup() -> None:
    """In a child about to exec user code: dumpable again, so that its own /proc files belong to
    it (the executor's are root's) and it can raise its oom_score_adj. exec would reset it anyway."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
