"""nanoslm.conversation's format as a Jinja chat template, for the exports: transformers' apply_chat_template
(tokenizer_config.json) and llama.cpp (the GGUF file's tokenizer.chat_template) render a conversation as the text
whose ids, with the markers read as special tokens, are conversation.render's.

The text is <|endoftext|>, then per message its role's marker, its content and <|end|>, then <|assistant|> when
asked for a reply (add_generation_prompt). Every tag trims the template's own whitespace, so the output holds only
these pieces whatever an engine's trim_blocks / lstrip_blocks settings are. An unknown role is an error, as in
conversation.check_messages, not a silently different prompt.
"""

import json

from .conversation import MARKERS, ROLES
from .gpt2 import EOT_TEXT

_ROLE_MARKERS = json.dumps({role: MARKERS[role] for role in ROLES})  # a JSON object is a Jinja dict literal

CHAT_TEMPLATE = (
    "{%- set markers = " + _ROLE_MARKERS + " -%}"
    "{{- " + json.dumps(EOT_TEXT) + " -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in markers -%}"
    "{{- raise_exception('unknown role ' + message['role'] + '; use one of " + ", ".join(ROLES) + "') -}}"
    "{%- endif -%}"
    "{{- markers[message['role']] + message['content'] + " + json.dumps(MARKERS["end"]) + " -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- " + json.dumps(MARKERS["assistant"]) + " -}}{%- endif -%}"
)
