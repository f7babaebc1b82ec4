"""The ``rtdecode`` command: thin subcommands over library calls.

Each subcommand parses its flags, builds a library object and calls it; heavy modules
are imported inside the handler so ``rtdecode --help`` stays fast. Every subcommand flag
is also a variable, ``RTDECODE_<COMMAND>_<FLAG>`` (:func:`apply_env_defaults`), except
the service's options: ``serve``'s flags are made from ``Settings``' fields
(:func:`add_settings_options`), each with the one variable ``Settings`` reads,
``RTDECODE_<OPTION>``; their flags default to None so that the variables and
``--config`` apply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from rtdecode.contracts import ParameterError

ENV_PREFIX = "RTDECODE"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env(name: str, default=None):
    return os.environ.get(f"{ENV_PREFIX}_{name.upper()}", default)


def env_name(command: str, dest: str) -> str:
    """The variable that sets a subcommand's flag: ``RTDECODE_<COMMAND>_<FLAG>``.

    For example ``rtdecode replay --chunk-ms`` is also ``RTDECODE_REPLAY_CHUNK_MS``
    (click's ``auto_envvar_prefix`` convention, as uvicorn uses it).
    """
    return f"{ENV_PREFIX}_{command}_{dest}".upper().replace("-", "_")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ``Settings`` field to ``parser`` (the one loop: ``rtdecode serve``).

    Each flag takes its type, choices and help from the field; booleans get ``--x`` and
    ``--no-x``, lists are comma-separated. Flags default to None, so an unset flag falls
    through to the field's variable (``RTDECODE_<OPTION>``, read by ``Settings``), the
    ``--config`` file, then the field's default. Each action records its variable as
    ``action.env_var``, which :func:`apply_env_defaults` shows in the help, and
    ``action.read_by_settings``.
    """
    from rtdecode.config import settings_options

    group = parser.add_argument_group(
        "service options", "Each is also an environment variable and a key of --config "
        "(flags win over variables, which win over the file)."
    )
    for o in settings_options():
        text = f"{o.help} (default: {o.default_text})" if o.default_text else o.help
        kwargs: dict = {"dest": o.name, "default": None, "help": text.replace("%", "%%")}
        if o.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif o.is_list:
            kwargs.update(type=_comma_list, metavar="A,B,...")
        else:
            kwargs.update(type=o.kind, choices=o.choices)
        action = group.add_argument(o.flag, **kwargs)
        action.env_var, action.read_by_settings = o.env, True


def _deprecated_names(command: str, action: argparse.Action) -> list[tuple[str, bool]]:
    """The old variables of an option with its own (``RTDECODE_SERVE_LANES``).

    Each with whether it meant the opposite boolean (``RTDECODE_SERVE_NO_CUDA_GRAPHS``).
    """
    names = [(env_name(command, action.dest), False)]
    if isinstance(action, argparse.BooleanOptionalAction):
        names.append((env_name(command, f"no_{action.dest}"), True))
    return names


def _deprecated(command: str, old: str, new: str, *, ignored: bool) -> None:
    message = (
        f"{old} is deprecated and ignored because {new} is set; unset {old}."
        if ignored else
        f"{old} is deprecated; use {new} (the old name goes in the next release)."
    )
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    print(f"rtdecode {command}: warning: {message}", file=sys.stderr)


def apply_env_defaults(parser: argparse.ArgumentParser, environ=None) -> None:
    """Make every subcommand flag also an environment variable (the one helper).

    A set variable becomes the flag's default (so the flag itself still wins); it is
    converted and checked as the flag would be, and a bad value is a usage error that
    names the variable. Each flag's help says its one variable: ``RTDECODE_<COMMAND>_<FLAG>``,
    or the one an option names itself (``action.env_var``, e.g. ``serve``'s options,
    which ``Settings`` reads). For those, the ``RTDECODE_<COMMAND>_<FLAG>`` names of
    earlier releases still work, with a DeprecationWarning naming the new variable.
    """
    environ = os.environ if environ is None else environ
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for command, sub in subparsers[0].choices.items():
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            own = getattr(action, "env_var", None)
            name = own or env_name(command, action.dest)
            action.help = f"{action.help or ''} [env: {name}]".strip()
            invert = False
            old = [] if own is None else [
                (n, inv) for n, inv in _deprecated_names(command, action) if n in environ
            ]
            for n, _ in old:
                _deprecated(command, n, own, ignored=own in environ)
            if name in environ:
                if getattr(action, "read_by_settings", False):
                    continue  # Settings reads it, in its place between flags and file
            elif old:
                name, invert = old[0]
            else:
                continue
            raw = environ[name]
            if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction
                          | argparse.BooleanOptionalAction):
                if raw.strip().lower() not in _TRUE | _FALSE:
                    parser.error(f"{name}={raw!r} is not a boolean; use 1/0, true/false or yes/no.")
                value = raw.strip().lower() in _TRUE
                value = not value if isinstance(action, argparse._StoreFalseAction) else value
                value = not value if invert else value
            else:
                try:
                    value = action.type(raw) if action.type else raw
                except (TypeError, ValueError):
                    parser.error(f"{name}={raw!r} is not a valid value for {action.option_strings[0]}.")
                if action.choices is not None and value not in action.choices:
                    choices = ", ".join(map(str, action.choices))
                    parser.error(f"{name}={raw!r} is not one of {choices}.")
            action.default = value
            action.required = False


