"""An LLM judge for answers the rule does not match: any OpenAI-compatible chat-completions
endpoint (vLLM, SGLang, a hosted API).

    async with Judge("http://judge:8000/v1", model="Qwen/Qwen2.5-72B-Instruct") as judge:
      same = await judge.verdict(question, ground_truth, prediction)   # True / False

Calls are asynchronous with at most `max_concurrency` in flight, each with a timeout; transport
errors, timeouts, 5xx and 429 answers are retried with exponential backoff; verdicts are cached by
(question, ground truth, prediction). When the endpoint cannot give a verdict (down, refusing,
answering something other than yes or no), `verdict` raises `JudgeUnavailable`: the scorer then
keeps the rule's verdict and counts the fallback, and training goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

import aiohttp

SYSTEM = ("You check answers to questions about images. Compare the candidate answer with the "
          "reference answer and decide whether they say the same thing (same value, same choice, "
          "same meaning; wording, case and units written differently do not matter).")
QUESTION = ("Question: {question}\nReference answer: {ground_truth}\nCandidate answer: "
            "{prediction}\nDoes the candidate answer agree with the reference answer? Reply with "
            "one word: yes or no.")


class JudgeUnavailable(Exception):
  """The judge gave no verdict (unreachable, refusing, timing out, or an unreadable reply)."""


@dataclasses.dataclass
class JudgeStats:
  requests: int = 0  # HTTP requests sent (retries included)
  verdicts: int = 0  # verdicts answered by the endpoint
  cache_hits: int = 0
  failures: int = 0  # verdict() calls that raised JudgeUnavailable


class Judge:
  """An OpenAI-compatible chat-completions judge; see the module docstring."""

  def __init__(self, url: str, model: str, *, api_key: str | None = None, max_concurrency: int = 8,
               timeout_s: float = 30.0, retries: int = 2, backoff_s: float = 0.5):
    if not url:
      raise ValueError("the judge needs the endpoint's base URL, e.g. http://judge:8000/v1")
    self.endpoint = url.rstrip("/") + "/chat/completions"
    self.model = model
    self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
    self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
    self._limit = asyncio.Semaphore(max_concurrency)
    self._cache: dict[tuple[str, str, str], bool] = {}
    self._session: aiohttp.ClientSession | None = None
    self.stats = JudgeStats()

  async def __aenter__(self) -> "Judge":
    headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
    self._session = aiohttp.ClientSession(headers=headers)
    return self

  async def __aexit__(self, *exc) -> None:
    await self._session.close()
    self._session = None

  async def verdict(self, question: str, ground_truth: str, prediction: str) -> bool:
    """Whether `prediction` agrees with `ground_truth`; raises JudgeUnavailable."""
    key = (question or "", str(ground_truth), prediction)
    if key in self._cache:
      self.stats.cache_hits += 1
      return self._cache[key]
    try:
      async with self._limit:
        answer = await self._ask(*key)
    except JudgeUnavailable:
      self.stats.failures += 1
      raise
    self.stats.verdicts += 1
    self._cache[key] = answer
    return answer

  async def _ask(self, question: str, ground_truth: str, prediction: str) -> bool:
    if self._session is None:
      raise RuntimeError("use the judge as `async with Judge(...) as judge:`")
    body = {"model": self.model, "temperature": 0.0, "max_tokens": 4, "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION.format(question=question, ground_truth=ground_truth,
                                                    prediction=prediction)}]}
    problem = "no attempt"
    for attempt in range(self.retries + 1):
      if attempt:
        await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
      self.stats.requests += 1
      try:
        async with self._session.post(self.endpoint, json=body,
                                      timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
          if resp.status == 429 or resp.status >= 500:
            problem = f"HTTP {resp.status}"
            continue
          if resp.status != 200:
            raise JudgeUnavailable(f"{self.endpoint} answered HTTP {resp.status}: "
                                   f"{(await resp.text())[:200]}")
          reply = await resp.json(content_type=None)
      except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
        problem = f"{type(e).__name__}: {e}"
        continue
      try:
        text = reply["choices"][0]["message"]["content"]
      except (KeyError, IndexError, TypeError):
        raise JudgeUnavailable(f"{self.endpoint} sent no chat completion: {str(reply)[:200]}") from None
      words = (text or "").strip().lower().split()
      word = words[0].strip(".,!:;\"'") if words else ""
      if word in ("yes", "no"):
        return word == "yes"
      raise JudgeUnavailable(f"the judge answered {text!r}, not yes or no")
    raise JudgeUnavailable(f"{self.endpoint}: no verdict after {self.retries + 1} attempts "
                           f"({problem})")
