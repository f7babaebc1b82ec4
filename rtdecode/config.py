"""One Settings object for the service: the one source of every ``serve`` option.

Each field of :class:`Settings` is a flag of ``rtdecode serve`` (``--window-s``), an
environment variable (``RTDECODE_WINDOW_S``) and a key of the TOML file given by
``--config``; :func:`settings_options` describes each once (name, flag, variable, type,
default, help) for the command line and for the README's table
(:func:`settings_table_markdown`).

Precedence, highest first: command-line flags, environment variables, the TOML file,
defaults.
"""

from __future__ import annotations

import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Options of ``rtdecode serve`` and ``rtdecode demo`` (see README, "Configuration")."""

    model_config = SettingsConfigDict(env_prefix="RTDECODE_", extra="forbid")

    # input
    stream: str | None = Field(None, description="Name of the LSL data stream to decode.")
    source_id: str | None = Field(None, description="LSL source_id to match, if several streams share a name.")
    marker_stream: str | None = Field(None, description="Name of the LSL marker stream (default: '<stream>-markers').")
    events_table: Path | None = Field(
        None,
        description="CSV/TSV file mapping marker or trigger codes to image ids and trial types "
        "(columns: code, image_id, trial_type; common variants accepted).",
    )
    trigger_channel: str | None = Field(
        None,
        description="In-stream trigger channel whose rising edges are events (default: a "
        "channel named STI101/STI 014/UPPT001 or typed stim, when present; 'none': off).",
    )
    ch_names: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Channel names for a peer stream without a description (comma-separated "
        "or a JSON list).",
    )
    lsl_local: bool = Field(False, description="Apply the loopback-only liblsl configuration.")
    resolve_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for the LSL stream to appear."
    )
    buffer_s: float = Field(30.0, gt=1, description="Ring buffer length in seconds.")
    # windows
    window_s: float = Field(0.25, gt=0, description="Length of each decoded window in seconds.")
    hop_s: float = Field(
        0.05, gt=0, description="Seconds between decoded windows (at least 0.005)."
    )
    # models
    model: Path | None = Field(None, description="Brain encoder checkpoint folder.")
    decoder: str | None = Field(
        None,
        description="Decoder: a folder, 'demo' (the bundled one), or 'none' for retrieval only.",
    )
    gallery: Path | None = Field(None, description="Gallery folder for retrieval and thumbnails.")
    subject: str | None = Field(None, description="Subject to decode as (required when the checkpoint has several).")
    retrieval_set: str = Field(
        "all",
        description="Images to retrieve among: 'test' (the checkpoint's held-out test images), "
        "'all' (the whole gallery) or a folder of images.",
    )
    allow_fixed_window: bool = Field(
        False, description="Serve an encoder trained on one fixed window (it decodes poorly at other lags)."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    topk: int = Field(5, ge=1, le=50, description="Retrieved images per frame (1 to 50).")
    max_fps: float = Field(10.0, gt=0, description="Most generated images per second.")
    diffusion_steps: int = Field(
        4, ge=1, le=50, description="Denoising steps per generated image (1 to 50)."
    )
    lanes: int = Field(
        2, ge=1, le=2,
        description="2: generation in its own thread, retrieval frames at every hop; "
        "1: the single-lane worker (retrieval waits behind each generation).",
    )
    encoder_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="The encoder's precision at batch 1: 'auto' is fp32 on CPU, bf16 (or fp16) "
        "on CUDA.",
    )
    cuda_graphs: bool = Field(
        True, description="On CUDA, replay the encoder as a captured CUDA graph (batch 1)."
    )
    smooth_s: float = Field(
        0.0, ge=0, le=10,
        description="Time constant (s) over which consecutive windows' predictions are "
        "integrated before retrieval and generation (0: each window alone).",
    )
    seed: int = Field(0, description="Seed of the decoder's noise (one embedding, one image).")
    # server
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on; anything but loopback needs a token.",
    )
    port: int = Field(8765, ge=0, le=65535, description="Port to listen on (0: any free port).")
    token: str | None = Field(None, description="Shared secret required by /ws and /api/*.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (besides loopback and --host) that requests may name in their "
        "Host header; '*' allows any. Comma-separated on the command line and in the variable.",
    )
    max_clients: int = Field(16, ge=1, description="Most viewers connected at once.")
    client_queue: int = Field(4, ge=1, description="Frames buffered per client before dropping.")
    image_format: Literal["jpeg", "webp", "png"] = Field(
        "jpeg", description="Encoding of generated images sent to viewers."
    )
    record: Path | None = Field(None, description="Folder to record every received sample to.")

    @field_validator("allowed_hosts", "ch_names", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        # One text form for list options in files, variables and flags: comma-separated
        # (a JSON list is accepted too, as pydantic-settings reads list variables).
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [h.strip() for h in v.split(",") if h.strip()]
        return v

    @field_validator("hop_s")
    @classmethod
    def _hop_positive(cls, v: float) -> float:
        if v < 0.005:
            raise ValueError(f"hop_s={v} is below 5 ms; use a hop of at least 0.005 s.")
        return v

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Build settings from a TOML file (optional), the environment, and overrides.

        ``overrides`` whose value is None are ignored, so unset CLI flags fall through.
        """
        file_values: dict[str, Any] = {}
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"Configuration file {path} does not exist; give the path of a TOML file."
                )
            with path.open("rb") as fh:
                try:
                    data = tomllib.load(fh)
                except tomllib.TOMLDecodeError as exc:
                    raise ValueError(f"Configuration file {path} is not valid TOML: {exc}") from exc
            # Accept both a flat file and a [rtdecode] table.
            file_values = data.get("rtdecode", data)
            unknown = set(file_values) - set(cls.model_fields)
            if unknown:
                raise ValueError(
                    f"Unknown option(s) {sorted(unknown)} in {path}; "
                    f"known options are {sorted(cls.model_fields)}."
                )
        try:
            env_values = cls().model_dump(exclude_unset=True)  # environment only
            merged = {**file_values, **env_values}
            merged.update({k: v for k, v in overrides.items() if v is not None})
            return cls(**merged)
        except ValidationError as exc:
            # pydantic's report spans lines and links; people get one sentence per option.
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'options'}={e.get('input')!r}: "
                + e["msg"].removeprefix("Value error, ").rstrip(".")
                for e in exc.errors()
            )
            raise ValueError(
                f"Invalid option(s): {problems}. Fix the flag, the RTDECODE_* variable or "
                "the configuration file that sets it."
            ) from None


