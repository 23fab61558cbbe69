"""Write records in the formats the readers take (docs/data.md has an example of each):

* `write_sft_jsonl`: LLaMA-Factory-style ShareGPT JSONL, images saved beside it as PNG. Read back
  by `readers.read_sft_records`, usable by LLaMA-Factory's loader with role/content tags (tool
  results under role "tool"). Structured tool calls are written inline in the assistant text
  exactly as the chat template renders them, so nothing changes.
* `write_rl_parquet`: verl's RL parquet (`prompt`, `images` as PNG bytes, `data_source`,
  `reward_model`, `extra_info`), the prompts of the conversations with their ground truth and
  reward metadata. Read back by `readers.read_rl_records`.
"""

import json
import os

from codevision_jax.data import records as records_lib
from codevision_jax.processing import code_tool

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _inline_message(m):
  calls = [
    code_tool.format_tool_call(c.get("function", c)["name"], c.get("function", c).get("arguments", {}))
    for c in m.get("tool_calls") or []
  ]
  content = m.get("content") or ""
  if calls:
    content = "\n".join(([content] if content else []) + calls)
  return {"role": m["role"], "content": content}


def _png(source) -> bytes:
  """`source` (PNG or other image bytes, a path) as PNG bytes: PNG bytes as they are."""
  if isinstance(source, (bytes, bytearray)) and bytes(source[:8]) == _PNG_MAGIC:
    return bytes(source)
  return records_lib.png_bytes(records_lib.load_image(source))


def _save_image(source, path):
  with open(path, "wb") as f:
    f.write(_png(source))


def record_to_json(conv, image_paths):
  """The JSON object for one conversation, given the (relative) paths of its saved images."""
  out = {"messages": [_inline_message(m) for m in conv.messages], "images": list(image_paths)}
  if conv.tools:
    out["tools"] = json.dumps(conv.tools, ensure_ascii=False)
  for key in ("ground_truth", "required_transforms", "target_box", "question", "answer", "data_source"):
    value = getattr(conv, key)
    if value is not None:
      out[key] = value
  if conv.extra:
    out["extra_info"] = conv.extra
  return out


def write_sft_jsonl(records, path):
  """Writes conversations to `path` (.jsonl) and their images to `<stem>_images/` beside it.

  Returns the number of records written.
  """
  path = os.path.abspath(path)
  stem = os.path.splitext(os.path.basename(path))[0]
  image_dir = os.path.join(os.path.dirname(path), f"{stem}_images")
  os.makedirs(image_dir, exist_ok=True)
  count = 0
  with open(path, "w", encoding="utf-8") as f:
    for i, conv in enumerate(records):
      rel_paths = []
      for k, source in enumerate(conv.images):
        rel = os.path.join(f"{stem}_images", f"{i:06d}_{k}.png")
        _save_image(source, os.path.join(os.path.dirname(path), rel))
        rel_paths.append(rel)
      f.write(json.dumps(record_to_json(conv, rel_paths), ensure_ascii=False) + "\n")
      count += 1
  return count


def prompt_messages(conv):
  """The messages before the first assistant turn."""
  out = []
  for m in conv.messages:
    if m["role"] == "assistant":
      break
    out.append({"role": m["role"], "content": m.get("content") or ""})
  return out


def write_rl_parquet(records, path):
  """Writes the records' prompts as verl RL parquet rows (images as PNG bytes, only those of the
  prompt). Returns the number of rows written."""
  import pyarrow as pa  # Deferred: only Parquet writers need it.
  import pyarrow.parquet as pq

  rows = []
  for conv in records:
    prompt = prompt_messages(conv)
    n_images = sum(m["content"].count(code_tool.IMAGE_PLACEHOLDER) for m in prompt)
    extra = {k: v for k, v in conv.extra.items() if isinstance(v, (str, int, float))}
    extra.update(
      question=conv.question or "",
      answer=conv.answer or "",
      required_transforms=list(conv.required_transforms or []),
      gt_bbox=[float(v) for v in conv.target_box] if conv.target_box else [],
    )
    rows.append(
      {
        "prompt": prompt,
        "images": [{"bytes": _png(src), "path": None} for src in conv.images[:n_images]],
        "data_source": conv.data_source or "",
        "reward_model": {"ground_truth": conv.ground_truth, "style": "rule"},
        "extra_info": extra,
      }
    )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), path)
  return len(rows)
