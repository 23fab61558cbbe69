"""The one tool (`code_image_tool`): its schema, the system prompt, and parsing of tool calls.

This is the single place that defines what the model is told about the tool and how its calls
are read back; the data pipeline and the agent loop's environment import from here.
"""

import dataclasses
import json
import re

TOOL_NAME = "code_image_tool"
MAX_CODE_CHARS = 2048
IMAGE_PLACEHOLDER = "<image>"

CODE_IMAGE_TOOL = {
  "type": "function",
  "function": {
    "name": TOOL_NAME,
    "description": (
      "Run Python code on one image of this conversation and get the resulting image back. "
      "The selected image is available as `image` (also `img`), a PIL.Image at full "
      "resolution. PIL, numpy, cv2 and math can be imported. Store the output image in "
      "`result`."
    ),
    "parameters": {
      "type": "object",
      "properties": {
        "code": {
          "type": "string",
          "description": (
            f"Python code to run (at most {MAX_CODE_CHARS} characters), "
            "e.g. to rotate, flip, crop, resize or enhance the image."
          ),
        },
        "description": {
          "type": "string",
          "description": "One sentence saying what the code does and why.",
        },
        "image_index": {
          "type": "integer",
          "description": (
            "Which image to process: 0 is the first input image; each image returned by this tool gets the next index."
          ),
        },
      },
      "required": ["code", "description", "image_index"],
    },
  },
}

SYSTEM_PROMPT = (
  "You are a careful visual assistant. Images can be upside down, rotated, mirrored, or show "
  "the detail that matters only as a small region. Reason inside <think> </think> before every "
  "step. When the image needs fixing or a closer look, write Python that transforms it and call "
  f"{TOOL_NAME} inside <tool_call> </tool_call>; the processed image comes back to you. "
  "When you are sure, give the final answer inside <answer> </answer> at the very end."
)


@dataclasses.dataclass(frozen=True)
class ToolCall:
  """A well-formed call of `code_image_tool`."""

  name: str
  code: str
  description: str
  image_index: int

  @property
  def arguments(self):
    return {"code": self.code, "description": self.description, "image_index": self.image_index}


@dataclasses.dataclass(frozen=True)
class ParseError:
  """Why a tool call could not be used; `message` is meant to be shown to the model."""

  message: str
  raw: str = ""


_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def format_tool_call(name, arguments):
  """`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, as the Qwen template writes it.

  `arguments` is a dict (dumped like Jinja's `tojson`: ensure_ascii=False, default separators) or
  an already-serialised JSON string, which is inserted as is.
  """
  if not isinstance(arguments, str):
    arguments = json.dumps(arguments, ensure_ascii=False)
  return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def tool_call_blocks(text):
  """The bodies of all complete `<tool_call>...</tool_call>` blocks in `text`, in order."""
  return [m.group(1) for m in _CALL_RE.finditer(text)]


def parse_tool_call(text, num_images=None):
  """The last tool call in `text` (or `text` itself if untagged) -> ToolCall | ParseError.

  `num_images`, when given, is how many images the trajectory has so far; `image_index` must be
  below it.
  """
  blocks = tool_call_blocks(text)
  if blocks:
    body = blocks[-1]
  elif "<tool_call>" in text:
    return ParseError("the tool call is not closed with </tool_call>", text)
  else:
    body = text
  return _parse_body(body.strip(), num_images)


def _parse_body(body, num_images):
  try:
    obj = json.loads(body)
  except json.JSONDecodeError as e:
    return ParseError(
      f"the tool call is not valid JSON ({e.msg} at line {e.lineno} column "
      f"{e.colno}); expected {{\"name\": \"{TOOL_NAME}\", \"arguments\": {{...}}}}",
      body,
    )
  if not isinstance(obj, dict):
    return ParseError(f"the tool call must be a JSON object, got {type(obj).__name__}", body)
  name = obj.get("name")
  if name != TOOL_NAME:
    return ParseError(f"unknown tool {name!r}; the only tool is {TOOL_NAME!r}", body)
  args = obj.get("arguments")
  if isinstance(args, str):  # Some models write the arguments as a JSON string.
    try:
      args = json.loads(args)
    except json.JSONDecodeError:
      return ParseError("\"arguments\" is a string that is not a JSON object", body)
  if not isinstance(args, dict):
    return ParseError("\"arguments\" must be an object with \"code\", \"description\" and \"image_index\"", body)
  code = args.get("code")
  if not isinstance(code, str) or not code.strip():
    return ParseError("argument \"code\" must be a non-empty string of Python code", body)
  if len(code) > MAX_CODE_CHARS:
    return ParseError(f"argument \"code\" has {len(code)} characters; the limit is {MAX_CODE_CHARS}", body)
  description = args.get("description", "")
  if not isinstance(description, str):
    return ParseError("argument \"description\" must be a string", body)
  index = args.get("image_index")
  if isinstance(index, bool) or not isinstance(index, int) or index < 0:
    return ParseError(f"argument \"image_index\" must be an integer >= 0, got {index!r}", body)
  if num_images is not None and index >= num_images:
    return ParseError(
      f"argument \"image_index\" is {index} but there are only {num_images} "
      f"images (valid indices 0 to {num_images - 1})",
      body,
    )
  return ToolCall(name=name, code=code, description=description, image_index=index)


def tool_response_content(image_index=None, text=None):
  """The content of a tool message: optional text, then the returned image (if any) by index.

  The `<image>` placeholder is replaced by the image's vision tokens when the turn is rendered.
  """
  parts = []
  if text:
    parts.append(text)
  if image_index is not None:
    parts.append(f"Image {image_index}: {IMAGE_PLACEHOLDER}")
  return "\n".join(parts)
