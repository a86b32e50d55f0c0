"""Sampling keeps nothing of size B x T x V: peak memory with a 151,936-token vocabulary.

Each measurement runs in a fresh process: a tiny random model of Qwen2's shape (its real
vocabulary, a small hidden size, built from a config), one warm-up draw, then the measured one,
its peak taken by a thread that samples the resident set every 2 ms, against the resident set
just before it (not the process's lifetime peak ``ru_maxrss``: a higher peak earlier in the
process, e.g. while importing, hid the whole growth once in CI). The growth is compared with
the B x T x V float32 logits that ``generate(..., output_logits=True)`` keeps (as the course's sampler did before).

``MALLOC_MMAP_THRESHOLD_`` gives every large tensor its own mapping, returned to the system when
the tensor is freed, so peak RSS counts live tensors only: with glibc's default (a threshold that
rises after the first large free) freed (B, V) blocks sometimes stay in its heap, and the peak
then grows with the number of steps although nothing is kept (measured: in about half of the runs).
"""

import json
import os
import subprocess
import sys

import pytest

VOCAB = 151_936
SCRIPT = r"""
import json, os, sys, threading, time, torch
from transformers import AutoConfig, AutoModelForCausalLM
sys.path.insert(0, "tests")
from test_sampling import _Ids
from course_lib.bench import generate_samples
from course_lib.sampling import sample

how, rows, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
config = AutoConfig.for_model("qwen2", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
torch.manual_seed(0)
model, tok = AutoModelForCausalLM.from_config(config).eval(), _Ids()
prompts = [" ".join(str(5 + i + j) for j in range(20)) for i in range(rows)]
draw = (lambda t: sample(model, tok, prompts, n=1, max_new_tokens=t, batch_size=rows)) if how == "ours" else \
       (lambda t: generate_samples(model, tok, prompts, 1, 1.0, t, rows))
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def watch(peak, done):  # the resident set sampled every 2 ms while the draw runs
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.002)

draw(2)
before, peak, done = rss_mb(), [0.0], threading.Event()
watcher = threading.Thread(target=watch, args=(peak, done))
watcher.start()
out = draw(steps)
done.set()
watcher.join()
tokens = int(out.lengths.sum()) if how == "ours" else out
print(json.dumps({"growth_mb": max(peak[0], rss_mb()) - before, "tokens": tokens}))
""".replace("VOCAB", str(VOCAB))


def _growth(how: str, rows: int, steps: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, how, str(rows), str(steps)], capture_output=True, text=True, timeout=600, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _logits_mb(rows: int, steps: int) -> float:
    return rows * steps * VOCAB * 4 / 2**20  # float32 (B, T, V)


@pytest.mark.parametrize("rows", [8, 32])
def test_peak_memory_grows_with_batch_times_vocabulary_not_with_length(rows):
    steps = 192
    ours = _growth("ours", rows, steps)
    assert ours["tokens"] == rows * steps  # a random model never stops early
    keep_all = _logits_mb(rows, steps)  # 890 MB for 8 rows, 3.6 GB for 32
    assert ours["growth_mb"] < 0.05 * keep_all
    assert ours["growth_mb"] < 12 * rows * VOCAB * 4 / 2**20  # a few (B, V) tensors at a time


def test_the_measurement_sees_what_generate_keeps():
    """The same measurement on ``generate(..., output_logits=True)``: its peak grows by about B x T x V."""
    rows, steps = 8, 192
    theirs = _growth("generate", rows, steps)
    assert theirs["growth_mb"] > 0.8 * _logits_mb(rows, steps)
