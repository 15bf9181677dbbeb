"""The chat pair's tokenizer: byte-level BPE trained with Qwen2's own pipeline, ChatML tokens.

transformers builds ``Qwen2Tokenizer`` for any ``model_type: qwen2`` directory and replaces the
saved normalizer and pre-tokenizer with Qwen2's, so the BPE must be trained with exactly those
(NFC, Qwen2's split regex, byte-level): then the ids transformers and vLLM compute are the ones
training used. Qwen2's regex splits numbers into single digits, which small models need.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from nexus_ray.tasks.mathchat import SYSTEM_PROMPT

ENDOFTEXT, IM_START, IM_END, STEP_TAG = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"

# Qwen2's pre-tokenizer split (transformers' models/qwen2/tokenization_qwen2.py).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-Math's template: its default system prompt when the conversation has none.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + SYSTEM_PROMPT.replace("\\", "\\\\") + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE over ``texts`` with the ChatML specials and the PRM's step tag."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(STEP_TAG, special=True, normalized=False)])
    return tok


def save_chat_tokenizer(
    tok: Tokenizer, directory: Path, template: str = CHAT_TEMPLATE, bos_token: str | None = None
) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``, as current
    transformers writes a Qwen2 model directory (Qwen's tokenizers have no BOS)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END, STEP_TAG],
    )
    fast.chat_template = template
    fast.save_pretrained(directory)
