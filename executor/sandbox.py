"""Operating-system isolation applied inside the per-call child process.

Layers, applied in this order by `apply()` right after the fork, before any model code runs:
  1. resource limits (address space, CPU seconds, file size 0, open files, processes, no core dumps);
  2. no-new-privileges (`prctl(PR_SET_NO_NEW_PRIVS)`);
  3. Landlock: reads only below the directories Python needs, no writes anywhere, no TCP, no signals
     or abstract sockets outside the child (the kernel ABI decides which of these are available);
  4. seccomp (libseccomp via `pyseccomp`): no sockets, no exec, no new processes (threads fail with
     EAGAIN), no ptrace, mount, namespaces, io_uring, BPF, or signals to other processes.
The network namespace and the unprivileged user are set up for the whole worker by `pool.py`
(bubblewrap); the empty environment is set up by the worker and the child.

Nothing here looks at the code's text.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import resource
import sys
import sysconfig

from codevision_jax.processing import png

_libc = ctypes.CDLL(None, use_errno=True)

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_DUMPABLE = 4

# Landlock (include/uapi/linux/landlock.h). Syscall numbers are the same on x86_64 and aarch64.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REFER = 1 << 13
_FS_TRUNCATE = 1 << 14
_FS_IOCTL_DEV = 1 << 15
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1

CLONE_THREAD = 0x00010000


_SYS_CAPSET = 126 if os.uname().machine == "x86_64" else 91
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
  _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
  _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> bool:
  """Empties this process's capability sets (it matters when the worker runs as root)."""
  header = _CapHeader(_CAP_VERSION_3, 0)
  data = (_CapData * 2)()
  return _libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)) == 0


class _RulesetAttr(ctypes.Structure):
  _fields_ = [
    ("handled_access_fs", ctypes.c_uint64),
    ("handled_access_net", ctypes.c_uint64),
    ("scoped", ctypes.c_uint64),
  ]


