"""The built-in orientation benchmark: held-out synthetic tasks, upright, for the eval to transform.

    items = synthetic_items(32)

Each item is a synthetic task (`codevision_jax.data.synthetic`: a word, a number, an arrow sign
or a bar chart on a card, alone or small on a busy canvas) generated upright from a seed no
training recipe uses, so the eval binary's transforms make its rotated and flipped versions. A
small card needs a crop: its `required_transforms` hold "crop" and its `target_box` the card.
"""

from __future__ import annotations

from codevision_jax.data import synthetic
from evals.suites.items import EvalItem

NAME = "synthetic"
HELD_OUT_SEED = 7_919  # Training recipes draw synthetic tasks from seeds 0-2.


def synthetic_items(
  n: int, seed: int = HELD_OUT_SEED, *, kinds=synthetic.KINDS, p_small: float = 0.5
) -> list[EvalItem]:
  """`n` upright synthetic items; item i depends only on (seed, i)."""
  items = []
  for i in range(n):
    task = synthetic.make_task(seed, i, p_small=p_small, kinds=tuple(kinds), transforms=("none",))
    items.append(
      EvalItem(
        suite=NAME,
        id=str(i),
        question=task.question,
        answers=[task.answer],
        image=task.images[0],
        source=f"synthetic(seed={seed}):{i}",
        required_transforms=list(task.required_transforms),
        target_box=list(task.target_box),
        category=task.extra["content"],
        extra={"seed": seed, "index": i},
      )
    )
  return items
