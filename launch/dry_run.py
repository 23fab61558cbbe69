"""The `--dry_run` flags of launch.sft and launch.rl: build the run abstractly, print the memory
each device holds in each phase, and stop (exit 1 when it does not fit).

    python -m launch.rl --config=configs/qwen2_5_vl_7b_rl.py --config.model.preset=qwen2_5_vl_7b \
        --dry_run --dry_run_devices=8            # 8 GPUs of 141 GB, checked on a laptop

`--dry_run_devices=N` fakes N CPU devices for the mesh (the target's count); the platform the plan
is for is then `--dry_run_platform` (default gpu: its attention backend and memory), and the device
memory `--device_memory_gb` (default: what the devices report, else an H200's 141 GB).
"""

from absl import flags

_DRY_RUN = flags.DEFINE_bool(
  "dry_run",
  False,
  "Build the run abstractly (no weights, no data), print the bytes per device "
  "of every part in every phase against the device memory, and exit: 0 when it fits, 1 when not.",
)
_DEVICES = flags.DEFINE_integer(
  "dry_run_devices",
  0,
  "With --dry_run: fake this many CPU devices for the mesh (the target's device count); 0: the present devices.",
)
_PLATFORM = flags.DEFINE_enum(
  "dry_run_platform",
  None,
  ["gpu", "tpu", "cpu"],
  "With --dry_run: the target platform (its "
  "attention backend under model.attention_backend=auto); default: gpu with --dry_run_devices, "
  "else the present devices'.",
)
_MEMORY = flags.DEFINE_float(
  "device_memory_gb",
  0.0,
  "With --dry_run: memory per device in GB (1e9 bytes); 0: what the devices report, else 141 (an H200).",
)


def requested() -> bool:
  return _DRY_RUN.value


def prepare_devices() -> None:
  """Fakes `--dry_run_devices` CPU devices; call before anything asks JAX for its devices."""
  if _DRY_RUN.value and _DEVICES.value:
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", _DEVICES.value)


def run(kinds) -> int:
  """Prints the plans of `kinds` ((kind, config) pairs); returns the exit status."""
  from codevision_jax.runtime import dry_run, run_setup

  run_setup.quiet_orbax()
  platform = _PLATFORM.value or ("gpu" if _DEVICES.value else None)
  try:
    dry_run.run_dry(kinds, platform=platform, device_memory=_MEMORY.value * dry_run.GB)
  except dry_run.DoesNotFit as e:
    print(f"== dry run: {e}", flush=True)
    return 1
  print("== dry run: fits; nothing was written", flush=True)
  return 0
