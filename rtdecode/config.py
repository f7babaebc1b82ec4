"""One Settings object for the service.

Every option is also an ``RTDECODE_*`` environment variable and a key of the TOML file
given by ``--config``.

Precedence, highest first: command-line flags, environment variables, the TOML file,
defaults.
"""

from __future__ import annotations

import tomllib
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
    ch_names: list[str] | None = Field(None, description="Channel names for a peer stream without a description.")
    lsl_local: bool = Field(False, description="Apply the loopback-only liblsl configuration.")
    resolve_timeout_s: float = Field(10.0, gt=0)
    buffer_s: float = Field(30.0, gt=1, description="Ring buffer length in seconds.")
    # windows
    window_s: float = Field(0.25, gt=0)
    hop_s: float = Field(0.05, gt=0)
    # models
    model: Path | None = Field(None, description="Brain encoder checkpoint folder.")
    decoder: str | None = Field(None, description="Decoder: a folder, or 'none' for retrieval only.")
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
    topk: int = Field(5, ge=1, le=50)
    max_fps: float = Field(10.0, gt=0, description="Most generated images per second.")
    diffusion_steps: int = Field(4, ge=1, le=50)
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
    seed: int = 0
    # server
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    token: str | None = Field(None, description="Shared secret required by /ws and /api/*.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (besides loopback and --host) that requests may name in their "
        "Host header; '*' allows any. Comma-separated on the command line and in the variable.",
    )
    max_clients: int = Field(16, ge=1)
    client_queue: int = Field(4, ge=1, description="Frames buffered per client before dropping.")
    image_format: str = Field("jpeg", pattern="^(jpeg|webp|png)$")
    record: Path | None = Field(None, description="Folder to record every received sample to.")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: Any) -> Any:
        if isinstance(v, str):
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
