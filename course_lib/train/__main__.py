"""One training entry point for every launcher: ``python -m course_lib.train {grpo,sft,orpo}``.

The same command runs on one process or many, on a CPU or on GPUs::

    python -m course_lib.train sft --deepspeed zero2                     # 1 process
    torchrun --nproc_per_node 2 -m course_lib.train sft --deepspeed zero2
    deepspeed --num_gpus 2 --module course_lib.train sft --deepspeed zero2
    accelerate launch --config_file course_lib/configs/accelerate_zero2.yaml -m course_lib.train sft

Each process builds the same TRL trainer with the course's recipe (lessons 06-08) and its
LoRA adapter (``--full``: every weight). ``grpo`` trains on fresh problems with the course's
rewards; ``sft`` on the reference solutions (pocket-math's, or GSM8K's on the GPU profile);
``orpo`` on pairs of a reference solution and the same solution with a wrong final answer.
Fixed data keeps the launch about the launcher: the sampled pools of lessons 07-08 are built
in one process, before any launch. The Hugging Face Trainer hands the model to DeepSpeed, which
splits optimizer states, gradients and (ZeRO-3) weights across the processes. On a CPU the
processes talk over gloo. Rank 0 writes ``<output-dir>/run_summary.json`` (engine, world size,
ZeRO stage, optimizer, losses) and every rank takes part in saving the model to ``<output-dir>/model``.

Facts this relies on (DeepSpeed 0.19.8, torch 2.13, CPU):

* plain ``python`` with a DeepSpeed config still needs RANK, WORLD_SIZE, MASTER_ADDR and
  MASTER_PORT (else DeepSpeed looks for MPI); :func:`single_process_env` sets them;
* the process group must exist before the model is loaded (ZeRO-3 builds it partitioned), and
  every rank must leave through a barrier and ``destroy_process_group`` or rank 1 aborts at exit;
* even then, two gloo process groups outlive ``destroy_process_group`` on every rank (4
  ``pt_gloo_runloop`` and 2 ``gloo_tcp_loop`` threads, listed in ``/proc/self/task``), held from C++:
  no Python object refers to a ProcessGroup any more (every object's attributes were scanned), and
  neither ``engine.destroy()``, clearing DeepSpeed's group globals nor dropping the trainer frees
  them. Interpreter finalisation then destroys them with their threads running, which is where a
  rank now and then died with "terminate called without an active exception" (return code -6).
  So a launched rank, its work saved and its group left, exits without that teardown
  (:func:`leave`: flush, then ``os._exit``);
* with accelerate, never ``--cpu`` or ``ACCELERATE_USE_CPU=1``: they silently drop DeepSpeed.
  On a CPU the training arguments carry ``use_cpu=True`` instead (the recipes do this);
* one thread per process: two processes on two cores with two threads each run slower.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from course_lib.config import Profile, get_profile, setup_torch
from course_lib.configs import deepspeed_config_path
from course_lib.data import train_problems
from course_lib.models import load_policy
from course_lib.train.grpo_trl import grpo_trainer, vllm_generation
from course_lib.train.orpo import orpo_trainer
from course_lib.train.recipes import grpo_recipe, lora_recipe, orpo_recipe, rs_recipe
from course_lib.train.rejection_sampling import gold_records, wrong_answer_pairs
from course_lib.train.sft import sft_trainer

METHODS = ("grpo", "sft", "orpo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("--profile", default=None, help="pocket (default) or gpu; else $COURSE_PROFILE")
    parser.add_argument(
        "--deepspeed",
        default=None,
        help="zero2, zero2_offload, zero3, zero3_offload or a JSON path (default: none; under "
        "accelerate launch the config file's DeepSpeed settings apply)",
    )
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (default 4: a smoke run)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per process per step (GRPO: prompts x G)")
    parser.add_argument("--group-size", type=int, default=4, help="GRPO: completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="GRPO: completion budget")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--full", action="store_true", help="train every weight (default: the recipe's LoRA adapter)")
    parser.add_argument("--output-dir", default=None, help="default: runs/train-<method>")
    parser.add_argument("--seed", type=int, default=0)
    # The deepspeed launcher passes --local_rank to every process (torchrun sets LOCAL_RANK instead).
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def free_port() -> int:
    """A TCP port nobody listens on, for a launcher's ``--master_port`` (port 0 does not work there:
    each rank would wait on a port of its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """Give a plain ``python`` run the environment a launcher would (rank 0 of 1, a free port)."""
    if "RANK" in os.environ:
        return
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )


def uses_deepspeed(args: argparse.Namespace) -> bool:
    """A DeepSpeed config on the command line, or one from ``accelerate launch``."""
    return args.deepspeed is not None or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def _rows(method: str, profile: Profile, tokenizer, n: int, seed: int) -> list[dict]:
    """Training rows for SFT (gold solutions) and ORPO (gold vs a corrupted answer) on ``n`` problems:
    fixed data, so that a launch test measures the launcher, not the sampler."""
    problems = train_problems(profile, n, seed=seed)
    if method == "sft":
        return gold_records(problems, tokenizer, profile.system_prompt)
    return wrong_answer_pairs(problems, tokenizer, profile.system_prompt)