#: Library parameters whose flag is not the parameter's name (``duration_s``: ``--duration``).
_FLAG_OF_PARAMETER = {"duration_s": "duration", "timeout_s": "timeout", "out_dir": "out"}


def flag_for(parser: argparse.ArgumentParser, command: str, parameter: str) -> str:
    """The flag of ``rtdecode COMMAND`` that sets library ``parameter`` (e.g. ``--speed``).

    A parameter with no flag of its own (a library-only option) keeps its name.
    """
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sub = subparsers[0].choices.get(command)
    dest = _FLAG_OF_PARAMETER.get(parameter, parameter)
    for action in [] if sub is None else sub._actions:
        if action.dest == dest:
            return action.option_strings[0] if action.option_strings else action.dest.upper()
    return parameter


def write_report(path: Path, report: dict) -> None:
    """Write a command's ``--json`` report, its paths relative to the repository."""
    from rtdecode._utils.paths import portable_paths

    path.write_text(json.dumps(portable_paths(report), indent=2) + "\n")


def _cmd_replay(args: argparse.Namespace) -> int:
    from rtdecode.io.replay import replay_file

    stats = replay_file(
        args.path,
        name=args.name,
        source_id=args.source_id,
        speed=args.speed,
        loop=args.loop,
        chunk_ms=args.chunk_ms,
        counter=args.counter,
        progress=not args.quiet,
        markers=args.markers,
    )
    from rtdecode._utils.progress import prepare_exit

    prepare_exit()  # the outlets are closed: end the process quickly
    return 130 if stats.stopped_by == "SIGINT" else 0  # 130: the shell's code for Ctrl-C


def _cmd_record(args: argparse.Namespace) -> int:
    from rtdecode.io.record import record_stream

    path = record_stream(
        args.name,
        args.out,
        duration_s=args.duration,
        source_id=args.source_id,
        timeout_s=args.timeout,
        progress=not args.quiet,
    )
    from rtdecode._utils.progress import prepare_exit

    prepare_exit()  # the file is written: end the process quickly
    print(path)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rtdecode.data.simulate import simulate_cohort

    simulate_cohort(args.out, seed=args.seed, n_subjects=args.subjects,
                    difficulty=args.difficulty, size=args.size)
    return 0


def _cmd_dataset(args: argparse.Namespace) -> int:
    from rtdecode.data.report import describe_dataset, format_report

    report = describe_dataset(args.dir, images_table=args.images_table)
    print(format_report(report))
    if args.json is not None:
        write_report(args.json, report)
    return 0


