"""python -m launch.export --workdir=DIR --out=DIR [--step=N] [--dtype=bfloat16] [--source=HF_DIR] [--merge]

Turns a training run's checkpoint (launch.sft or launch.rl; the newest unless --step) into an HF
checkpoint directory that transformers loads with `from_pretrained` (and `AutoProcessor` with
its processor files). Runs on a CPU-only host and streams one tensor at a time; the output
directory appears only when complete. See codevision_jax/runtime/export.py.

A LoRA run (model.lora.rank > 0) is written as a PEFT adapter directory (adapter_config.json,
adapter_model.safetensors) for `peft.PeftModel.from_pretrained(<its model.path>, DIR)`, or with
--merge as whole HF weights with the adapters merged in (docs/lora.md).
"""

import logging

from absl import flags

from launch import errors

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (with checkpoints/).")
_OUT = flags.DEFINE_string("out", None, "The HF directory to write.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint step (default: the newest).")
_DTYPE = flags.DEFINE_enum(
  "dtype", None, ["float32", "bfloat16", "float16"], "dtype of the written weights (default: as trained)."
)
_SOURCE = flags.DEFINE_string(
  "source",
  None,
  "An HF checkpoint directory whose tokenizer and processor files to copy (default: the run's own tokenizer).",
)
_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "Bytes per safetensors file.")
_MERGE = flags.DEFINE_bool(
  "merge", False, "A LoRA run: write whole HF weights with the adapters merged in, instead of a PEFT adapter directory."
)
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  from codevision_jax.runtime import export

  if export.is_lora_run(_WORKDIR.value, _STEP.value) and not _MERGE.value:
    out = export.export_adapter(_WORKDIR.value, _OUT.value, step=_STEP.value, dtype=_DTYPE.value)
    print(
      f"exported the LoRA adapters to {out}\nload them with:\n"
      f"  peft.PeftModel.from_pretrained(<the HF base model>, {out!r})\n"
      "(or pass --merge for whole HF weights with the adapters merged in)"
    )
    return
  out = export.export_run(
    _WORKDIR.value, _OUT.value, step=_STEP.value, dtype=_DTYPE.value, source=_SOURCE.value, max_shard_size=_SHARD.value
  )
  print(
    f"exported to {out}\nload it with:\n"
    f"  transformers.AutoModelForImageTextToText.from_pretrained({out!r})\n"
    f"  codevision_jax.load_hf({out!r})"
  )


if __name__ == "__main__":
  errors.run(main)
