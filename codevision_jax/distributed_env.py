"""The arguments of `jax.distributed.initialize`, derived from the config and the scheduler's env.

One function per source, each a pure function of an environment mapping, so that every cluster
is testable on a laptop:

  config    `distributed.num_processes` (> 1), `distributed.coordinator_address`,
            `distributed.process_id` (>= 0): set fields win over everything below.
  torchrun  `WORLD_SIZE`, `RANK`, `MASTER_ADDR`, `MASTER_PORT` (`LOCAL_RANK`, `LOCAL_WORLD_SIZE`
            for per-GPU processes): torchrun, or a Kubernetes Indexed Job that sets them itself.
  slurm     `SLURM_JOB_ID`, `SLURM_NTASKS`, `SLURM_PROCID`, `SLURM_LOCALID` and the nodelist
            (`SLURM_STEP_NODELIST`, else `SLURM_JOB_NODELIST`): the first host coordinates.
  tpu       Cloud TPU (`TPU_WORKER_HOSTNAMES` / `TPU_PROCESS_ADDRESSES` with several hosts,
            `TPU_WORKER_ID`, `MEGASCALE_COORDINATOR_ADDRESS`): `{}`, JAX detects the rest.

When one process fails (an uncaught exception, or a launcher's error message through
`report_failure`), the others stop within about a second instead of waiting in a collective or at
JAX's shutdown barrier (5 minutes): `initialize` starts a thread that watches the coordination
service's key `cvj/failed`, where the failing process writes its index and message; the others
print "process i of n failed: <message>" and exit 1, and the failing process exits without the
shutdown barrier. A process that dies without Python's exit path (SIGKILL, out of memory) is
found by the coordination service's heartbeat instead (`jax.distributed.initialize`'s
`heartbeat_timeout_seconds`, 100 s by default).

`CVJ_DISTRIBUTED=auto` hands everything to JAX's own detection (`launch.tpu` sets it: over
`gcloud ... ssh` a TPU VM has no such variables, JAX reads the VM's metadata); `CVJ_DISTRIBUTED=off`
runs one process whatever the environment says. The coordinator's port is `CVJ_COORDINATOR_PORT`
where set.

When every one of coordinator, count and id is known, the arguments carry
`cluster_detection_method="deactivate"`: JAX's own Slurm detection would otherwise restrict a
process to GPU `SLURM_LOCALID` even when it is the only process of its node (jax-ml/jax#16788).
Per-GPU processes (several tasks per node) get `local_device_ids=[local id]`, unless the
scheduler already narrowed `CUDA_VISIBLE_DEVICES` to one GPU or `JAX_LOCAL_DEVICE_IDS` is set.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import re
import sys
import threading
from typing import Any, Mapping

DEFAULT_PORT = 12345  # The coordinator's port where neither the env nor the config names one.
PORT_ENV = "CVJ_COORDINATOR_PORT"
MODE_ENV = "CVJ_DISTRIBUTED"  # "auto": jax.distributed.initialize() as is; "off": one process.


class DistributedEnvError(ValueError):
  """The config and the environment do not describe one consistent multi-process run."""


def _field(cfg: Any, name: str, default):
  """`cfg.name` for a ConfigDict, a dict or None (the config has no `distributed` section)."""
  if cfg is None:
    return default
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


def _int(env: Mapping[str, str], name: str) -> int | None:
  """The integer value of env[name], None where unset or empty."""
  raw = env.get(name, "")
  if raw.strip() == "":
    return None
  try:
    return int(raw)
  except ValueError:
    raise DistributedEnvError(f"{name}={raw!r} is not an integer; fix or unset {name}.") from None


def expand_nodelist(nodelist: str) -> list[str]:
  """The hosts of a Slurm nodelist: 'node[01-03,07],gpu5' -> node01 node02 node03 node07 gpu5.

  Zero padding is kept (`[008-010]` -> 008 009 010); several bracket groups in one name expand
  to their product (`r[1-2]n[1-2]` -> r1n1 r1n2 r2n1 r2n2)."""
  hosts: list[str] = []
  for name in _split_top_level(nodelist.strip()):
    parts = re.split(r"\[([^\]]*)\]", name)  # Literal, ranges, literal, ranges, ..., literal.
    choices = [[p] if i % 2 == 0 else _expand_ranges(p, nodelist) for i, p in enumerate(parts)]
    hosts += ["".join(c) for c in itertools.product(*choices)]
  if not hosts:
    raise DistributedEnvError(f"the Slurm nodelist {nodelist!r} names no host.")
  return hosts


def _split_top_level(nodelist: str) -> list[str]:
  """Splits at the commas outside brackets."""
  names, depth, start = [], 0, 0
  for i, ch in enumerate(nodelist):
    depth += {"[": 1, "]": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      names.append(nodelist[start:i])
      start = i + 1
  names.append(nodelist[start:])
  if depth != 0:
    raise DistributedEnvError(f"the Slurm nodelist {nodelist!r} has unbalanced brackets.")
  return [n for n in names if n]


def _expand_ranges(spec: str, nodelist: str) -> list[str]:
  """'01-03,07' -> ['01', '02', '03', '07']."""
  out = []
  for item in spec.split(","):
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
    if not m:
      raise DistributedEnvError(f"the Slurm nodelist {nodelist!r} has a bad range {item!r}.")
    lo, hi = m.group(1), m.group(2) or m.group(1)
    out += [str(k).zfill(len(lo)) for k in range(int(lo), int(hi) + 1)]
  return out


def _tasks_per_node(env: Mapping[str, str], ntasks: int) -> int:
  """The most tasks any node of the step runs: from SLURM_STEP_TASKS_PER_NODE or
  SLURM_TASKS_PER_NODE ('8(x2),4'), else SLURM_NTASKS over the number of nodes."""
  for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
    counts = re.findall(r"(\d+)(?:\(x\d+\))?", env.get(name, ""))
    if counts:
      return max(int(c) for c in counts)
  for name in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"):
    nodes = _int(env, name)
    if nodes:
      return -(-ntasks // nodes)
  return 1


def _one_visible_gpu(env: Mapping[str, str]) -> bool:
  """Whether the scheduler narrowed this process to a single GPU (e.g. `--gpus-per-task=1`), so
  that its only device is local device 0 whatever its local rank."""
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  return len(visible) == 1


def _local_device_ids(env: Mapping[str, str], local_id: int | None, per_node: int) -> list | None:
  """[local_id] for one of several processes on a node that each see all its GPUs; None (all
  visible devices) otherwise."""
  if per_node <= 1 or local_id is None or _one_visible_gpu(env) or env.get("JAX_LOCAL_DEVICE_IDS"):
    return None
  return [local_id]


def _port(env: Mapping[str, str], default: int) -> int:
  port = _int(env, PORT_ENV)
  return default if port is None else port


def from_slurm(env: Mapping[str, str]) -> dict | None:
  """Coordinator, count and id of a Slurm task (`srun`); None outside one."""
  if not ("SLURM_JOB_ID" in env and "SLURM_NTASKS" in env):
    return None
  ntasks = _int(env, "SLURM_NTASKS")
  if ntasks is None or ntasks <= 1:
    return {"num_processes": 1}
  procid = _int(env, "SLURM_PROCID")
  if procid is None:
    raise DistributedEnvError(
      f"SLURM_NTASKS={ntasks} but SLURM_PROCID is not set: start the "
      "training command with srun (inside sbatch or salloc)."
    )
  if not 0 <= procid < ntasks:
    raise DistributedEnvError(f"SLURM_PROCID={procid} is outside [0, SLURM_NTASKS={ntasks}).")
  nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
  if not nodelist:
    raise DistributedEnvError(
      f"SLURM_NTASKS={ntasks} but neither SLURM_STEP_NODELIST nor "
      "SLURM_JOB_NODELIST is set: start the training command with srun."
    )
  job = _int(env, "SLURM_JOB_ID") or 0
  # As JAX's SlurmCluster: a port in [61440, 65535] that differs between jobs sharing a node.
  port = _port(env, job % 4096 + 61440)
  args = {
    "coordinator_address": f"{expand_nodelist(nodelist)[0]}:{port}",
    "num_processes": ntasks,
    "process_id": procid,
  }
  ids = _local_device_ids(env, _int(env, "SLURM_LOCALID"), _tasks_per_node(env, ntasks))
  if ids is not None:
    args["local_device_ids"] = ids
  return args


def from_torchrun(env: Mapping[str, str]) -> dict | None:
  """Coordinator, count and id from WORLD_SIZE/RANK/MASTER_ADDR/MASTER_PORT; None where neither
  WORLD_SIZE nor RANK is set."""
  world, rank = _int(env, "WORLD_SIZE"), _int(env, "RANK")
  if world is None and rank is None:
    return None
  if world is None:
    raise DistributedEnvError(
      f"RANK={rank} is set but WORLD_SIZE is not: set WORLD_SIZE to the number of processes (or unset RANK)."
    )
  if rank is None:
    raise DistributedEnvError(
      f"WORLD_SIZE={world} is set but RANK is not: set RANK to this "
      "process's index in [0, WORLD_SIZE) (in an Indexed Job: the "
      "job-completion-index annotation)."
    )
  if world < 1 or not 0 <= rank < world:
    raise DistributedEnvError(f"RANK={rank} is outside [0, WORLD_SIZE={world}).")
  if world == 1:
    return {"num_processes": 1}
  args = {"num_processes": world, "process_id": rank}
  addr = env.get("MASTER_ADDR", "").strip()
  if addr:
    master_port = _int(env, "MASTER_PORT")
    if master_port is None:
      port = _port(env, DEFAULT_PORT)
    elif "TORCHELASTIC_RUN_ID" in env:
      port = _port(env, master_port + 1)  # torchrun's own store listens on MASTER_PORT.
    else:
      port = _port(env, master_port)
    args["coordinator_address"] = f"{addr}:{port}"
  local_rank, local_world = _int(env, "LOCAL_RANK"), _int(env, "LOCAL_WORLD_SIZE")
  if local_world is None and local_rank:
    raise DistributedEnvError(
      f"LOCAL_RANK={local_rank} is set but LOCAL_WORLD_SIZE is not: set "
      "LOCAL_WORLD_SIZE to the processes per node (or unset LOCAL_RANK "
      "for one process per node)."
    )
  if local_world is not None and local_rank is not None and not 0 <= local_rank < local_world:
    raise DistributedEnvError(f"LOCAL_RANK={local_rank} is outside [0, LOCAL_WORLD_SIZE={local_world}).")
  ids = _local_device_ids(env, local_rank, local_world or 1)
  if ids is not None:
    args["local_device_ids"] = ids
  return args


def from_tpu(env: Mapping[str, str]) -> dict | None:
  """{} on a multi-host Cloud TPU (JAX detects coordinator, count and id itself); one process
  on a single host; None where no TPU variable is set."""
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  slices = _int(env, "MEGASCALE_NUM_SLICES") or 1
  if env.get("MEGASCALE_COORDINATOR_ADDRESS") or slices > 1:
    return {}
  if hosts is not None:
    return {} if len([h for h in hosts.split(",") if h.strip()]) > 1 else {"num_processes": 1}
  if "TPU_WORKER_ID" in env:
    return {}  # The worker count is not in the env; JAX reads it (every worker does the same).
  return None


def _from_config(cfg) -> dict:
  """The fields the config sets: num_processes > 1, a coordinator address, process_id >= 0."""
  args = {}
  num = int(_field(cfg, "num_processes", 1) or 1)
  addr = str(_field(cfg, "coordinator_address", "") or "").strip()
  pid = int(_field(cfg, "process_id", -1))
  if num > 1:
    args["num_processes"] = num
  if addr:
    if not re.fullmatch(r".+:\d+", addr):
      raise DistributedEnvError(
        f"distributed.coordinator_address={addr!r} has no port: write it as host:port, e.g. node01:12345."
      )
    args["coordinator_address"] = addr
  if pid >= 0:
    args["process_id"] = pid
  return args


def derive(env: Mapping[str, str], cfg_distributed=None) -> tuple[dict | None, str]:
  """(the keyword arguments of `jax.distributed.initialize` or None for a single process, a
  description of where they came from). The config's set fields win; the first environment
  found (torchrun-style, Slurm, Cloud TPU) fills the rest. A launcher that sets RANK/WORLD_SIZE
  runs inside the scheduler's task, so its variables come before Slurm's."""
  mode = env.get(MODE_ENV, "").strip().lower()
  if mode not in ("", "auto", "off"):
    raise DistributedEnvError(
      f"{MODE_ENV}={env[MODE_ENV]!r}: use 'auto' (JAX detects the cluster), 'off' (one process) or leave it unset."
    )
  if mode == "off":
    return None, f"{MODE_ENV}=off"
  explicit = _from_config(cfg_distributed)
  found, source = ({}, f"{MODE_ENV}=auto") if mode == "auto" else _detect(env)
  if explicit:
    source = "config" + (f" + {source}" if found is not None else "")
  elif found is None:
    return None, source
  args = {**(found or {}), **explicit}
  num, pid = args.get("num_processes"), args.get("process_id")
  if num == 1 or (num is None and found is None):
    if "coordinator_address" in explicit or explicit.get("process_id", 0) > 0:
      raise DistributedEnvError(
        f"distributed.coordinator_address / distributed.process_id are set but nothing gives "
        f"the number of processes ({source}): set --config.distributed.num_processes=N."
      )
    return None, source
  if source.endswith("torchrun env") and "coordinator_address" not in args:
    raise DistributedEnvError(
      f"WORLD_SIZE={num} but MASTER_ADDR is not set: set MASTER_ADDR (and "
      "MASTER_PORT) to the host of RANK 0, or "
      "--config.distributed.coordinator_address=host:port."
    )
  if pid is not None and not 0 <= pid < num:
    raise DistributedEnvError(
      f"process_id {pid} is outside [0, num_processes={num}) ({source}): "
      "fix distributed.process_id / distributed.num_processes or the "
      "scheduler's variables."
    )
  if all(k in args for k in ("coordinator_address", "num_processes", "process_id")):
    args["cluster_detection_method"] = "deactivate"  # Nothing left to detect (module docstring).
  return args, source


def _detect(env: Mapping[str, str]) -> tuple[dict | None, str]:
  """The first cluster environment present: (its arguments, its name)."""
  for name, fn in (("torchrun env", from_torchrun), ("slurm", from_slurm), ("tpu", from_tpu)):
    found = fn(env)
    if found is not None:
      return found, name
  return None, "no cluster environment"


def initialize_args(env: Mapping[str, str], cfg_distributed=None) -> dict | None:
  """The keyword arguments for `jax.distributed.initialize`: {} lets JAX detect everything (Cloud
  TPU); None means a single process, nothing to initialize. Raises DistributedEnvError naming the
  variables when the config and the environment disagree with themselves."""
  return derive(env, cfg_distributed)[0]


def initialize(cfg_distributed=None, env: Mapping[str, str] = os.environ) -> dict | None:
  """Calls `jax.distributed.initialize` with the derived arguments (before anything else touches
  JAX's backends) and logs them and their source; returns them (None: single process)."""
  args, source = derive(env, cfg_distributed)
  if args is None:
    logging.info("jax.distributed: one process (%s)", source)
    return None
  shown = ", ".join(f"{k}={v!r}" for k, v in args.items()) or "everything auto-detected by JAX"
  logging.info("jax.distributed.initialize(%s) from %s", shown, source)
  import jax

  jax.distributed.initialize(**args)
  logging.info(
    "jax.distributed: process %d of %d, %d local and %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  watch_failures()
  return args


# ---- one process fails: all stop ------------------------------------------------------------------

FAILURE_KEY = "cvj/failed"
ACK_LINGER_S = 1.0  # How long the failed coordinator stays after the others read its failure.
_failure = {"reported": False, "origin": False, "exit_code": 1, "watching": False}
_stop_watching = threading.Event()


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel

  return distributed.global_state.client


def report_failure(message: str, exit_code: int = 1) -> None:
  """Tells the other processes that this one failed with `message` (they print it and stop), and
  makes this process exit without waiting at JAX's shutdown barrier. No-op with one process."""
  client = _client()
  if client is None or _failure["reported"]:
    return
  import jax  # pylint: disable=import-outside-toplevel

  _failure.update(reported=True, origin=True, exit_code=exit_code or 1)
  try:
    client.key_value_set(
      FAILURE_KEY, json.dumps({"process": jax.process_index(), "message": str(message).strip()[-4000:]})
    )
  except Exception:  # noqa: BLE001 - another process's failure is there already: theirs is told.
    _failure["origin"] = False


def _failure_message() -> dict | None:
  try:
    return json.loads(_client().key_value_try_get(FAILURE_KEY))
  except Exception:  # noqa: BLE001 - not set (NOT_FOUND), or the service is gone.
    return None


def _another_failed(me: int) -> dict | None:
  failed = _failure_message()
  return failed if failed is not None and failed.get("process") != me else None


def _say_another_failed(failed: dict, me: int, count: int) -> None:
  sys.stdout.flush()
  sys.stderr.write(
    f"\nprocess {failed['process']} of {count} failed: {failed['message']}\n"
    f"stopping process {me} as well (a failed process stops the run)\n"
  )
  sys.stderr.flush()
  # Said first: the failed process, when it hosts the coordination service, exits once this is
  # set, and the service's end makes JAX abort this process (its error poller) at any moment.
  try:
    _client().key_value_set(f"{FAILURE_KEY}_seen/{me}", "1")
  except Exception:  # noqa: BLE001 - the service is gone: nobody waits.
    pass


def _watch(me: int, count: int, poll_s: float) -> None:
  while not _stop_watching.wait(poll_s):
    failed = None if _failure["reported"] else _another_failed(me)
    if failed is not None:
      _say_another_failed(failed, me, count)
      os._exit(1)  # pylint: disable=protected-access


def _excepthook(previous, me: int, count: int):
  def hook(exc_type, exc, tb):
    failed = _another_failed(me)  # This error may follow from it (a collective's peer gone).
    previous(exc_type, exc, tb)
    if failed is not None:
      _failure["reported"] = True
      _say_another_failed(failed, me, count)
    else:
      report_failure(f"{exc_type.__name__}: {exc}")

  return hook


def _at_exit(me: int, count: int, wait_s: float) -> None:
  _stop_watching.set()
  if _failure["reported"]:  # Skip JAX's shutdown barrier: the others will not come to it.
    sys.stdout.flush()
    sys.stderr.flush()
    if me == 0 and _failure["origin"]:  # The coordination service lives here: stay until the
      # others have read the failure.
      import time  # pylint: disable=import-outside-toplevel

      deadline = time.monotonic() + wait_s
      for p in range(1, count):
        left_ms = int(max(deadline - time.monotonic(), 0) * 1000)
        try:
          _client().blocking_key_value_get(f"{FAILURE_KEY}_seen/{p}", max(left_ms, 1))
        except Exception:  # noqa: BLE001 - not in time, or gone: exit anyway.
          pass
      # A process that has read the failure exits right after; the service's end would otherwise
      # make JAX abort it first (on a loaded machine it sometimes did).
      time.sleep(min(ACK_LINGER_S, max(deadline - time.monotonic(), 0)))
    os._exit(_failure["exit_code"])  # pylint: disable=protected-access


def watch_failures(poll_s: float = 0.5) -> None:
  """Once per process, after `jax.distributed.initialize`: uncaught exceptions are reported to
  the other processes, and theirs stop this one (module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel

  if _client() is None or _failure["watching"]:
    return
  _failure["watching"] = True
  me, count = jax.process_index(), jax.process_count()
  sys.excepthook = _excepthook(sys.excepthook, me, count)
  atexit.register(_at_exit, me, count, 10 * poll_s)  # Before JAX's own (registered earlier).
  threading.Thread(target=_watch, args=(me, count, poll_s), name="cvj-failure-watch", daemon=True).start()


def barrier(name: str) -> None:
  """Returns once every process has reached the barrier `name` (at once with one process): e.g.
  after process 0 wrote a file the others read."""
  import jax  # pylint: disable=import-outside-toplevel

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    multihost_utils.sync_global_devices(name)
