import pytest

from blockem_trl import cli


def test_input_error_one_line(capsys):
    assert cli.main(["demo", "--set", "num_train=abc"]) == 2
    err = capsys.readouterr().err
    assert "blockem demo: error: DemoConfig.num_train must be an integer, got 'abc'" in err
    assert "Traceback" not in err


def test_debug_level_shows_traceback():
    with pytest.raises(ValueError, match="num_train"):
        cli.main(["--log-level", "DEBUG", "demo", "--set", "num_train=abc"])


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("blockem_trl.demo.cli.run_from_args", interrupted)
    assert cli.main(["demo"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_bad_log_level_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--log-level", "LOUD", "demo"])
    assert "invalid --log-level 'LOUD'" in capsys.readouterr().err


def test_push_arm_needs_repo_before_run(capsys):
    assert cli.main(["demo", "--push-arm", "finance/plain"]) == 2
    assert "--push-repo-id" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["demo", "--threads", "0"],
    ["eval", "--threads", "0"],
    ["build-latents", "--misaligned", "x", "--output-dir", "y", "--threads", "-1"],
])
def test_thread_count_checked(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "give an integer >= 1" in capsys.readouterr().err


def test_positive_int_parses():
    assert cli.positive_int("3") == 3
