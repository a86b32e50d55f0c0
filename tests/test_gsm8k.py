import json

import pytest

from course_lib.data import gsm8k
from course_lib.data.gsm8k import GSM8KFormatError, gsm8k_stats, load_gsm8k, strip_annotations


def test_real_gsm8k_row_counts_and_fields(gsm8k_dir):
    train, test = load_gsm8k("train", gsm8k_dir), load_gsm8k("test", gsm8k_dir)
    assert (len(train), len(test)) == (7473, 1319)
    first = train[0]
    assert first["question"].startswith("Natalia sold clips")
    assert first["answer"] == "72" and first["solution"].endswith("#### 72")
    assert "<<48/2=24>>" in first["solution"]
    for r in train + test:  # every answer is a canonical number: no commas, parses
        assert "," not in r["answer"]
        float(r["answer"])


def test_annotations_can_be_removed(gsm8k_dir):
    clean = load_gsm8k("train", gsm8k_dir, annotations=False)
    assert not any("<<" in r["solution"] for r in clean)
    assert clean[0]["solution"].startswith("Natalia sold 48/2 = 24 clips in May.")
    assert strip_annotations("48/2 = <<48/2=24>>24") == "48/2 = 24"


def test_commas_removed_from_answer(tmp_path):
    (tmp_path / "test.jsonl").write_text(
        json.dumps({"question": "How much?", "answer": "It costs 1,200.\n#### 1,200"}) + "\n\n"
    )
    [record] = load_gsm8k("test", tmp_path)
    assert record["answer"] == "1200"


def test_malformed_line_names_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    (tmp_path / "train.jsonl").write_text(good + "\n" + good + "\n{not json\n")
    with pytest.raises(GSM8KFormatError, match=r"train\.jsonl, line 3: malformed JSON"):
        load_gsm8k("train", tmp_path)


def test_record_without_final_answer_is_an_error(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(GSM8KFormatError, match=r"line 1: .*####"):
        load_gsm8k("test", tmp_path)


def test_missing_key_is_an_error(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(GSM8KFormatError, match="line 1"):
        load_gsm8k("test", tmp_path)


def test_missing_file_says_how_to_provide_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="GSM8K_DIR"):
        load_gsm8k("test", tmp_path)


def test_gsm8k_dir_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "x\n#### -3"}) + "\n")
    monkeypatch.setenv("GSM8K_DIR", str(tmp_path))
    assert load_gsm8k("test")[0]["answer"] == "-3"


def test_offline_without_local_copy_explains(monkeypatch):
    monkeypatch.delenv("GSM8K_DIR", raising=False)
    monkeypatch.setattr(gsm8k, "default_data_dir", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="data_dir=.*GSM8K_DIR"):
        load_gsm8k("train")


def test_unknown_split():
    with pytest.raises(ValueError, match="train"):
        load_gsm8k("validation")


def test_stats_are_computed_from_the_data(gsm8k_dir):
    data = {s: load_gsm8k(s, gsm8k_dir) for s in ("train", "test")}
    stats = gsm8k_stats(data)
    assert stats.loc["train", "rows"] == 7473 and stats.loc["test", "rows"] == 1319
    # Independent recomputation of two columns on the test split.
    words = sum(len(r["question"].split()) for r in data["test"]) / 1319
    steps = (
        sum(
            sum(1 for line in r["solution"].split("\n") if line.strip() and not line.startswith("####"))
            for r in data["test"]
        )
        / 1319
    )
    assert stats.loc["test", "mean_question_words"] == pytest.approx(words)
    assert stats.loc["test", "mean_solution_steps"] == pytest.approx(steps)
    assert 40 < words < 60 and 2.5 < steps < 5  # GSM8K: ~46 words, 2-8 steps
