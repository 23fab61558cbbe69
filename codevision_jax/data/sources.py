"""A random-access source of conversations (the Grain `RandomAccessDataSource` protocol)."""

from codevision_jax.data import readers


class ConversationSource:
  """Conversations read from one or more data files; `grain.MapDataset.source(...)` takes it."""

  def __init__(self, conversations):
    self._items = list(conversations)

  @classmethod
  def from_files(cls, paths, kind="sft", skip_bad=False, stats=None):
    """Reads every file (`kind` "sft" requires an assistant turn, "rl" does not).

    `stats`, if a dict, receives per-file counts under each path.
    """
    if kind not in ("sft", "rl"):
      raise ValueError(f"kind must be 'sft' or 'rl', got {kind!r}")
    paths = [paths] if isinstance(paths, str) else list(paths)
    items = []
    for path in paths:
      file_stats = {}
      records = readers.read_records(path, skip_bad=skip_bad, require_assistant=kind == "sft", stats=file_stats)
      if not records:
        skipped = file_stats.get("skipped", 0)
        raise ValueError(
          f"0 records in {path}"
          + (f" ({skipped} skipped as bad: {file_stats.get('skip_reasons')})" if skipped else ": the file is empty")
        )
      items += records
      if stats is not None:
        stats[path] = file_stats
    return cls(items)

  def __len__(self):
    return len(self._items)

  def __getitem__(self, index):
    return self._items[index]

  def __repr__(self):
    return f"ConversationSource({len(self._items)} conversations)"
