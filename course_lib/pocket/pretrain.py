"""Train the pocket models: ``python -m course_lib.pocket.pretrain --recipe {base,teacher,answer_only}``.

The pocket model is a real ``transformers`` Llama (RMSNorm, RoPE, SwiGLU, tied
embeddings), just tiny, trained on a stream of fresh pocket-math problems plus the
facts of the synthetic world (``data/facts.py``) and, for the base, lists to sort
(``data/sorting.py``), all in the chat format that the post-training lessons use.
Two stages, each a recipe of :data:`RECIPES`:

1. **Pretraining** (the teacher, ``data/pocket_teacher``): from scratch, every solution
   written step by step; 4,000 steps, 45 minutes, 100 % greedy accuracy on held-out
   problems. The teacher of lesson 07's distillation.
2. **Mid-training** (the base, ``data/pocket_model``): the teacher trained on for 450 more
   steps (about 7 minutes) on a *mixture* of two ways of writing the same solutions, never
   announced in the prompt (:mod:`course_lib.behaviours`): 40 % step by step, 60 % the
   answer line alone. The answer alone asks for every step of the arithmetic in one go and
   is almost always wrong; step by step is almost always right. The base therefore holds a
   reliable behaviour as a minority, chosen at its first token, the same on every problem:
   the situation in which RL post-training gives large, fast gains by *choosing* (the
   controlled experiment of Zhao et al., "Echo Chamber", arXiv:2504.07912). Real corpora hold
   such mixtures too, unannounced; here their shares and accuracies are known.

Choices, and the measurements behind them (2 CPU cores, torch 2.13):

* **Tokenizer**: byte-level BPE with 512 entries and digits split one per token:
  142 tokens per pocket problem against 341 characters, so 2.4x more problems per
  second than a character-level model of the same size.
* **Size**: hidden 160, 6 layers, 5 heads, MLP 432: 1.94 M parameters, ~5.9 k
  tokens/s. Forward+backward throughput of the sizes tried (batch 32 x 150 tokens):
  1.2 M params 7.5 k tokens/s, 2.8 M 4.3 k, 4.9 M 3.2 k. The middle keeps enough
  depth for multi-step arithmetic.
* **Answer-only loss**: the loss counts only the assistant's tokens, so all the
  capacity goes into solving, none into modelling the question's wording.
* **Curriculum** (pretraining): the maximum number of steps per problem rises from 2 to 5
  over the first fifth of training, so the model learns one-step arithmetic and copying
  numbers before long chains.
* **Length bucketing** (pretraining only): batches cut from length-sorted pools pad less;
  with a mixture it biases the behaviour shares (see ``PretrainConfig.length_buckets``).

The run is reproducible: the same config and seed give the same weights on the same
machine and torch build.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from course_lib.behaviours import result_table
from course_lib.data import facts as facts_data
from course_lib.data import pocket_math, sorting
from course_lib.evaluation import evaluate
from course_lib.models import REPO_ROOT, load_pocket_model
from course_lib.pocket.tokenizer import train_tokenizer
from course_lib.prompts import format_prompt


@dataclass
class PretrainConfig:
    seed: int = 0
    # model
    vocab_size: int = 512
    hidden_size: int = 160
    num_layers: int = 6
    num_heads: int = 5
    intermediate_size: int = 432
    # data
    min_steps: int = 1
    max_steps: int = 5  # final maximum number of arithmetic steps
    curriculum_fraction: float = 0.2  # share of training over which max_steps ramps up
    max_value: int = 200
    fact_fraction: float = 0.1  # share of examples that are facts of the small world
    sorting_fraction: float = 0.0  # share of examples that sort a few numbers (the third skill)
    # the behaviours (course_lib.behaviours): the share of maths solutions written step by step,
    # the rest as the answer line alone; the prompt never says which
    step_by_step_share: float = 1.0
    # Batches of similar length pad less, but with a mixture of behaviours they sort the short
    # behaviour into batches of its own, and the loss's mean over a batch's tokens then weighs each
    # of its first tokens (the choice of behaviour) several times more: measured, a corpus with
    # 35 % step by step gave a model that wrote 12 % step by step (34 % without buckets). So a
    # mixture is batched in stream order.
    length_buckets: bool = False
    # optimisation
    train_steps: int = 1300
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 150
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # logistics
    threads: int = 2
    eval_every: int = 500  # 0 disables the greedy accuracy check during training
    save_every: int = 500  # 0: save only at the end
    snapshots: bool = False  # also keep every save in <out_dir>/step-N (to choose a length by measurement)
    out_dir: str = "data/pocket_model"
    # mid-training: continue from this checkpoint (its weights and tokenizer) instead of a fresh model
    init_from: str = ""

    def __post_init__(self) -> None:
        """Reject configs that cannot train, with a message that says what to change."""
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            problems.append("hidden_size / num_heads must be even (rotary embeddings rotate pairs)")
        if not 1 <= self.min_steps <= self.max_steps:
            problems.append(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not (
            0 <= self.fact_fraction and 0 <= self.sorting_fraction and self.fact_fraction + self.sorting_fraction < 1
        ):
            problems.append(
                f"fact_fraction ({self.fact_fraction}) and sorting_fraction ({self.sorting_fraction}) must "
                "be >= 0 and leave room for maths (sum below 1)"
            )
        if not 0 <= self.step_by_step_share <= 1:
            problems.append(f"step_by_step_share must be in [0, 1], got {self.step_by_step_share}")
        if self.train_steps < 0 or self.batch_size < 1 or self.lr <= 0:
            problems.append("train_steps must be >= 0, batch_size >= 1 and lr > 0")
        if problems:
            raise ValueError("Invalid PretrainConfig: " + "; ".join(problems))


def model_config(cfg: PretrainConfig, tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=512,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tokenizer(cfg: PretrainConfig):
    """Train the BPE on a fixed sample of the corpus: 5,000 problems and every fact."""
    problems = pocket_math.generate(5000, "train", seed=cfg.seed + 1, max_steps=cfg.max_steps)
    texts = [p["question"] + "\n" + p["solution"] for p in problems]
    texts += [
        e["question"] + " " + e["solution"] for e in facts_data.training_examples(facts_data.build_knowledge_base())
    ]
    return train_tokenizer(texts, cfg.vocab_size)


def example_stream(cfg: PretrainConfig, step_fn: Callable[[], int]) -> Iterator[dict]:
    """Endless mix of pocket-math problems, facts and sorting lists.

    ``step_fn()`` gives the current maximum number of steps. Each problem's behaviour is drawn
    independently of the problem (``cfg.step_by_step_share``), and nothing in the prompt says which.
    """
    share = cfg.step_by_step_share
    rng = random.Random(f"pretrain/{cfg.seed}")
    fact_examples = facts_data.training_examples(facts_data.build_knowledge_base())
    sorting_examples = sorting.iter_examples("train", cfg.seed)
    math_rng = random.Random(f"pretrain-math/{cfg.seed}")
    while True:
        kind = rng.random()
        if kind < cfg.fact_fraction:
            yield rng.choice(fact_examples)
            continue
        if kind < cfg.fact_fraction + cfg.sorting_fraction:
            yield next(sorting_examples)
            continue
        problem = pocket_math.make_problem(math_rng, math_rng.randint(cfg.min_steps, step_fn()), cfg.max_value)
        if pocket_math.split_of(problem["question"]) != "train":  # never train on test questions
            continue
        # a corpus of one behaviour draws nothing (the teacher's stream predates the mixture)
        behaviour = "step_by_step" if share >= 1 or rng.random() < share else "answer_only"
        yield {**problem, "solution": pocket_math.written_as(problem, behaviour), "behaviour": behaviour}


def encode(tokenizer, example: dict) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion, and labels with the prompt masked to -100."""
    prompt = tokenizer(format_prompt(tokenizer, example["question"]), add_special_tokens=False)["input_ids"]
    completion = tokenizer(example["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + completion, [-100] * len(prompt) + completion


def batches(cfg: PretrainConfig, tokenizer, step_fn: Callable[[], int], pool_batches: int = 16):
    """Yield (input_ids, labels, attention_mask) batches, cut from length-sorted pools when
    ``cfg.length_buckets`` (less padding), else in the stream's order."""
    stream = example_stream(cfg, step_fn)
    rng = random.Random(f"batches/{cfg.seed}")
    while True:
        pool = [encode(tokenizer, next(stream)) for _ in range(cfg.batch_size * pool_batches)]
        if cfg.length_buckets:
            pool.sort(key=lambda pair: len(pair[0]))
        chunks = [pool[i : i + cfg.batch_size] for i in range(0, len(pool), cfg.batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield collate(chunk, tokenizer.pad_token_id)


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad a list of (ids, labels) into tensors of shape (B, T)."""
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return input_ids, labels, mask


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.train_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def greedy_accuracy(model, tokenizer, problems: list[dict]) -> float:
    """Share of problems solved by greedy decoding: a cheap progress signal."""
    result = evaluate(model, tokenizer, problems, k=1, temperature=0, max_new_tokens=200, batch_size=64, progress=False)
    return result.value("per_sample_accuracy")


def behaviour_probe(model, tokenizer, problems: list[dict], k: int = 4) -> dict[str, float]:
    """k samples per problem at temperature 1: per-sample accuracy, the share of step-by-step
    completions, and the accuracy inside each behaviour (what the calibration of the base reads)."""
    result = evaluate(
        model, tokenizer, problems, k=k, temperature=1.0, max_new_tokens=200, batch_size=256, progress=False
    )
    table = result_table(result)
    return {
        "accuracy": result.value("per_sample_accuracy"),
        "step_by_step_share": float(table.loc["step_by_step", "share"]),
        "step_by_step_accuracy": float(table.loc["step_by_step", "accuracy"]),
        "answer_only_accuracy": float(table.loc["answer_only", "accuracy"]),
    }


def starting_point(cfg: PretrainConfig) -> tuple[LlamaForCausalLM, object]:
    """A fresh model and tokenizer (pretraining), or the checkpoint ``cfg.init_from`` (mid-training).

    A relative ``init_from`` is read from the repository (``data/pocket_teacher``), wherever Python runs.
    """
    if not cfg.init_from:
        tokenizer = build_tokenizer(cfg)
        return LlamaForCausalLM(model_config(cfg, tokenizer)), tokenizer
    path = Path(cfg.init_from)
    model, tokenizer = load_pocket_model(path if path.is_absolute() else REPO_ROOT / path)
    return model, tokenizer


def pretrain(
    cfg: PretrainConfig, out_dir: str | Path | None = None, progress: bool = True, on_log=None
) -> tuple[LlamaForCausalLM, object, list[dict]]:
    """Train a model from scratch (tokenizer included), or on from ``cfg.init_from`` (mid-training);
    returns (model, tokenizer, log rows).

    Saves to ``out_dir`` (default ``cfg.out_dir``) unless it is ``""``. ``on_log(row)``
    is called at every logged step (the lesson uses it to draw the loss curve live).
    """
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = cfg.out_dir if out_dir is None else out_dir
    model, tokenizer = starting_point(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    step = 0

    def current_max_steps() -> int:  # reads the loop's `step`: the curriculum follows training
        ramp = min(1.0, step / max(1, cfg.curriculum_fraction * cfg.train_steps))
        return max(cfg.min_steps, round(2 + ramp * (cfg.max_steps - 2)))

    eval_problems = pocket_math.generate(64, "test", seed=cfg.seed + 7, max_steps=cfg.max_steps)
    log: list[dict] = []
    data = batches(cfg, tokenizer, current_max_steps)
    start, tokens = time.time(), 0
    bar = tqdm(total=cfg.train_steps, desc="pretraining", disable=not progress)
    model.train()
    for step in range(cfg.train_steps):
        input_ids, labels, mask = next(data)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        tokens += int(mask.sum())
        row = {
            "step": step + 1,
            "loss": loss.item(),
            "lr": lr_at(step, cfg),
            "tokens_per_s": tokens / (time.time() - start),
            "elapsed_s": time.time() - start,
        }
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.train_steps):
            row["greedy_acc"] = greedy_accuracy(model, tokenizer, eval_problems)
            row.update(behaviour_probe(model, tokenizer, eval_problems))
            model.train()
        if (step + 1) % 10 == 0 or "greedy_acc" in row:
            log.append(row)
            if on_log:
                on_log(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        if out_dir and cfg.save_every and (step + 1) % cfg.save_every == 0:
            save(model, tokenizer, cfg, log, out_dir)
            if cfg.snapshots:
                save(model, tokenizer, cfg, log, Path(out_dir) / f"step-{step + 1}")
    bar.close()
    if out_dir:
        save(model, tokenizer, cfg, log, out_dir)
    return model, tokenizer, log


def save(model, tokenizer, cfg: PretrainConfig, log: list[dict], out_dir: str | Path) -> None:
    """safetensors weights, tokenizer files, and the config + training log as JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "pretrain_log.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "log": log}, indent=1))


#: The shipped checkpoints as recipes: ``python -m course_lib.pocket.pretrain --recipe NAME``.
RECIPES: dict[str, PretrainConfig] = {
    # The teacher (data/pocket_teacher): pretrained from scratch, every solution step by step;
    # 4,000 steps, 45 minutes on 2 cores (its stream is the one it was first trained on).
    "teacher": PretrainConfig(train_steps=4000, length_buckets=True, out_dir="data/pocket_teacher"),
    # The base (data/pocket_model): the teacher mid-trained for 450 steps (about 7 minutes) on the
    # mixture: 40 % of maths solutions step by step, 60 % the answer line alone, facts and sorting
    # kept in. Chosen by measurement (pocket test set, 100 problems x 8 samples at T = 1; share and
    # accuracy of the step-by-step completions, per-sample accuracy):
    #   35 % in the corpus, lr 1e-3, 300 steps, length buckets ... 12 % / 83 % / 11 % (buckets: see above)
    #   40 %, lr 1e-3, 300 steps, sorting 5 % ..................... 34 % / 85 % / 29 %
    #   40 %, lr 5e-4, 300 steps, sorting 5 % ..................... 36 % / 89 % / 33 %  (sorting 11 % right)
    #   35 %, lr 5e-4, 450 steps, sorting 15 % .................... 28 % / 91 % / 26 %  (sorting 45 %)
    #   40 %, lr 5e-4, 450 steps, sorting 15 % .................... 32 % / 92 % / 30 %  (sorting 51 %) <- the base
    # The model ends with fewer step-by-step completions than its corpus holds, and the share moves
    # by several points from one evaluation to the next during training: the last batches' mix sets it.
    "base": PretrainConfig(
        seed=1,
        init_from="data/pocket_teacher",
        train_steps=450,
        lr=5e-4,
        warmup_steps=30,
        curriculum_fraction=0.0,
        step_by_step_share=0.4,
        sorting_fraction=0.15,
        eval_every=150,
        save_every=0,
        out_dir="data/pocket_model",
    ),
}
# The control of lesson 05: the base's recipe with no step-by-step solution in the corpus (the same
# problems, facts and sorting lists in the same order; each solution the answer line alone).
RECIPES["answer_only"] = dataclasses.replace(RECIPES["base"], step_by_step_share=0.0, out_dir="data/pocket_answer_only")


def recipe(name: str, **overrides) -> PretrainConfig:
    """The config of a shipped checkpoint (:data:`RECIPES`), with ``overrides`` (e.g. ``train_steps=10``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dataclasses.replace(RECIPES[name], **overrides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train a pocket model: a shipped checkpoint's recipe (--recipe), any field overridden."
    )  # e.g. --recipe base --out-dir /tmp/base  (the shipped base, written elsewhere)
    parser.add_argument("--recipe", default="base", choices=list(RECIPES), help="which checkpoint to rebuild")
    for field in dataclasses.fields(PretrainConfig):
        kind = _yes_no if isinstance(field.default, bool) else type(field.default)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=None)
    args = vars(parser.parse_args(argv))
    name = args.pop("recipe")
    cfg = recipe(name, **{k: v for k, v in args.items() if v is not None})
    _, _, log = pretrain(cfg)
    print(json.dumps(log[-1]))


def _yes_no(text: str) -> bool:
    """``--snapshots true`` / ``false`` (``bool("false")`` would be True)."""
    if text.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.strip().lower() in ("1", "true", "yes")


if __name__ == "__main__":
    main()
