"""The two sides of the multi-process tests: `spawn` (the test) starts one script per process on
this machine and waits for them; `join` (first thing in each script, before JAX is imported)
gives the process 8 / N simulated CPU devices and joins the others through
`jax.distributed.initialize` (coordinator on 127.0.0.1, gloo collectives).

    # tests/multiprocess_x.py
    import multiprocess_util
    PROCESS_ID, NUM_PROCESSES, ARGS = multiprocess_util.join(sys.argv)
    import jax  # now sees 8 / NUM_PROCESSES devices of its own, all 8 together

    # tests/test_x.py
    logs = spawn("multiprocess_x.py", 2, [workdir, out])
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICES = 8  # simulated CPU devices over all processes


def xla_flags(devices: int) -> str:
  """The XLA flags of every test process, in-process or spawned (so that they compile the same
  programs and share the session's compilation cache): `devices` simulated CPU devices, and each
  program's machine code generated in one piece. XLA's CPU compiler otherwise splits a program
  to generate its parts on parallel threads, which two pytest workers on two cores cannot use."""
  return f"--xla_force_host_platform_device_count={devices} --xla_cpu_parallel_codegen_split_count=1"


def join(argv: list) -> tuple[int, int, list]:
  """argv = [script, PROCESS_ID, NUM_PROCESSES, PORT, *args] -> (process id, process count, args),
  after setting up this process's devices and, with several processes, joining the others."""
  process_id, num_processes, port = int(argv[1]), int(argv[2]), argv[3]
  os.environ["XLA_FLAGS"] = xla_flags(DEVICES // num_processes)
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(HERE))  # The repository: codevision_jax, configs.
  import jax  # pylint: disable=import-outside-toplevel

  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id
    )
  return process_id, num_processes, list(argv[4:])


def spawn(script: str, processes: int, args: list, *, expect: int = 0, timeout: float = 900) -> list[str]:
  """Runs tests/`script` as `processes` processes (ids 0..n-1, one coordinator port) and waits;
  asserts each exits with `expect` (0, or -9 for a run that SIGKILLs itself) and returns their
  output."""
  from executor.local import free_port  # pylint: disable=import-outside-toplevel

  port = str(free_port())
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  procs = [
    subprocess.Popen(
      [sys.executable, os.path.join(HERE, script), str(i), str(processes), port, *map(str, args)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(processes)
  ]
  logs = [p.communicate(timeout=timeout)[0] for p in procs]
  assert [p.returncode for p in procs] == [expect] * processes, "\n".join(log[-3000:] for log in logs)
  return logs
