"""Every subcommand flag is also an RTDECODE_<COMMAND>_<FLAG> variable (one helper);
serve's options have the one variable Settings reads (tests/test_config.py)."""

from __future__ import annotations

import argparse

import pytest

from rtdecode.cli import apply_env_defaults, build_parser, env_name, flag_for, main


def parse(argv, environ):
    parser = build_parser()
    apply_env_defaults(parser, environ)
    return parser.parse_args(argv)


def test_every_subcommand_flag_has_a_variable_in_its_help():
    parser = build_parser()
    apply_env_defaults(parser, {})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                name = getattr(action, "env_var", None) or env_name(command, action.dest)
                assert action.help.count("[env: ") == 1, action.help
                assert f"[env: {name}]" in action.help


def test_variables_set_flags_and_flags_win():
    env = {"RTDECODE_REPLAY_SPEED": "2.5", "RTDECODE_REPLAY_LOOP": "yes",
           "RTDECODE_RECORD_NAME": "meg", "RTDECODE_RECORD_OUT": "x.fif"}
    args = parse(["replay", "f.fif"], env)
    assert args.speed == 2.5 and args.loop is True and args.chunk_ms == 10.0
    assert parse(["replay", "f.fif", "--speed", "4"], env).speed == 4.0
    args = parse(["record"], env)  # required flags given by their variables
    assert args.name == "meg" and str(args.out) == "x.fif"
    assert parse(["simulate", "--out", "d"], {"RTDECODE_SIMULATE_SIZE": "tiny"}).size == "tiny"


@pytest.mark.parametrize(
    "env, says",
    [
        ({"RTDECODE_REPLAY_SPEED": "fast"}, "RTDECODE_REPLAY_SPEED='fast'"),
        ({"RTDECODE_REPLAY_LOOP": "maybe"}, "not a boolean"),
        ({"RTDECODE_SIMULATE_SIZE": "huge"}, "is not one of"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_variable(env, says, capsys):
    with pytest.raises(SystemExit) as info:
        parse(["replay", "f.fif"], env)
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_library_parameter_errors_name_the_flag(tmp_path, capsys):
    """A ParameterError names the library parameter; the command line names its flag."""
    missing = str(tmp_path / "missing_raw.fif")  # arguments are checked before the file
    cases = [
        (["replay", missing, "--speed", "0"], "--speed must be a positive number, got 0.0"),
        (["replay", missing, "--chunk-ms", "-1"], "--chunk-ms must be a positive number of ms"),
        (
            ["record", "--name", "x", "--out", str(tmp_path / "a.fif"), "--duration", "0"],
            "--duration must be a positive number of seconds",
        ),
    ]
    for argv, says in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"rtdecode {argv[0]}: error: {says}" in err, err
    parser = build_parser()
    assert flag_for(parser, "evaluate-online", "speed") == "--speed"
    assert flag_for(parser, "train-decoder", "max_steps") == "--max-steps"
    assert flag_for(parser, "replay", "max_duration_s") == "max_duration_s"  # no flag