def _cmd_gallery(args: argparse.Namespace) -> int:
    from rtdecode.images.build import build_gallery

    report = build_gallery(args.images_dir, args.out, image_encoder=args.image_encoder,
                           encoder_path=args.image_encoder_path, table=args.table,
                           chunk_size=args.chunk_size, device=args.device,
                           progress=not args.quiet)
    print(f"{report['n_images']} images, {report['n_concepts']} concepts, "
          f"{report['n_categories']} categories ({report['layout']}); embedded "
          f"{report['n_embedded']}, reused {report['n_reused']}, skipped "
          f"{len(report['skipped'])} -> {report['gallery_csv']}, {report['embeddings']}")
    if args.json is not None:
        write_report(args.json, report)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rtdecode.training.encoder import train

    out = train(
        args.data,
        args.out,
        preset=args.preset,
        recipe=args.config,
        max_epochs=args.max_epochs,
        device=args.device,
        resume=args.resume,
        seed=args.seed,
        subjects=None if args.subjects is None else [v for v in args.subjects.split(",") if v],
    )
    print(f"Encoder checkpoint written to {out}", flush=True)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from rtdecode.training.calibrate import calibrate

    # flags left out keep the library's defaults
    defaults = {k: v for k, v in (("max_epochs", args.max_epochs),
                                  ("trunk_lr_scale", args.trunk_lr_scale)) if v is not None}
    out = calibrate(args.ckpt, args.data, args.subject, args.minutes, args.out,
                    lr=args.lr, head_lr_scale=args.head_lr_scale, device=args.device,
                    seed=args.seed, **defaults)
    print(f"Calibrated checkpoint written to {out}", flush=True)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rtdecode.training.evaluate import evaluate

    subjects = None if args.subjects is None else [v for v in args.subjects.split(",") if v]
    metrics = evaluate(args.ckpt, args.data, json_out=args.json, plots_dir=args.plots,
                       subjects=subjects)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def _cmd_evaluate_online(args: argparse.Namespace) -> int:
    from rtdecode.training.online import evaluate_online

    report = evaluate_online(
        args.ckpt, args.recording, data=args.data, subject=args.subject,
        retrieval_set=args.retrieval_set,
        gallery=args.gallery, speed=args.speed, json_out=args.json, plots_dir=args.plots,
        device=args.device, smooth_s=args.smooth_s,
    )
    best, parity = report["best"], report["parity"]
    k = 1 if report["n_candidates"] <= 5 else 5  # categories: top-1
    if best is not None:
        print(f"best lag bin {best['lag_s'] * 1e3:.0f} ms: top-{k} {100 * best[f'top{k}']:.1f} % "
              f"(chance {100 * report[f'chance_top{k}']:.1f} %), median rank "
              f"{best['median_rank']:.0f} of {report['n_candidates']}, n = {best['n']}")
    print(f"online = offline on {parity['n_windows']} windows: max relative error "
          f"{parity['max_rel_err']:.2e}, ranks equal: {parity['ranks_equal']}")
    if args.json is None:
        print(json.dumps(report, indent=2))
    return 0