#: The prefix of every service option's environment variable.
ENV_PREFIX = "RTDECODE_"


@dataclass(frozen=True)
class SettingsOption:
    """One :class:`Settings` field as the command line and the docs show it.

    Attributes
    ----------
    name : str
        The field, and the key of the TOML file (``window_s``).
    flag : str
        The command-line flag (``--window-s``); booleans also have ``--no-...``.
    env : str
        The environment variable (``RTDECODE_WINDOW_S``).
    kind : type
        What one value is: ``bool``, ``int``, ``float``, ``str`` or ``Path``.
    is_list : bool
        A list of ``kind``: comma-separated on the command line.
    choices : tuple or None
        The allowed values of a ``Literal`` field.
    default : Any
        The default value.
    help : str
        The field's description.
    """

    name: str
    flag: str
    env: str
    kind: type
    is_list: bool
    choices: tuple[Any, ...] | None
    default: Any
    help: str

    @property
    def default_text(self) -> str:
        """The default as people write it (lists comma-separated); empty when unset."""
        if self.default is None or self.default == []:
            return ""
        return ",".join(map(str, self.default)) if self.is_list else str(self.default)


def _option_type(annotation: object) -> tuple[type, bool, tuple[Any, ...] | None]:
    """(kind, is_list, choices) of a field's annotation, ``X | None`` unwrapped."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in args if a is not type(None)]
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return type(args[0]), False, tuple(args)
    if typing.get_origin(annotation) is list:
        kind, _, choices = _option_type(args[0])
        return kind, True, choices
    if annotation in (bool, int, float, str, Path):
        return annotation, False, None
    raise TypeError(f"Settings field type {annotation!r} has no command-line form; use "
                    "bool, int, float, str, Path, a Literal or a list of one of them.")


def settings_options() -> list[SettingsOption]:
    """Every :class:`Settings` field as an option, in the class's order.

    Returns
    -------
    list of SettingsOption
        One per field: its flag, environment variable, type, default and help.
    """
    out = []
    for name, field in Settings.model_fields.items():
        kind, is_list, choices = _option_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        out.append(SettingsOption(
            name=name, flag="--" + name.replace("_", "-"), env=ENV_PREFIX + name.upper(),
            kind=kind, is_list=is_list, choices=choices, default=default,
            help=field.description or "",
        ))
    return out


def settings_table_markdown() -> str:
    """The README's configuration table, made from :class:`Settings`' fields.

    Returns
    -------
    str
        A Markdown table (one row per option: TOML key, flag, variable, default (empty
        when unset), meaning), ending with a newline.
    """

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = [
        "| option | flag | env variable | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for o in settings_options():
        flag = f"{o.flag}/--no-{o.flag[2:]}" if o.kind is bool else o.flag
        default = f"`{cell(o.default_text)}`" if o.default_text else ""
        rows.append(f"| `{o.name}` | `{flag}` | `{o.env}` | {default} | {cell(o.help)} |")
    return "\n".join(rows) + "\n"
