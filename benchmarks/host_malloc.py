"""A CPU run under glibc's default malloc settings against `runtime.host_malloc.TUNABLES`.

    python -m benchmarks.host_malloc [--config=configs/tiny_sft.py] [--steps=200] [--runs=2]

Runs `python -m launch.sft --config=<config> --config.train.steps=<steps>` in a child process,
alternately without and with the tunables (`--runs` times each, a fresh workdir each time; one
short run first fills a compilation cache that all of them share, so none compiles). Prints, for
each setting, the median over its runs of wall seconds, user and system CPU seconds, minor page
faults and peak resident memory (the child's own, from `os.wait4`), and the ratio of wall and of
CPU time (user + system), tuned over default. Run it on a quiet machine: on a shared one the
CPU times are the figures to read.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from codevision_jax.runtime import host_malloc

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/tiny_sft.py", "the SFT config to run")
flags.DEFINE_integer("steps", 200, "training steps per run")
flags.DEFINE_integer("runs", 2, "runs of each setting")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(env: dict, workdir: str, steps: int) -> dict:
  """One SFT run in a child process: its wall time and resource use (`os.wait4`: its own)."""
  cmd = [
    sys.executable,
    "-m",
    "launch.sft",
    f"--config={FLAGS.config}",
    f"--workdir={workdir}",
    f"--config.train.steps={steps}",
    f"--config.train.checkpoint_every={steps}",
  ]
  with tempfile.TemporaryFile("w+") as log:
    t = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code:
      log.seek(0)
      sys.exit(f"{' '.join(cmd)} failed ({code}):\n{log.read()[-3000:]}")
  return {
    "wall_s": wall,
    "user_s": usage.ru_utime,
    "sys_s": usage.ru_stime,
    "minor_faults": usage.ru_minflt,
    "max_rss_mb": usage.ru_maxrss / 1024,
  }


def main(argv):
  del argv
  tmp = tempfile.mkdtemp(prefix="cvj-malloc-bench-")
  base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  base.update(
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, "jax-cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
  )
  settings = {"default": base, "tuned": host_malloc.environ(base)}
  try:
    run(base, os.path.join(tmp, "warm"), 2)  # Fills the compilation cache.
    results = {name: [] for name in settings}
    for i in range(FLAGS.runs):
      for name, env in settings.items():
        results[name].append(run(env, os.path.join(tmp, f"{name}{i}"), FLAGS.steps))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(f"{FLAGS.config}, {FLAGS.steps} steps, median of {FLAGS.runs} runs each; tuned: {host_malloc.TUNABLES}")
  med = {}
  for name, rows in results.items():
    med[name] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    m = med[name]
    print(
      f"  {name:8s} wall {m['wall_s']:7.1f} s   user {m['user_s']:7.1f} s   sys {m['sys_s']:6.1f} s   "
      f"minor faults {m['minor_faults'] / 1e6:6.2f} M   peak RSS {m['max_rss_mb']:6.0f} MB"
    )
  d, t = med["default"], med["tuned"]
  cpu = (t["user_s"] + t["sys_s"]) / (d["user_s"] + d["sys_s"])
  print(f"summary: tuned / default: wall {t['wall_s'] / d['wall_s']:.2f}x, CPU time {cpu:.2f}x")


if __name__ == "__main__":
  app.run(main)