def _cmd_time_resolved(args: argparse.Namespace) -> int:
    from rtdecode.training.sweeps import time_resolved

    slurm = {"partition": args.slurm_partition, "gpus": args.slurm_gpus}
    outputs = time_resolved(
        args.data, args.out, window_s=args.window_s, stride_s=args.stride_s,
        tmin_s=args.tmin_s, tmax_s=args.tmax_s, models=args.models.split(","),
        executor=args.executor, recipe=args.config, max_epochs=args.max_epochs,
        images_table=args.images_table, every=args.every, max_parallel=args.parallel,
        timeout_min=args.time_min, slurm={k: v for k, v in slurm.items() if v is not None},
    )
    print(f"time-resolved curve: {outputs.png_path}\nresults: {outputs.json_path}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from rtdecode.encoder import describe_model

    if (args.ckpt is None) == (args.preset is None):
        raise SystemExit("rtdecode info: give either a checkpoint folder or --preset NAME.")
    print(json.dumps(describe_model(ckpt_dir=args.ckpt, preset=args.preset), indent=2))
    return 0


def _cmd_train_decoder(args: argparse.Namespace) -> int:
    from rtdecode.training.decoder import train_decoder

    train_decoder(
        args.gallery,
        args.out,
        image_encoder=args.image_encoder,
        max_steps=args.max_steps,
        device=args.device,
        resume=args.resume,
        seed=args.seed,
    )
    return 0


def serve_settings(args: argparse.Namespace):
    """The ``Settings`` of a parsed ``rtdecode serve`` (flags > variables > file > defaults)."""
    from rtdecode.config import Settings

    overrides = {name: getattr(args, name) for name in Settings.model_fields}
    if args.global_lsl_local:  # `rtdecode --lsl-local serve`
        overrides["lsl_local"] = True
    return Settings.load(args.config, **overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    from rtdecode.service import serve

    return serve(serve_settings(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from rtdecode.demo import run_demo

    return run_demo(port=args.port, open_browser=not args.no_browser, duration_s=args.duration,
                    example=args.example)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``rtdecode`` argument parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog="rtdecode",
        description="Real-time decoding of visual perception from a live MEG stream.",
    )
    p.add_argument(
        "--lsl-local",
        action="store_true",
        dest="global_lsl_local",
        help="apply the loopback-only liblsl configuration (no traffic leaves 127.0.0.1) "
        "[env: RTDECODE_LSL_LOCAL]",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("replay", help="publish a recording as a live LSL stream")
    s.add_argument("path", type=Path, help="FIF, CTF .ds, EDF/BDF, BrainVision, BIDS path, or XDF file")
    s.add_argument("--name", default=None, help="stream name (default: the file's stem)")
    s.add_argument("--source-id", default=None)
    s.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    s.add_argument("--loop", action="store_true", help="start over at the end")
    s.add_argument("--chunk-ms", type=float, default=10.0, help="samples pushed per chunk")
    s.add_argument("--counter", action="store_true", help="add a sample-counter channel")
    s.add_argument(
        "--markers",
        choices=["json", "string", "none"],
        default="json",
        help="events as JSON objects, as plain image-id strings, or no marker stream",
    )
    s.add_argument("--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=_cmd_replay)

    s = sub.add_parser("record", help="write an LSL stream (and its markers) to FIF or XDF")
    s.add_argument("--name", required=True)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    s.add_argument("--source-id", default=None)
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the stream")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_record)

    s = sub.add_parser("simulate", help="write the simulated cohort (data + replay files)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4)")
    s.add_argument("--difficulty", choices=["demo", "paper"], default="demo")
    s.add_argument("--size", choices=["tiny", "small", "full"], default="full")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("dataset", help="report what a dataset holds and what it lacks")
    s.add_argument("dir", type=Path,
                   help="THINGS-MEG folder, recordings, epochs file/folder, or a dataset card (.toml)")
    s.add_argument("--images-table", type=Path, default=None, help="image numbers -> files (CSV/TSV)")
    s.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    s.set_defaults(func=_cmd_dataset)

    s = sub.add_parser("gallery", help="build a gallery: catalogue and embed a folder of images")
    s.add_argument("action", choices=["build"])
    s.add_argument("images_dir", type=Path, help="<category>/<image> subfolders, or a flat folder")
    s.add_argument("--out", required=True, type=Path, help="gallery folder to write")
    s.add_argument("--image-encoder", default=None, help="image encoder name (default: the CNN)")
    s.add_argument("--image-encoder-path", default=None, help="local weights, if it needs them")
    s.add_argument("--table", type=Path, default=None, help="CSV/TSV: file or id, concept, ...")
    s.add_argument("--chunk-size", type=int, default=64, help="images saved together")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_gallery)

    s = sub.add_parser("train", help="train the brain encoder")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--out", type=Path, default=None,
                   help="checkpoint folder (default: DATA/derivatives/rtdecode/encoder)")
    s.add_argument("--preset", default=None,
                   help="architecture preset: paper (default), demo, test, ridge or riemann "
                        "(Xdawn covariances + tangent space; category labels, one window)")
    s.add_argument("--config", type=Path, default=None, help="recipe TOML")
    s.add_argument("--max-epochs", type=int, default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--resume", action="store_true", help="continue from OUT's last state")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--subjects", default=None,
                   help="train on these subjects only, comma-separated (e.g. 01,03; default: all)")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("calibrate", help="add a new subject to an encoder from minutes of data")
    s.add_argument("ckpt", type=Path, help="a trained (multi-subject) encoder checkpoint")
    s.add_argument("--data", required=True, type=Path, help="dataset holding the subject")
    s.add_argument("--subject", required=True, help="the new subject (e.g. 04)")
    s.add_argument("--minutes", required=True, type=float,
                   help="use the first M minutes of the subject's recordings")
    s.add_argument("--out", required=True, type=Path, help="the new checkpoint folder")
    s.add_argument("--max-epochs", type=int, default=None,
                   help="passes over the calibration minutes (default: the library's, 30)")
    s.add_argument("--lr", type=float, default=None,
                   help="learning rate of the new subject layer (default: the library's "
                        "CALIBRATION_LR, 3e-3)")
    s.add_argument("--trunk-lr-scale", type=float, default=None,
                   help="fine-tune the shared trunk at this fraction of the learning rate "
                        "(default: the library's, 0.1; the result then holds the new subject "
                        "alone); 0 keeps the trunk and every known subject as they were")
    s.add_argument("--head-lr-scale", type=float, default=0.0,
                   help="fine-tune the shared heads at this fraction of the learning rate "
                        "(default 0: frozen; above 0 the result holds the new subject alone)")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_calibrate)

    s = sub.add_parser("evaluate", help="score a checkpoint (retrieval, ridge baseline)")
    s.add_argument("ckpt", type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--json", type=Path, default=None)
    s.add_argument("--plots", type=Path, default=None)
    s.add_argument("--subjects", default=None,
                   help="score these of the checkpoint's subjects only, comma-separated "
                        "(e.g. 01; default: all of them)")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser(
        "evaluate-online",
        help="replay a recording through the live path and score every window by lag",
    )
    s.add_argument("ckpt", type=Path)
    s.add_argument("--recording", required=True, type=Path,
                   help="a recording with stimulus events (e.g. a held-out session)")
    s.add_argument("--subject", default=None, help="subject to decode as")
    s.add_argument("--data", type=Path, default=None,
                   help="a dataset card (.toml): the codes, labels and images of the recording")
    s.add_argument("--retrieval-set", default="test",
                   help="'test' (default), 'all' or a folder of images")
    s.add_argument("--gallery", type=Path, default=None, help="gallery (default: the checkpoint's)")
    s.add_argument("--speed", type=float, default=4.0, help="replay pace (1 = real time)")
    s.add_argument("--smooth-s", type=float, default=0.0,
                   help="integrate consecutive windows' predictions with this time constant "
                        "(s), as serve --smooth-s does (0: off)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", type=Path, default=None)
    s.add_argument("--plots", type=Path, default=None)
    s.set_defaults(func=_cmd_evaluate_online)

    s = sub.add_parser("time-resolved", help="one model per window position (the paper's Fig. 3)")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path, help="sweep folder (a rerun resumes it)")
    s.add_argument("--window-s", type=float, default=0.1)
    s.add_argument("--stride-s", type=float, default=0.025)
    s.add_argument("--tmin-s", type=float, default=-0.2)
    s.add_argument("--tmax-s", type=float, default=1.0)
    s.add_argument("--models", default="deep,ridge", help="comma-separated: deep, ridge")
    s.add_argument("--executor", choices=["local", "slurm", "debug"], default="local")
    s.add_argument("--max-epochs", type=int, default=None, help="deep model's epochs")
    s.add_argument("--config", type=Path, default=None, help="deep model's recipe TOML")
    s.add_argument("--images-table", type=Path, default=None)
    s.add_argument("--every", type=int, default=1, help="run every K-th position (rerun to fill in)")
    s.add_argument("--parallel", type=int, default=1, help="local jobs at once")
    s.add_argument("--time-min", type=int, default=120, help="time limit per job (minutes)")
    s.add_argument("--slurm-partition", default=None)
    s.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per job")
    s.set_defaults(func=_cmd_time_resolved)

    s = sub.add_parser("info", help="JSON description of a checkpoint or preset")
    s.add_argument("ckpt", type=Path, nargs="?", default=None)
    s.add_argument("--preset", default=None)
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("train-decoder", help="train the small image decoder on a gallery")
    s.add_argument("--gallery", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--image-encoder", default=None,
                   help="image encoder name (registry; default: the ImageNet CNN)")
    s.add_argument("--max-steps", type=int, default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_train_decoder)

    s = sub.add_parser("serve", help="decode a live stream and serve the viewer")
    s.add_argument("--config", type=Path, default=None,
                   help="TOML file of service options (flat, or under [rtdecode])"
                   ).env_var = "RTDECODE_CONFIG"
    add_settings_options(s)
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("demo", help="simulated subject -> replay -> service, one command")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--no-browser", action="store_true")
    s.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    s.add_argument("--example", choices=["n170"], default=None,
                   help="a real recording instead: n170 = eeg-notebooks' Muse EEG, faces vs "
                        "houses (run 5, never trained on)")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``rtdecode`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The process exit status.
    """
    parser = build_parser()
    apply_env_defaults(parser)
    args = parser.parse_args(argv)
    if (args.global_lsl_local or getattr(args, "lsl_local", None)
            or _env("LSL_LOCAL", "").lower() in _TRUE):
        from rtdecode.lsl import use_local_config

        use_local_config()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ParameterError as exc:
        message = exc.naming(flag_for(parser, args.command, exc.parameter))
        print(f"rtdecode {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # Library errors are written for people: show the sentence, not a traceback.
        print(f"rtdecode {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
