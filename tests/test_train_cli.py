"""python -m course_lib.train: bad arguments are explained before anything loads."""

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
