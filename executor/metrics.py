"""Prometheus text-format metrics for the executor (no client library needed)."""

from __future__ import annotations

import bisect
import collections
from typing import Callable

# Upper bounds of the call-latency histogram, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
  """Counters and a latency histogram; gauges are read from callbacks at scrape time."""

  def __init__(self):
    self.calls = 0
    self.ok = 0
    self.errors: collections.Counter[str] = collections.Counter()  # by error type
    self.timeouts = 0
    self.rejected = 0  # 429s
    self.bad_requests = 0  # 4xx other than 429
    self.refused: collections.Counter[tuple[int, str]] = collections.Counter()  # (status, type)
    self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
    self.latency_sum = 0.0
    self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

  def observe(self, seconds: float, error_type: str | None) -> None:
    self.calls += 1
    if error_type is None:
      self.ok += 1
    else:
      self.errors[error_type] += 1
      if error_type == "TimeoutError":
        self.timeouts += 1
    self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    self.latency_sum += seconds

  def refuse(self, status: int, kind: str) -> None:
    """An error answer (4xx or 5xx) other than a code error."""
    self.refused[(status, kind)] += 1
    if status == 429:
      self.rejected += 1
    elif 400 <= status < 500:
      self.bad_requests += 1

  def gauge(self, name: str, help_text: str, fn: Callable[[], float]) -> None:
    self.gauges[name] = (help_text, fn)

  def render(self) -> str:
    lines = [
      "# HELP executor_calls_total Code executions answered (ok or with a code error).",
      "# TYPE executor_calls_total counter",
      f"executor_calls_total {self.calls}",
      "# HELP executor_calls_ok_total Code executions that succeeded.",
      "# TYPE executor_calls_ok_total counter",
      f"executor_calls_ok_total {self.ok}",
      "# HELP executor_errors_total Code executions that failed, by error type.",
      "# TYPE executor_errors_total counter",
    ]
    for kind, n in sorted(self.errors.items()):
      label = kind.replace("\\", "\\\\").replace('"', '\\"')
      lines.append(f'executor_errors_total{{type="{label}"}} {n}')
    lines += [
      "# HELP executor_timeouts_total Code executions stopped at their deadline.",
      "# TYPE executor_timeouts_total counter",
      f"executor_timeouts_total {self.timeouts}",
      "# HELP executor_rejected_total Requests refused with 429 because the queue was full.",
      "# TYPE executor_rejected_total counter",
      f"executor_rejected_total {self.rejected}",
      "# HELP executor_bad_requests_total Requests refused as malformed (4xx other than 429).",
      "# TYPE executor_bad_requests_total counter",
      f"executor_bad_requests_total {self.bad_requests}",
      "# HELP executor_refused_total Error answers (4xx, 5xx) by HTTP status and error type.",
      "# TYPE executor_refused_total counter",
    ]
    for (status, kind), n in sorted(self.refused.items()):
      label = kind.replace("\\", "\\\\").replace('"', '\\"')
      lines.append(f'executor_refused_total{{status="{status}",type="{label}"}} {n}')
    lines += [
      "# HELP executor_call_duration_seconds Time to answer a code execution.",
      "# TYPE executor_call_duration_seconds histogram",
    ]
    cumulative = 0
    for bound, n in zip(LATENCY_BUCKETS, self.bucket_counts):
      cumulative += n
      lines.append(f'executor_call_duration_seconds_bucket{{le="{bound}"}} {cumulative}')
    lines.append(f'executor_call_duration_seconds_bucket{{le="+Inf"}} {self.calls}')
    lines.append(f"executor_call_duration_seconds_sum {self.latency_sum:.6f}")
    lines.append(f"executor_call_duration_seconds_count {self.calls}")
    for name, (help_text, fn) in self.gauges.items():
      lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {fn():g}"]
    return "\n".join(lines) + "\n"
