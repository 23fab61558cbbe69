"""python -m launch.demo --config=configs/tiny.py [--workdir=DIR]   (what `make demo` runs)

The main job on the embedded default, on CPU, in a few minutes:
1. supervised fine-tuning of the tiny Qwen2.5-VL on synthetic orientation-and-crop trajectories
   (the same code path as `launch.sft`: Grain pipeline, sharded jitted step, Orbax checkpoints,
   TensorBoard summaries in the workdir);
2. export of the trained model as an HF checkpoint with `cvj.save_hf`, loaded back with
   `cvj.load_hf`;
3. greedy answers (`cvj.generate`) to a few held-out synthetic questions, next to the expert's.
A toy model trained for a minute learns the format (think, call the tool) long before the content.
"""

import logging
import os
import tempfile
import time

import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

flags.DEFINE_bool("orbax_logs", False, "Show the INFO log lines of Orbax (checkpoint "
                  "internals) and of JAX's backend probing.")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, summaries, the export (default: a temporary directory).")


def trained_model(cfg, workdir, result):
  """The tiny model with the trained parameters in place, its tokenizer and image settings."""
  from codevision_jax.train import optimizer, run_setup
  tokenizer, model, settings = run_setup.model_parts(
      cfg, workdir, run_setup.make_mesh(cfg.mesh), run_setup.mesh_rules(cfg.mesh))
  graphdef, params, frozen, rest = nnx.split(
      model, optimizer.trainable_filter(cfg.train.freeze_vision_tower, cfg.train.freeze_merger),
      nnx.Param, ...)
  nnx.replace_by_pure_dict(params, result["state"]["params"])
  nnx.replace_by_pure_dict(frozen, result["frozen"])
  return nnx.merge(graphdef, params, frozen, rest), tokenizer, settings


def ask(model, tokenizer, settings, cfg, conversation):
  """Greedy first assistant turn for the prompt of a synthetic conversation."""
  import codevision_jax as cvj
  from codevision_jax.data.records import load_image
  from codevision_jax.processing import chat
  from codevision_jax.processing import image as image_lib

  first_assistant = next(i for i, m in enumerate(conversation.messages) if m["role"] == "assistant")
  prompt = [m for m in conversation.messages[:first_assistant]
            if not (cfg.data.synthetic_short and m["role"] == "system")]
  n_images = sum(m["content"].count("<image>") for m in prompt)
  images = [load_image(src) for src in conversation.images[:n_images]]
  pixel_values, grid = settings.preprocess(images)
  tokens = chat.tokenize_conversation(
      tokenizer, prompt, image_token_counts=image_lib.num_image_tokens(grid, settings.merge_size),
      add_generation_prompt=True)
  im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  out, _ = cvj.generate(model, tokens.input_ids[None], pixel_values, grid,
                        max_new_tokens=cfg.demo.max_new_tokens, stop_token_ids=(im_end,),
                        pad_token_id=tokenizer.pad_token_id or 0)
  out = np.asarray(out[0]).tolist()
  if im_end in out:
    out = out[:out.index(im_end)]
  return prompt[-1]["content"], tokenizer.decode(out)


def main(argv):
  del argv
  import codevision_jax as cvj
  from codevision_jax.data import synthetic
  from codevision_jax.train import loop

  cfg = _CONFIG.value
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="cvj-demo-")
  logging.getLogger().setLevel(logging.INFO)
  from codevision_jax.train import run_setup
  run_setup.quiet_orbax(flags.FLAGS.orbax_logs)
  t0 = time.perf_counter()
  print(f"== 1. SFT: tiny {cfg.model.preset} on {cfg.data.synthetic_size} synthetic trajectories, "
        f"{cfg.train.steps} steps (workdir {workdir})", flush=True)
  result = loop.train(cfg, workdir)
  losses = [h["loss"] for h in result["history"]]
  if losses:
    k = max(1, len(losses) // 6)
    print(f"   loss: first {np.mean(losses[:k]):.3f} -> last {np.mean(losses[-k:]):.3f} "
          f"(means of {k} steps); TensorBoard: {os.path.join(workdir, 'tensorboard')}")

  model, tokenizer, settings = trained_model(cfg, workdir, result)
  export = cvj.save_hf(model, os.path.join(workdir, "hf_export"), source_dir=os.path.join(workdir, "tokenizer"))
  model = cvj.load_hf(export, dtype="float32")
  print(f"== 2. exported the trained model to {export} ({', '.join(sorted(os.listdir(export)))}) "
        "and loaded it back with cvj.load_hf")

  print(f"== 3. greedy answers to {cfg.demo.num_questions} held-out questions")
  for conv in synthetic.generate(cfg.demo.num_questions, seed=cfg.demo.question_seed):
    question, answer = ask(model, tokenizer, settings, cfg, conv)
    print(f"-- question: {question.replace('<image>', '[image] ').strip()}")
    print(f"   required: {conv.required_transforms}, ground truth: {conv.ground_truth!r}")
    print(f"   model:    {answer.strip()!r}")
  print(f"done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
  app.run(main)
