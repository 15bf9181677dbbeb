"""A policy tokenizer's own chat template, turning a conversation into the policy's prompt.

Task format ``chat-math`` builds every prompt this way, as vLLM's and transformers' chat paths
do (``apply_chat_template`` with the generation prompt added), so a user's model sees exactly
the text it was trained on. Newer model directories keep the template in ``chat_template.jinja``,
older ones in ``tokenizer_config.json``; transformers reads both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

Message = tuple[str, str]  # (role, content)


class ChatTemplateError(ValueError):
    """The model directory has no usable chat template; the message names the directory."""


@dataclass(frozen=True)
class ChatTemplate:
    tokenizer: object
    model_dir: str

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ChatTemplate:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError(
                f"{model_dir}: the tokenizer has no chat template (neither chat_template.jinja nor "
                "tokenizer_config.json's chat_template); task format chat-math needs one"
            )
        return cls(tokenizer, str(model_dir))

    def render(self, messages: tuple[Message, ...]) -> str:
        """The prompt text: the conversation, then the assistant's turn opened."""
        turns = [{"role": role, "content": content} for role, content in messages]
        try:
            return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # noqa: BLE001 - jinja raises its own types (templates may demand alternation)
            raise ChatTemplateError(
                f"{self.model_dir}: the chat template refused the conversation: {err}"
            ) from None