class _PathBeneathAttr(ctypes.Structure):
  _pack_ = 1
  _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
  """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
  v = _libc.syscall(
    _SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)
  )
  return max(int(v), 0)


def _handled_fs(abi: int) -> int:
  bits = (1 << 13) - 1  # EXECUTE .. MAKE_SYM (ABI 1)
  if abi >= 2:
    bits |= _FS_REFER
  if abi >= 3:
    bits |= _FS_TRUNCATE
  if abi >= 5:
    bits |= _FS_IOCTL_DEV
  return bits


def read_paths() -> list[str]:
  """Directories the child may read: Python's libraries, site-packages, this package, the
  library's `processing` package (the PNG encoder the service shares with its clients), shared
  libraries and fonts.

  Not the rest of the repository, the home directory, /etc, /proc or /tmp.
  """
  sp = sysconfig.get_paths()
  paths = {
    sp["stdlib"],
    sp["platstdlib"],
    sp["purelib"],
    sp["platlib"],
    os.path.dirname(os.path.realpath(__file__)),
    os.path.dirname(os.path.realpath(png.__file__)),
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/local/lib",
    "/usr/share/fonts",
  }
  paths.update(p for p in sys.path if p.endswith(("site-packages", "lib-dynload", ".zip")))
  return sorted(p for p in paths if p and os.path.isdir(p))


def make_landlock_ruleset(abi: int) -> int:
  """Builds the ruleset once per worker; returns its fd (children call `restrict_self` on it)."""
  attr = _RulesetAttr(
    handled_access_fs=_handled_fs(abi),
    handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
    scoped=(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
  )
  size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
  fd = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
  if fd < 0:
    raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
  read_dir = _FS_READ_FILE | _FS_READ_DIR
  for path, access in [(p, read_dir) for p in read_paths()] + [
    ("/dev/null", _FS_READ_FILE),
    ("/dev/urandom", _FS_READ_FILE),
  ]:
    try:
      pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
      continue
    try:
      rule = _PathBeneathAttr(allowed_access=access, parent_fd=pfd)
      if (
        _libc.syscall(_SYS_LANDLOCK_ADD_RULE, fd, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0))
        != 0
      ):
        raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
      os.close(pfd)
  return fd


def _seccomp_filter(pid: int):
  """A denylist filter (default allow) for the child whose pid is `pid`."""
  import pyseccomp as sc  # pylint: disable=import-outside-toplevel

  f = sc.SyscallFilter(sc.ALLOW)
  kill = sc.KILL_PROCESS
  eperm = sc.ERRNO(errno.EPERM)
  forbidden = [
    # programs and processes
    "execve",
    "execveat",
    "fork",
    "vfork",
    # network
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    # other processes' memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_open",
    "pidfd_getfd",
    "kcmp",
    # mounts and namespaces
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    # kernel attack surface the code never needs
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "acct",
    "quotactl",
  ]
  for name in forbidden:
    try:
      f.add_rule(kill, name)
    except (ValueError, RuntimeError, OSError):
      pass  # not a syscall on this architecture
  # Threads get EAGAIN (Python: "can't start new thread"); clone without CLONE_THREAD is a new process.
  f.add_rule(sc.ERRNO(errno.EAGAIN), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
  f.add_rule(kill, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
  f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # glibc then falls back to clone, filtered above
  # Signals only to itself.
  for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
    f.add_rule(eperm, name, sc.Arg(0, sc.NE, pid))
  f.add_rule(eperm, "tkill")
  f.add_rule(eperm, "pidfd_send_signal")
  # Limits, priorities and affinity only of itself.
  f.add_rule(eperm, "prlimit64", sc.Arg(0, sc.NE, 0))
  f.add_rule(eperm, "setpriority", sc.Arg(1, sc.NE, 0))
  f.add_rule(eperm, "sched_setaffinity", sc.Arg(0, sc.NE, 0))
  f.add_rule(eperm, "sched_setscheduler", sc.Arg(0, sc.NE, 0))
  f.add_rule(eperm, "ioprio_set")
  return f


# Stands for the child's pid in the compiled filter; replaced after the fork (see `Sandbox.apply`).
_PID_PLACEHOLDER = 0x3A5C3E91
_SECCOMP_SET_MODE_FILTER = 1
_SYS_SECCOMP = 317 if os.uname().machine == "x86_64" else 277


class _SockFprog(ctypes.Structure):
  _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def compile_seccomp() -> bytes | None:
  """The filter as classic BPF (compiled once per worker by libseccomp); None if unavailable.

  Compiling takes about 2 ms, so the worker does it once with a placeholder pid, and each child
  only patches in its own pid and loads the program.
  """
  try:
    f = _seccomp_filter(_PID_PLACEHOLDER)
    r, w = os.pipe()
    try:
      with os.fdopen(w, "wb", closefd=False) as wf:
        f.export_bpf(wf)
      os.close(w)
      w = -1
      chunks = []
      while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    finally:
      os.close(r)
      if w >= 0:
        os.close(w)
    prog = b"".join(chunks)
  except Exception as e:  # pylint: disable=broad-except
    print(f"executor worker: seccomp unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return None
  placeholder = _PID_PLACEHOLDER.to_bytes(4, sys.byteorder)
  # Each instruction is {u16 code, u8 jt, u8 jf, u32 k}: the pid can only be a `k`.
  if (
    not prog
    or len(prog) % 8
    or any(prog.find(placeholder, i) % 8 != 4 for i in range(0, len(prog), 8) if prog.find(placeholder, i) >= 0)
  ):
    return None
  return prog


def _load_bpf(prog: bytes, pid: int) -> None:
  placeholder = _PID_PLACEHOLDER.to_bytes(4, sys.byteorder)
  prog = prog.replace(placeholder, pid.to_bytes(4, sys.byteorder))
  buf = ctypes.create_string_buffer(prog, len(prog))
  fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
  if _libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(fprog)) != 0:
    raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER) failed")


@dataclasses.dataclass
class Limits:
  """Per-call resource limits for the child."""

  memory_bytes: int = 1 << 30  # address space allowed on top of what the worker already maps
  open_files: int = 64


@dataclasses.dataclass
class Sandbox:
  """What the worker has prepared for its children; `apply` runs in each child."""

  landlock_fd: int = -1  # ruleset fd, -1 when Landlock is unavailable
  seccomp_bpf: bytes | None = None  # compiled filter (compile_seccomp), None when unavailable
  base_vm_bytes: int = 0  # worker's own address-space size, measured once after warm-up

  def apply(self, limits: Limits) -> None:
    """Applies every available layer to the calling process; raises OSError if one fails."""
    # RLIMIT_CPU is set by the child once it knows the call's deadline (child.serve).
    for res, value in (
      (resource.RLIMIT_AS, self.base_vm_bytes + limits.memory_bytes),
      (resource.RLIMIT_FSIZE, 0),
      (resource.RLIMIT_NOFILE, limits.open_files),
      (resource.RLIMIT_NPROC, 0),
      (resource.RLIMIT_CORE, 0),
      (resource.RLIMIT_MEMLOCK, 0),
    ):
      resource.setrlimit(res, (value, value))
    if not drop_capabilities():
      raise OSError(ctypes.get_errno(), "capset failed")
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if self.landlock_fd >= 0:
      if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, self.landlock_fd, ctypes.c_uint32(0)) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
      os.close(self.landlock_fd)
    if self.seccomp_bpf is not None:
      _load_bpf(self.seccomp_bpf, os.getpid())


def vm_size_bytes() -> int:
  """This process's current virtual memory size (VmSize)."""
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith("VmSize:"):
        return int(line.split()[1]) * 1024
  return 0
