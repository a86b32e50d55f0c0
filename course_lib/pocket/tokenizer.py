"""The pocket model's tokenizer: a small byte-level BPE that splits every digit.

Choice, measured on the pocket corpus (see ``python -m course_lib.pocket.tokenizer``):
a character-level vocabulary needs about 2.5x more tokens per problem than a 512-entry
BPE, and a tiny model's cost is per token, so BPE trains ~2.5x more problems per
second. Digits are always split one per token (as in Llama 3 / Qwen2.5), so the model
sees numbers digit by digit and can learn column arithmetic; byte-level fallback means
any text (unicode, emoji) encodes without an unknown token.

It is a real Hugging Face ``PreTrainedTokenizerFast`` with a chat template, so the
pocket model and a GPU model such as Qwen2.5 take prompts the same way:
``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|begin|>",
    "eos_token": "<|end|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# One message per block: "<|role|>\n{content}\n"; an assistant turn ends with <|end|>
# instead, which is also what generation stops on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train the byte-level, digit-splitting BPE on ``texts`` and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),  # "147" -> "1", "4", "7"
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()) + ROLE_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a trained ``tokenizers.Tokenizer``."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, additional_special_tokens=ROLE_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation appends on the right, so pad on the left
    fast.model_max_length = 512
    return fast
