"""A policy for benchmarks: the tiny model's sampling, with the turns' ends teacher-forced into
tool calls and an answer (a random model calls no tools by itself).

Each turn the model samples `think` tokens (stop tokens and `<tool_call>` banned), then the turn's
end is forced: a `code_image_tool` call (rotate, crop or mirror; on image 0, then on the latest
tool output) for the first `tool_turns` turns, an answer after that.
"""

import json

import numpy as np

from codevision_jax.sampling import environment
from codevision_jax.sampling.policy import ModelPolicy

CODES = (
  "result = image.rotate(90, expand=True)",
  "result = image.crop((0, 0, image.width // 2, image.height // 2))",
  "from PIL import ImageOps\nresult = ImageOps.mirror(image)",
)


def call_text(turn: int) -> str:
  args = {"code": CODES[turn % len(CODES)], "description": "look closer", "image_index": turn}
  return "</think>\n<tool_call>\n" + json.dumps({"name": "code_image_tool", "arguments": args}) + "\n</tool_call>"


class ShapedPolicy(ModelPolicy):
  """Samples `think` tokens per turn, then teacher-forces the turn's end (see the docstring)."""

  def __init__(self, tokenizer, model, *, think: int, tool_turns: int, **kwargs):
    super().__init__(model, stop_ids=[], **kwargs)
    self.banned_ids += environment.stop_ids(tokenizer) + [tokenizer.convert_tokens_to_ids("<tool_call>")]
    ends = [call_text(t) for t in range(tool_turns)] + ["</think>\n<answer>42</answer><|im_end|>"]
    self.ends = [list(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in ends]
    self.think = think
    self.left = {}
    self.turn = {}

  def start_many(self, items):  # `start` and the agent loop's batched starts both come here.
    super().start_many(items)
    for slot, *_ in items:
      self.left[slot], self.turn[slot] = self.think, 0

  def decode(self, slots, budgets):
    out = {}
    sample = [(s, min(b, self.left[s])) for s, b in zip(slots, budgets) if self.left[s] > 0]
    if sample:
      out = super().decode([s for s, _ in sample], [b for _, b in sample])
      for s, _ in sample:
        self.left[s] -= len(out[s][0])
    for s in slots:
      if self.left[s] == 0:  # The turn's sampled part is done: force its end.
        end = self.ends[min(self.turn[s], len(self.ends) - 1)]
        self.engine.append(s, end)
        tokens, logprobs = out.get(s, (np.zeros(0, np.int32), np.zeros(0, np.float32)))
        out[s] = (np.concatenate([tokens, end]), np.concatenate([logprobs, np.zeros(len(end))]))
        self.left[s], self.turn[s] = self.think, self.turn[s] + 1
    return out
