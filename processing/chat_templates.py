"""The processor's multimodal chat template: a Jinja preamble that turns HF multimodal messages into plain-text ones
with image tokens, put in front of the LLM's own template. Ships as remote code next to processing_minillava.py."""

# Copied from modeling_minillava.configuration_minillava.IMAGE_POSITIONS
IMAGE_POSITIONS = ("prefix", "user_turn")

# The preamble rewrites HF multimodal messages (content = list of parts) into plain-text messages, then the LLM's own
# template renders them. user_turn: each image part becomes the image token where it sits, parts joined by newlines.
# prefix: image parts are dropped from the messages and all image tokens open the sequence.
_PREAMBLE_BEGIN = "{#- minillava preamble: image_position="
_PREAMBLE_END = "{#- minillava preamble end #}"
_PREAMBLE_BODY = (
    "{{%- set mm = namespace(messages=[], images=0) %}}\n"
    "{{%- for message in messages %}}\n"
    "{{%- if message['content'] is string or message['content'] is none %}}\n"
    "{{%- set mm.messages = mm.messages + [message] %}}\n"
    "{{%- else %}}\n"
    "{{%- set parts = namespace(texts=[]) %}}\n"
    "{{%- for part in message['content'] %}}\n"
    "{{%- if part['type'] in ('image', 'image_url') %}}\n"
    "{{%- set mm.images = mm.images + 1 %}}\n"
    "{user_turn_image}"
    "{{%- elif part['type'] == 'text' %}}\n"
    "{{%- set parts.texts = parts.texts + [part['text']] %}}\n"
    "{{%- else %}}{{{{ raise_exception('Unsupported content part type ' ~ part['type']) }}}}\n"
    "{{%- endif %}}\n"
    "{{%- endfor %}}\n"
    "{{%- set mm.messages = mm.messages + [dict(message, content=parts.texts | join('\\n'))] %}}\n"
    "{{%- endif %}}\n"
    "{{%- endfor %}}\n"
    "{{%- set messages = mm.messages %}}\n"
    "{prefix_images}"
)


def build_chat_template(llm_template: str, image_token: str, image_position: str) -> str:
    """The processor's multimodal template: the preamble for `image_position`, then the LLM's own template."""
    if image_position not in IMAGE_POSITIONS:
        raise ValueError(f"Unknown image_position={image_position!r}; allowed values: {list(IMAGE_POSITIONS)}.")
    token = image_token.replace("'", "\\'")
    llm_template = strip_preamble(llm_template)
    user_turn = image_position == "user_turn"
    preamble = (
        _PREAMBLE_BEGIN
        + image_position
        + " #}\n"
        + _PREAMBLE_BODY.format(
            user_turn_image=f"{{%- set parts.texts = parts.texts + ['{token}'] %}}\n" if user_turn else "",
            prefix_images="" if user_turn else f"{{{{- '{token}' * mm.images }}}}\n",
        )
    )
    return preamble + _PREAMBLE_END + "\n" + llm_template


def strip_preamble(template: str) -> str:
    """The LLM's own template inside a processor template (unchanged when it has no preamble)."""
    if template.startswith(_PREAMBLE_BEGIN) and _PREAMBLE_END in template:
        return template.split(_PREAMBLE_END + "\n", 1)[1]
    return template
