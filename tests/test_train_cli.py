"""python -m course_lib.train: bad arguments are explained before anything loads."""

import subprocess
import sys

import pytest

from course_lib.train.__main__ import free_port, main


def test_a_grpo_batch_that_does_not_hold_whole_groups_is_refused(capsys):
    assert main(["grpo", "--batch-size", "6", "--group-size", "4"]) == 2
    assert "must be a multiple of --group-size" in capsys.readouterr().err


def test_an_unknown_profile_is_refused(capsys):
    assert main(["sft", "--profile", "tpu"]) == 2
    assert "Valid profiles" in capsys.readouterr().err


def test_free_port_gives_a_usable_port():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nobody holds it
    assert 0 < port < 65536


def test_a_launched_rank_leaves_at_once_with_its_code_and_its_output_flushed():
    """A rank (WORLD_SIZE set) exits without the interpreter's teardown, where gloo threads that outlive
    destroy_process_group aborted it now and then; its buffered output must still come out."""
    code = (
        "import os; os.environ['WORLD_SIZE'] = '2'; print('saved')\n"
        "from course_lib.train.__main__ import leave; leave(3)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3 and run.stdout.strip() == "saved"


def test_a_plain_run_leaves_the_ordinary_way(monkeypatch):
    from course_lib.train.__main__ import leave, native_threads

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as exit_:
        leave(2)
    assert exit_.value.code == 2
    assert sum(native_threads().values()) >= 1  # at least this one
