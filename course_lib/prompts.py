"""One prompt format for both tracks: chat messages rendered by the tokenizer's template.

The pocket model's tokenizer and a GPU model's tokenizer (Qwen2.5, Llama 3.2) each carry
a chat template, so every lesson builds prompts the same way and only the profile
decides whether a system prompt is needed (the pocket model was trained to answer in
GSM8K's format without one; an instruct model needs to be told).
"""

from __future__ import annotations

GSM8K_SYSTEM_PROMPT = (
    "Solve the math problem step by step. "
    "Finish with a final line of the form '#### <number>' that contains only the answer."
)


def build_messages(question: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """``[{"role": "system", ...}, {"role": "user", "content": question}]``."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def format_prompt(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The prompt text a model continues: the chat template plus the assistant header."""
    return tokenizer.apply_chat_template(
        build_messages(question, system_prompt), tokenize=False, add_generation_prompt=True
    )
