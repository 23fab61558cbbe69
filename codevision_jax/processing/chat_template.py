"""The Jinja chat templates our chat formatter reproduces, one per chat format (`template_for`).

`CHAT_TEMPLATE` (format `qwen2_vl`) is the Qwen2.5 / Hermes tool-calling template, with message content allowed to be a list of
`{"type": "text", "text": ...}` / `{"type": "image"}` parts as in the Qwen-VL templates. Each image
renders as `<|vision_start|><|image_pad|><|vision_end|>` with a single pad; the processor (or our
formatter) expands the pad to the image's token count. `build_tiny_tokenizer` stores it in the
test tokenizer so that `tokenizer.apply_chat_template` can be compared with `chat.tokenize_conversation`.
"""

CHAT_TEMPLATE = r"""{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is not none -%}
        {%- for item in content -%}
            {%- if item.type == 'image' or 'image' in item or 'image_url' in item -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif item.type == 'video' or 'video' in item -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in item -%}
                {{- item.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content) }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + render_content(messages[0].content) + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + render_content(message.content) + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + render_content(message.content) }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- render_content(message.content) }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

_CONTENT_MACRO = CHAT_TEMPLATE[: CHAT_TEMPLATE.index("{%- if tools %}")]
_TOOLS_TEXT = CHAT_TEMPLATE[
  CHAT_TEMPLATE.index('    {{- "\\n\\n# Tools') : CHAT_TEMPLATE.index(
    "{%- else %}\n    {%- if messages[0].role == 'system' %}"
  )
]

# Qwen3-VL (formats `qwen3_vl` and `qwen3_vl_nothink`): no default system line; with tools and no
# system message the system turn is the tools block alone; `@THOUGHT@` is where the Thinking
# format puts the empty thought before an assistant turn that has no <think>/</think>.
_QWEN3_VL = (
  _CONTENT_MACRO
  + r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content) + '\n\n' }}
    {%- endif %}
"""
  + _TOOLS_TEXT.replace('"\\n\\n# Tools', '"# Tools', 1)
  + r"""{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + render_content(messages[0].content) + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + render_content(message.content) + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = render_content(message.content) %}
        {{- '<|im_start|>' + message.role + '\n' }}@THOUGHT@
        {{- content }}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if content or not loop.first %}
                {{- '\n' }}
            {%- endif %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- render_content(message.content) }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
)
_EMPTY_THOUGHT = r"""
        {%- if '<think>' not in content and '</think>' not in content %}
            {{- '<think>\n\n</think>\n\n' }}
        {%- endif %}"""

QWEN3_VL_TEMPLATE = _QWEN3_VL.replace("@THOUGHT@", _EMPTY_THOUGHT)
QWEN3_VL_NOTHINK_TEMPLATE = _QWEN3_VL.replace("@THOUGHT@", "")

TEMPLATES = {"qwen2_vl": CHAT_TEMPLATE, "qwen3_vl": QWEN3_VL_TEMPLATE, "qwen3_vl_nothink": QWEN3_VL_NOTHINK_TEMPLATE}


def template_for(chat_format: str) -> str:
  """The Jinja chat template that renders exactly what `chat.render` gives in `chat_format`."""
  if chat_format not in TEMPLATES:
    raise ValueError(f"unknown chat format {chat_format!r}; expected one of {sorted(TEMPLATES)}")
  return TEMPLATES[chat_format]
