"""One option source: serve's flags, variables, TOML keys and README table all come from
Settings' fields; flags win over variables, variables over the file."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rtdecode.cli import apply_env_defaults, build_parser, serve_settings
from rtdecode.config import Settings, settings_options, settings_table_markdown

REPO = Path(__file__).resolve().parents[1]


def serve_args(argv, environ=None):
    parser = build_parser()
    apply_env_defaults(parser, {} if environ is None else environ)
    return parser.parse_args(["serve", *argv])


def serve_parser():
    parser = build_parser()
    apply_env_defaults(parser, {})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_every_settings_field_is_a_serve_flag_with_its_type_and_one_variable():
    actions = {a.dest: a for a in serve_parser()._actions if a.option_strings}
    for o in settings_options():
        action = actions.pop(o.name)
        assert o.flag in action.option_strings
        assert o.env == "RTDECODE_" + o.name.upper()
        assert re.findall(r"\[env: (\w+)\]", action.help) == [o.env]
        if o.help:
            assert action.help.startswith(o.help)
    assert set(actions) == {"help", "config"}  # nothing hand-copied beside the fields


def test_serve_help_names_one_variable_per_option():
    out = subprocess.run([sys.executable, "-m", "rtdecode.cli", "serve", "--help"],
                         capture_output=True, text=True, check=True).stdout
    text = " ".join(out.split())  # argparse wraps lines
    variables = re.findall(r"\[env: (\w+)\]", text)
    assert sorted(variables) == sorted([o.env for o in settings_options()] + ["RTDECODE_CONFIG"])
    assert "RTDECODE_SERVE_" not in text
    assert "--no-cuda-graphs" in text and "--window-s" in text


def test_flags_win_over_variables_which_win_over_the_file(tmp_path, monkeypatch):
    toml = tmp_path / "serve.toml"
    toml.write_text('[rtdecode]\nport = 9001\nlanes = 1\nwindow_s = 0.3\ntopk = 7\n'
                    'allowed_hosts = ["a.lab"]\ncuda_graphs = false\n')
    monkeypatch.setenv("RTDECODE_PORT", "9002")
    monkeypatch.setenv("RTDECODE_WINDOW_S", "0.4")
    monkeypatch.setenv("RTDECODE_ALLOWED_HOSTS", "b.lab,c.lab")
    s = serve_settings(serve_args(["--config", str(toml), "--port", "9003", "--cuda-graphs"]))
    assert s.port == 9003  # flag over variable over file
    assert s.window_s == 0.4  # variable over file
    assert s.lanes == 1 and s.topk == 7  # file over default
    assert s.allowed_hosts == ["b.lab", "c.lab"]
    assert s.cuda_graphs is True  # --cuda-graphs over the file's false
    assert s.hop_s == Settings.model_fields["hop_s"].default
    s = serve_settings(serve_args(["--config", str(toml), "--no-cuda-graphs",
                                   "--allowed-hosts", "d.lab, e.lab", "--ch-names", "MEG1,MEG2"]))
    assert s.cuda_graphs is False and s.allowed_hosts == ["d.lab", "e.lab"]
    assert s.ch_names == ["MEG1", "MEG2"] and s.port == 9002


def test_the_config_file_comes_from_its_variable(tmp_path, monkeypatch):
    toml = tmp_path / "serve.toml"
    toml.write_text("port = 9004\n")
    monkeypatch.setenv("RTDECODE_CONFIG", str(toml))
    args = serve_args([], {"RTDECODE_CONFIG": str(toml)})
    assert serve_settings(args).port == 9004


def test_the_global_lsl_local_flag_reaches_serve():
    assert serve_settings(build_parser().parse_args(["--lsl-local", "serve"])).lsl_local is True
    assert serve_settings(serve_args(["--lsl-local"])).lsl_local is True
    assert serve_settings(serve_args([])).lsl_local is False


def test_old_serve_variables_still_work_with_a_deprecation_warning(capsys, monkeypatch):
    env = {"RTDECODE_SERVE_LANES": "1", "RTDECODE_SERVE_NO_CUDA_GRAPHS": "1",
           "RTDECODE_SERVE_ALLOWED_HOSTS": "x.lab,y.lab"}
    with pytest.warns(DeprecationWarning) as record:
        args = serve_args([], env)
    messages = [str(w.message) for w in record]
    assert any("RTDECODE_SERVE_LANES is deprecated; use RTDECODE_LANES" in m for m in messages)
    assert any("use RTDECODE_CUDA_GRAPHS" in m for m in messages)
    assert "RTDECODE_SERVE_LANES is deprecated; use RTDECODE_LANES" in capsys.readouterr().err
    s = serve_settings(args)
    assert s.lanes == 1 and s.cuda_graphs is False and s.allowed_hosts == ["x.lab", "y.lab"]
    # a flag still wins over an old variable
    with pytest.warns(DeprecationWarning):
        assert serve_settings(serve_args(["--lanes", "2"], env)).lanes == 2


def test_an_old_variable_beside_the_new_one_is_ignored_with_a_warning(monkeypatch):
    monkeypatch.setenv("RTDECODE_LANES", "2")
    env = {"RTDECODE_SERVE_LANES": "1", "RTDECODE_LANES": "2"}
    with pytest.warns(DeprecationWarning, match="ignored because RTDECODE_LANES is set"):
        args = serve_args([], env)
    assert serve_settings(args).lanes == 2


def test_bad_values_name_the_option(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        serve_args(["--image-format", "gif"])
    with pytest.raises(SystemExit), pytest.warns(DeprecationWarning):
        serve_args([], {"RTDECODE_SERVE_LANES": "two"})
    monkeypatch.setenv("RTDECODE_TOPK", "0")
    with pytest.raises(ValueError, match=r"topk=.*RTDECODE_\* variable"):
        serve_settings(serve_args([]))
    toml = tmp_path / "bad.toml"
    toml.write_text("prot = 1\n")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['prot'\]"):
        serve_settings(serve_args(["--config", str(toml)]))


def test_readme_configuration_table_is_made_from_settings():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = settings_table_markdown()
    assert table in readme, (
        "README.md's configuration table differs from Settings; replace it with the output "
        "of `python -c 'from rtdecode.config import settings_table_markdown as t; "
        "print(t(), end=\"\")'`."
    )
    assert table.count("\n") == len(Settings.model_fields) + 2
