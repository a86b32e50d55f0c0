from course_lib.prompts import build_messages, format_prompt


def test_digits_are_split_one_per_token(pocket):
    _, tok = pocket
    pieces = tok.tokenize("He has 147+25 = <<147+25=172>>172 apples.")
    digits = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert digits and all(len(p) == 1 for p in digits)


def test_any_text_round_trips(pocket):
    _, tok = pocket
    for text in ["Mia has 23 marbles.\n#### 23", "ünïcode ٣ 😀 tab\tend", "  spaces  "]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_matches_training_format(pocket):
    _, tok = pocket
    prompt = format_prompt(tok, "What is 2+3?")
    assert prompt == "<|begin|><|user|>\nWhat is 2+3?\n<|assistant|>\n"
    full = tok.apply_chat_template(build_messages("Q") + [{"role": "assistant", "content": "A"}], tokenize=False)
    assert full.endswith("<|assistant|>\nA<|end|>")
    with_system = format_prompt(tok, "Q", system_prompt="Be brief.")
    assert with_system.startswith("<|begin|><|system|>\nBe brief.\n<|user|>")


def test_special_tokens(pocket):
    _, tok = pocket
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    assert len(tok(tok.eos_token, add_special_tokens=False)["input_ids"]) == 1
    assert len(tok) == 512
