"""ChartQAPro (charts, infographics, dashboards; conversational rows asked at their last turn).

Published as the ahmed-masry/ChartQAPro `.parquet`: Question and Answer (lists; several turns for
"Conversational", whose last answer is scored), Question Type, Year, Paragraph, image (bytes)
(vis-nlp/ChartQAPro).
"""

from __future__ import annotations

import functools
import os

from evals.suites import fields, rows
from evals.suites.images import image_value
from evals.suites.items import EvalItem

NAME = "chartqapro"
EXPECTED = "the ahmed-masry/ChartQAPro test .parquet (columns Question, Answer, Question Type, image)"


def _question(questions: list[str], answers: list[str], paragraph: str = "") -> str:
  """The text asked: the last question, after the paragraph and the earlier turns (conversational
  rows) when there are any."""
  parts = [f"Context: {paragraph}"] if paragraph else []
  turns = [f"Q: {q}\nA: {a}" for q, a in zip(questions[:-1], answers[:-1])]
  if turns:
    parts.append("Earlier questions about this chart and their answers:\n" + "\n".join(turns))
  if not parts:
    return questions[-1]
  return "\n\n".join(parts + [f"Question: {questions[-1]}"])


def _item(raw, row: int, *, path: str) -> EvalItem:
  questions = fields.text_list(raw.get("Question"), "Question", "question")
  answers = fields.text_list(raw.get("Answer"), "Answer", "ground truth")
  image = image_value(raw.get("image"), "image", os.path.dirname(path))
  paragraph = "" if fields.missing(raw.get("Paragraph")) else str(raw["Paragraph"]).strip()
  qtype = fields.category(raw, "Question Type")
  return EvalItem(
    suite=NAME,
    id=fields.item_id(raw, "id", row),
    question=_question(questions, answers, paragraph),
    answers=[answers[-1]],  # The official scorer scores the last answer only.
    image=image,
    source=f"{path}:{row}",
    category=qtype,
    extra={
      "question_type": qtype,
      "questions": questions,
      "answers": answers,
      "year_flags": raw.get("Year"),
      "paragraph": paragraph,
    },
  )


def read(path: str, limit: int = 0):
  """ChartQAPro (charts, infographics, dashboards; conversational rows asked at their last turn)."""
  file = rows.resolve_file(NAME, path, (".parquet",), ("*.parquet",), EXPECTED)
  raws = rows.parquet_rows(file, ("Question", "Answer", "image"), EXPECTED)
  return rows.read(NAME, file, raws, functools.partial(_item, path=file), limit, EXPECTED)
