"""The ``rtdecode`` command: thin subcommands over library calls.

Each subcommand parses its flags, builds a library object and calls it; heavy modules
are imported inside the handler so ``rtdecode --help`` stays fast. Flags that are also
service options default to None so that RTDECODE_* variables and ``--config`` apply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _env(name: str, default=None):
    return os.environ.get(f"RTDECODE_{name.upper()}", default)


def _cmd_replay(args: argparse.Namespace) -> int:
    from rtdecode.replay import replay_file

    replay_file(
        args.path,
        name=args.name,
        source_id=args.source_id,
        speed=args.speed,
        loop=args.loop,
        chunk_ms=args.chunk_ms,
        counter=args.counter,
        progress=not args.quiet,
    )
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from rtdecode.record import record_stream

    path = record_stream(
        args.name,
        args.out,
        duration_s=args.duration,
        source_id=args.source_id,
        timeout_s=args.timeout,
        progress=not args.quiet,
    )
    print(path)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rtdecode.data.simulate import simulate_cohort

    simulate_cohort(args.out, seed=args.seed, n_subjects=args.subjects,
                    difficulty=args.difficulty, size=args.size)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rtdecode.train import train

    train(
        args.data,
        args.out,
        preset=args.preset,
        recipe=args.config,
        max_epochs=args.max_epochs,
        device=args.device,
        resume=args.resume,
        seed=args.seed,
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rtdecode.evaluate import evaluate

    metrics = evaluate(args.ckpt, args.data, json_out=args.json, plots_dir=args.plots)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from rtdecode.encoder import describe_model

    if (args.ckpt is None) == (args.preset is None):
        raise SystemExit("rtdecode info: give either a checkpoint folder or --preset NAME.")
    print(json.dumps(describe_model(ckpt_dir=args.ckpt, preset=args.preset), indent=2))
    return 0


def _cmd_train_decoder(args: argparse.Namespace) -> int:
    from rtdecode.decoder.diffusion import train_decoder

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


def _cmd_serve(args: argparse.Namespace) -> int:
    from rtdecode.config import Settings
    from rtdecode.service import serve

    settings = Settings.load(
        args.config,
        stream=args.stream,
        model=args.model,
        decoder=args.decoder,
        gallery=args.gallery,
        host=args.host,
        port=args.port,
        token=args.token,
        record=args.record,
        lsl_local=args.lsl_local or None,
    )
    return serve(settings)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rtdecode.demo import run_demo

    return run_demo(port=args.port, open_browser=not args.no_browser, duration_s=args.duration)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtdecode",
        description="Real-time decoding of visual perception from a live MEG stream.",
    )
    p.add_argument(
        "--lsl-local",
        action="store_true",
        help="apply the loopback-only liblsl configuration (no traffic leaves 127.0.0.1)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("replay", help="publish a recording as a live LSL stream")
    s.add_argument("path", type=Path, help="FIF, CTF .ds, EDF/BDF, BrainVision or BIDS path")
    s.add_argument("--name", default=None, help="stream name (default: the file's stem)")
    s.add_argument("--source-id", default=None)
    s.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    s.add_argument("--loop", action="store_true", help="start over at the end")
    s.add_argument("--chunk-ms", type=float, default=10.0, help="samples pushed per chunk")
    s.add_argument("--counter", action="store_true", help="add a sample-counter channel")
    s.add_argument("--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=_cmd_replay)

    s = sub.add_parser("record", help="write an LSL stream (and its markers) to FIF")
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

    s = sub.add_parser("train", help="train the brain encoder")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--preset", default=None, help="architecture preset (default: paper)")
    s.add_argument("--config", type=Path, default=None, help="recipe TOML")
    s.add_argument("--max-epochs", type=int, default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--resume", action="store_true", help="continue from OUT's last state")
    s.add_argument("--seed", type=int, default=None)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="score a checkpoint (retrieval, ridge baseline)")
    s.add_argument("ckpt", type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--json", type=Path, default=None)
    s.add_argument("--plots", type=Path, default=None)
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("info", help="JSON description of a checkpoint or preset")
    s.add_argument("ckpt", type=Path, nargs="?", default=None)
    s.add_argument("--preset", default=None)
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("train-decoder", help="train the small image decoder on a gallery")
    s.add_argument("--gallery", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--image-encoder", default="handcrafted", help="image encoder name (registry)")
    s.add_argument("--max-steps", type=int, default=None)
    s.add_argument("--device", default="auto")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_train_decoder)

    s = sub.add_parser("serve", help="decode a live stream and serve the viewer")
    s.add_argument("--stream", default=None)
    s.add_argument("--model", type=Path, default=None)
    s.add_argument("--decoder", default=None, help="decoder folder, 'demo', or 'none' (retrieval only)")
    s.add_argument("--gallery", type=Path, default=None, help="gallery folder (default: the checkpoint's)")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--token", default=None)
    s.add_argument(
        "--record",
        type=Path,
        default=None,
        help="also write every received sample and marker to FIF segments in this folder "
        "(each on disk within 2 s of arriving)",
    )
    s.add_argument("--config", type=Path, default=None)
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("demo", help="simulated subject -> replay -> service, one command")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--no-browser", action="store_true")
    s.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lsl_local or _env("LSL_LOCAL", "").lower() in {"1", "true", "yes"}:
        from rtdecode.lsl import use_local_config

        use_local_config()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # Library errors are written for people: show the sentence, not a traceback.
        print(f"rtdecode {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
