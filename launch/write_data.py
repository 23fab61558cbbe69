"""python -m launch.write_data --kind=sft --num=256 --out=/data/synthetic/sft.jsonl

Writes the built-in synthetic orientation-and-crop tasks as data files, to see (and start from) a
working file of each format (docs/data.md describes them):

* `--kind=sft`: ShareGPT JSONL with the expert tool-use trajectories, images as PNG files in
  `<stem>_images/` beside it (what `launch.sft --config.data.source=files` reads);
* `--kind=rl`: verl RL parquet with the prompts, images as PNG bytes, ground truth and reward
  metadata (what `launch.rl` and `launch.rollout` read).

`--kinds`, `--transforms` and `--p_small` choose the tasks as the configs' `data.synthetic_*`.
"""

from absl import app, flags

_KIND = flags.DEFINE_enum("kind", "sft", ["sft", "rl"], "Which format to write.")
_NUM = flags.DEFINE_integer("num", 256, "How many tasks.")
_SEED = flags.DEFINE_integer("seed", 0, "Task i depends only on (seed, i).")
_OUT = flags.DEFINE_string("out", None, "The file to write (.jsonl for sft, .parquet for rl).")
_KINDS = flags.DEFINE_list("kinds", ["word", "number", "arrow", "chart"], "Card contents.")
_TRANSFORMS = flags.DEFINE_list(
  "transforms",
  ["none", "rotate_90", "rotate_180", "rotate_270", "flip_horizontal", "flip_vertical"],
  "Transforms applied to the images.",
)
_P_SMALL = flags.DEFINE_float("p_small", 0.5, "Share of cards placed small on a large canvas.")
flags.mark_flags_as_required(["out"])


def main(argv):
  del argv
  from codevision_jax.data import synthetic, writers

  records = synthetic.generate(
    _NUM.value, seed=_SEED.value, kinds=tuple(_KINDS.value), transforms=tuple(_TRANSFORMS.value), p_small=_P_SMALL.value
  )
  if _KIND.value == "sft":
    n = writers.write_sft_jsonl(records, _OUT.value)
  else:
    n = writers.write_rl_parquet(records, _OUT.value)
  print(f"wrote {n} {_KIND.value} records to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
