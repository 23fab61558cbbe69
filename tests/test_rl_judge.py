"""The LLM judge against a local OpenAI-compatible endpoint: verdicts, the cache, bounded
concurrency, retries, and a clear failure when the endpoint refuses connections."""

import asyncio
import socket

import pytest
from aiohttp import web

from codevision_jax.rl.judge import Judge, JudgeUnavailable


class FakeEndpoint:
  """Says yes when the candidate contains the reference (case-insensitive); the first
  `fail_first` requests get a 503; records the peak number of requests in flight."""

  def __init__(self, fail_first=0, reply=None):
    self.fail_first, self.reply = fail_first, reply
    self.requests = self.in_flight = self.peak = 0

  async def handle(self, request):
    self.requests += 1
    if self.requests <= self.fail_first:
      return web.json_response({"error": "busy"}, status=503)
    self.in_flight += 1
    self.peak = max(self.peak, self.in_flight)
    try:
      body = await request.json()
      await asyncio.sleep(0.02)
      prompt = body["messages"][-1]["content"]
      ref = prompt.split("Reference answer: ")[1].split("\n")[0]
      cand = prompt.split("Candidate answer: ")[1].split("\n")[0]
      text = self.reply or ("Yes." if ref.lower() in cand.lower() else "no")
      return web.json_response({"choices": [{"message": {"role": "assistant", "content": text}}]})
    finally:
      self.in_flight -= 1


async def serve(endpoint):
  app = web.Application()
  app.router.add_post("/v1/chat/completions", endpoint.handle)
  runner = web.AppRunner(app)
  await runner.setup()
  site = web.TCPSite(runner, "127.0.0.1", 0)
  await site.start()
  port = site._server.sockets[0].getsockname()[1]  # pylint: disable=protected-access
  return runner, f"http://127.0.0.1:{port}/v1"


def test_verdicts_cache_and_concurrency():
  async def go():
    endpoint = FakeEndpoint(fail_first=1)
    runner, url = await serve(endpoint)
    try:
      async with Judge(url, "judge-model", max_concurrency=3, backoff_s=0.01) as judge:
        preds = [f"it says PENCIL {i}" for i in range(8)] + ["a lemon"]
        got = await asyncio.gather(*[judge.verdict("What word?", "pencil", p) for p in preds])
        again = await judge.verdict("What word?", "pencil", "a lemon")
      return got, again, judge.stats, endpoint
    finally:
      await runner.cleanup()

  got, again, stats, endpoint = asyncio.run(go())
  assert got == [True] * 8 + [False] and again is False
  assert stats.verdicts == 9 and stats.cache_hits == 1 and stats.failures == 0
  assert endpoint.requests == 10  # one 503, retried
  assert endpoint.peak <= 3


def test_refused_connections_and_unreadable_replies_raise():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # Closed when the block ends: nothing listens there.

  async def refused():
    async with Judge(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff_s=0.01) as judge:
      with pytest.raises(JudgeUnavailable, match="no verdict after 2 attempts"):
        await judge.verdict("q", "a", "b")
      return judge.stats

  stats = asyncio.run(refused())
  assert stats.requests == 2 and stats.failures == 1

  async def rambling():
    runner, url = await serve(FakeEndpoint(reply="It depends on the lighting."))
    try:
      async with Judge(url, "m") as judge:
        with pytest.raises(JudgeUnavailable, match="not yes or no"):
          await judge.verdict("q", "a", "b")
    finally:
      await runner.cleanup()

  asyncio.run(rambling())
