"""Durations as text, for progress lines and logs; no dependency, so that any layer may use it."""

from __future__ import annotations


def hms(seconds: float) -> str:
  """`seconds` as h:mm:ss (negative: 0:00:00)."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