def build_trainer(args: argparse.Namespace, profile: Profile, world_size: int):
    """The method's TRL trainer with the course's recipe, shrunk to ``args`` (steps, batch)."""
    out = Path(args.output_dir or f"runs/train-{args.method}")
    extra = dict(max_steps=args.steps, disable_tqdm=True, save_strategy="no", logging_steps=1)
    if args.deepspeed is not None:
        extra["deepspeed"] = str(deepspeed_config_path(args.deepspeed))
    if uses_deepspeed(args):  # Unsloth's patched model is made for one GPU, not for ZeRO's sharding
        profile = dataclasses.replace(profile, use_unsloth=False)
    lora = None if args.full else lora_recipe(profile)
    vllm = vllm_generation(profile) if args.method == "grpo" else {}  # {} on a CPU
    model, tokenizer = load_policy(profile, lora, seed=args.seed, fast_inference=bool(vllm))
    per_step = args.batch_size * world_size
    learning_rate = {"learning_rate": args.learning_rate} if args.learning_rate else {}
    if args.method == "grpo":
        settings, _ = grpo_recipe(
            profile,
            steps=args.steps,
            group_size=args.group_size,
            prompts_per_step=args.batch_size // args.group_size,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            **learning_rate,
        )
        problems = train_problems(profile, args.steps * per_step // args.group_size, seed=args.seed)
        trainer = grpo_trainer(
            profile, model, tokenizer, problems, out, settings, system_prompt=profile.system_prompt, **vllm, **extra
        )
    else:
        make_recipe, make_trainer = (rs_recipe, sft_trainer) if args.method == "sft" else (orpo_recipe, orpo_trainer)
        settings, _ = make_recipe(profile, batch_size=args.batch_size, seed=args.seed, **learning_rate)
        rows = _rows(args.method, profile, tokenizer, args.steps * per_step, args.seed)
        trainer = make_trainer(profile, model, tokenizer, rows, out, settings, progress=False, **extra)
    return trainer, out


def describe(trainer) -> dict:
    """What actually ran: the engine, world size, ZeRO stage and optimizer classes."""
    engine = getattr(trainer, "deepspeed", None) or trainer.model_wrapped
    optimizer = getattr(engine, "optimizer", None) or trainer.optimizer
    inner = getattr(optimizer, "optimizer", None)
    return {
        "engine": type(engine).__name__,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "zero_stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0,
        "optimizer": type(optimizer).__name__,
        "base_optimizer": type(inner).__name__ if inner is not None else type(optimizer).__name__,
        "device": str(trainer.args.device),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        profile = get_profile(args.profile, fast=False)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.method == "grpo" and args.batch_size % args.group_size:
        print(
            f"error: --batch-size ({args.batch_size}) must be a multiple of --group-size ({args.group_size})",
            file=sys.stderr,
        )
        return 2
    if uses_deepspeed(args):
        import deepspeed  # lazy: seconds to import, and only DeepSpeed runs need it

        single_process_env()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)  # before the model: ZeRO-3 loads it partitioned
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if profile.device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    setup_torch(profile, seed=args.seed)
    if profile.device == "cpu" and world_size > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))  # cores shared by the ranks

    trainer, out = build_trainer(args, profile, world_size)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    summary = {
        "method": args.method,
        **describe(trainer),
        "deepspeed_config": args.deepspeed or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"),
        "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
        "model_dir": str(out / "model"),
    }
    trainer.save_model(str(out / "model"))  # every rank: ZeRO-3 gathers the weights to save them
    _finish(summary, out)
    return 0


def _finish(summary: dict, out: Path) -> None:
    """Rank 0 writes the summary; every rank waits for it, then leaves the process group cleanly."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def native_threads() -> dict[str, int]:
    """This process's threads by name (``/proc/self/task/*/comm``), e.g. ``{"pt_gloo_runloop": 4}``."""
    names = [Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task")]
    return {name: names.count(name) for name in sorted(set(names))}


def leave(code: int) -> None:
    """End the process with ``code``. A rank started by a launcher (``WORLD_SIZE`` set) flushes its
    output and exits at once, without the interpreter's teardown of the gloo threads that outlive
    ``destroy_process_group`` (see the module docstring); any other run exits normally."""
    if "WORLD_SIZE" not in os.environ:
        sys.exit(code)
    lingering = {k: v for k, v in native_threads().items() if "gloo" in k}
    if lingering and os.environ.get("COURSE_DEBUG_EXIT"):
        print(f"threads still running after destroy_process_group: {lingering}", file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
