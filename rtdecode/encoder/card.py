"""The checkpoint card: a checkpoint's ``config.json`` opened once into typed, frozen parts.

``config.json`` (DESIGN.md, "Checkpoint") is read by key in this module only. Everything
else takes a :class:`CheckpointCard` (``open_checkpoint(path) -> (model, card)`` in
:mod:`rtdecode.encoder.checkpoint`) and reads attributes:

* ``architecture`` (:class:`~rtdecode.encoder.presets.BrainConfig`);
* ``systems``: one :class:`SensorSystem` per sensor system (channel names, 2D and 3D
  positions, channel types, input rate, fitted preprocessing, its subjects); a
  checkpoint of one system has one, read from the top-level keys;
* ``window``: a :class:`TrainedWindow` (length, start after onset, how training sampled
  windows: ``"stream"`` at every lag, or ``"fixed"`` at one offset);
* ``target``: a :class:`TargetSpec` (embedding name, dim, shape, the image encoder that
  makes it, gallery, labels, statistics);
* ``subjects``, ``test_images``, ``sfreq_model_hz``, ``clamp``, ``provenance``.

Older checkpoints load: a missing optional key takes the documented default of its
field (an ``offsets`` table with only ``window_start_s`` is a ``"fixed"`` window, no
``offsets`` at all a ``"stream"`` one; a target without ``encoder`` was made by the
``handcrafted`` encoder). :meth:`CheckpointCard.to_config` writes the card back in the
same on-disk format; :func:`config_for_save` is the writer's check of a training run's
``meta`` dict (``rtdecode.encoder.checkpoint.save_checkpoint``).

This module imports no torch. Threads: cards are immutable; any thread may read one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode._utils.jsonable import jsonable
from rtdecode.contracts import ParameterError
from rtdecode.encoder.presets import BrainConfig

FORMAT = "rtdecode.encoder"
FORMAT_VERSION = 1

#: The top-level keys every checkpoint's ``config.json`` has (null when unknown).
META_KEYS = (
    "architecture",
    "ch_names",
    "positions",
    "positions_3d",
    "sfreq_in_hz",
    "sfreq_model_hz",
    "window_s",
    "offsets",
    "preprocess",
    "clamp",
    "target",
    "subjects",
    "provenance",
    "target_stats",
)
# What differs between sensor systems: a multi-system checkpoint keeps one table of these
# per system under "systems" (the top-level keys are system 0's, for older readers).
SYSTEM_KEYS = ("ch_names", "positions", "positions_3d", "ch_types", "sfreq_in_hz", "preprocess")
_KNOWN_KEYS = set(META_KEYS) | set(SYSTEM_KEYS) | {
    "format", "format_version", "n_parameters", "test_images", "systems"}
_TARGET_KEYS = ("name", "dim", "shape", "encoder", "encoder_path", "readout", "gallery", "labels")


def positions_array(value: Any, n_channels: int, width: int, what: str) -> np.ndarray:
    """JSON positions (None = unknown) -> float array (n_channels, width), NaN for None."""
    rows = [[np.nan if v is None else v for v in row] for row in value]
    arr = np.asarray(rows, dtype=np.float64)
    if arr.shape != (n_channels, width):
        raise ValueError(
            f"{what} has shape {arr.shape} but the model has {n_channels} channels; "
            f"expected ({n_channels}, {width})."
        )
    return arr


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------- parts
@dataclass(frozen=True, eq=False)
class SensorSystem:
    """One sensor system of a checkpoint: what a stream must look like to be decoded.

    Attributes
    ----------
    ch_names : tuple of str
        The model's input channels, in order.
    positions : ndarray, float64, shape (n_channels, 2)
        2D sensor layout of the spatial attention; NaN for an unknown sensor.
    positions_3d : ndarray, shape (n_channels, 3), or None
    ch_types : tuple of str, or None
    sfreq_in_hz : float or None
        The rate the training recordings had.
    preprocess : dict or None
        The fitted preprocessing (``Preprocessor.to_dict()``); see :meth:`preprocessor`.
    subjects : tuple of str
        The subjects read with this system (empty in checkpoints of one system).
    """

    ch_names: tuple[str, ...]
    positions: np.ndarray
    positions_3d: np.ndarray | None = None
    ch_types: tuple[str, ...] | None = None
    sfreq_in_hz: float | None = None
    preprocess: Mapping[str, Any] | None = None
    subjects: tuple[str, ...] = ()

    @classmethod
    def from_table(cls, table: Mapping[str, Any], what: str = "config.json",
                   fallback: Mapping[str, Any] | None = None) -> SensorSystem:
        """A system from its JSON table; keys it lacks come from ``fallback`` (the top level)."""
        def get(key: str) -> Any:
            value = table.get(key)
            return (fallback or {}).get(key) if value is None else value

        names = tuple(str(c) for c in get("ch_names") or ())
        if get("positions") is None:
            raise ValueError(f"{what} has no 'positions'; the spatial attention needs them.")
        pos3 = get("positions_3d")
        types = get("ch_types")
        return cls(
            ch_names=names,
            positions=positions_array(get("positions"), len(names), 2, f"{what} 'positions'"),
            positions_3d=None if pos3 is None else np.asarray(
                [[np.nan if v is None else v for v in row] for row in pos3], dtype=np.float64),
            ch_types=None if types is None else tuple(str(t) for t in types),
            sfreq_in_hz=_float(get("sfreq_in_hz")),
            preprocess=get("preprocess"),
            subjects=tuple(str(s) for s in table.get("subjects") or ()),
        )

    def to_table(self, with_subjects: bool = True) -> dict[str, Any]:
        """The system's JSON table (``config.json``'s ``systems[k]``)."""
        out = {
            "ch_names": list(self.ch_names),
            "positions": self.positions,
            "positions_3d": self.positions_3d,
            "ch_types": None if self.ch_types is None else list(self.ch_types),
            "sfreq_in_hz": self.sfreq_in_hz,
            "preprocess": None if self.preprocess is None else dict(self.preprocess),
        }
        if with_subjects:
            out["subjects"] = list(self.subjects)
        return out

    def preprocessor(self) -> Any:
        """The fitted :class:`~rtdecode.signal.preprocess.Preprocessor` of this system."""
        from rtdecode.signal.preprocess import Preprocessor

        if self.preprocess is None:
            raise ValueError(
                "The checkpoint has no fitted preprocessing ('preprocess') for this sensor "
                "system; retrain it with `rtdecode train`."
            )
        return Preprocessor.from_dict(dict(self.preprocess))


@dataclass(frozen=True)
class TrainedWindow:
    """The window a checkpoint was trained on, and how training sampled it.

    Attributes
    ----------
    length_s : float or None
        Window length (``window_s``); None in checkpoints that do not record it.
    start_s : float
        Start of the (first) training window after image onset (default 0).
    sampling : str
        ``"stream"``: windows at every lag (``lag_*``), so the model decodes a live
        stream's windows; ``"fixed"``: one window at ``start_s`` after onset (checkpoints
        whose ``offsets`` hold only ``window_start_s``).
    lag_min_s, lag_max_s, lag_step_s : float or None
        The lags of a ``"stream"`` training run's windows (window end after onset).
    """

    length_s: float | None = None
    start_s: float = 0.0
    sampling: str = "stream"
    lag_min_s: float | None = None
    lag_max_s: float | None = None
    lag_step_s: float | None = None

    @classmethod
    def from_config(cls, window_s: Any, offsets: Mapping[str, Any] | None) -> TrainedWindow:
        """From ``config.json``'s ``window_s`` and ``offsets`` (either may be null)."""
        offsets = offsets or {}
        return cls(
            length_s=_float(window_s),
            start_s=float(offsets.get("window_start_s") or 0.0),
            sampling=str(offsets.get(
                "sampling", "fixed" if "window_start_s" in offsets else "stream")),
            lag_min_s=_float(offsets.get("lag_min_s")),
            lag_max_s=_float(offsets.get("lag_max_s")),
            lag_step_s=_float(offsets.get("lag_step_s")),
        )

    def offsets(self) -> dict[str, Any]:
        """``config.json``'s ``offsets`` table."""
        out: dict[str, Any] = {"window_start_s": self.start_s, "sampling": self.sampling}
        for key in ("lag_min_s", "lag_max_s", "lag_step_s"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class TargetSpec:
    """The embedding the encoder predicts and the image encoder that makes it.

    Attributes
    ----------
    name : str or None
        The image encoder's identity (``"efficientnet-lite0@<hash>"``); None when not
        recorded (then any image encoder's embeddings are accepted).
    dim : int
        Size of the embedding's last axis.
    shape : tuple of int
        ``(D,)`` or ``(N, D)``.
    encoder : str
        Registry name of the image encoder (``"handcrafted"`` when absent).
    encoder_path : str or None
        Its local model folder, if any.
    readout : str
        ``"cls"`` unless recorded otherwise.
    gallery : str or None
        The training gallery folder, as written (relative to the checkpoint folder).
    labels : str or None
        ``"image"`` or ``"category"`` (None: images).
    stats : dict or None
        ``{"mean": ndarray, "std": ndarray}`` of the training embeddings (``target_stats``),
        the form :func:`rtdecode.encoder.metrics.standardize` and
        :func:`rtdecode.decoder.normalize.rescale_prediction` take.
    """

    dim: int
    shape: tuple[int, ...]
    name: str | None = None
    encoder: str = "handcrafted"
    encoder_path: str | None = None
    readout: str = "cls"
    gallery: str | None = None
    labels: str | None = None
    stats: Mapping[str, np.ndarray] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, target: Mapping[str, Any] | None, stats: Mapping[str, Any] | None,
                    architecture: BrainConfig) -> TargetSpec:
        """From ``config.json``'s ``target`` and ``target_stats``, checked against the model."""
        target = dict(target or {})
        if target.get("dim") is not None and int(target["dim"]) != architecture.target_dim:
            raise ValueError(
                f"config.json says the target has dim {target['dim']} but the architecture "
                f"predicts {architecture.target_dim}; the checkpoint is inconsistent."
            )
        arrays = None
        if stats:
            arrays = {}
            for key in ("mean", "std"):
                shape = np.shape(stats.get(key))
                if shape != architecture.target_shape:
                    raise ValueError(
                        f"config.json's target_stats[{key!r}] has shape {shape} but the model "
                        f"predicts {architecture.target_shape}; the checkpoint is inconsistent."
                    )
                arrays[key] = np.asarray(stats[key], dtype=np.float64)
        return cls(
            dim=architecture.target_dim,
            shape=tuple(architecture.target_shape),
            name=None if target.get("name") is None else str(target["name"]),
            encoder=str(target.get("encoder") or "handcrafted"),
            encoder_path=target.get("encoder_path"),
            readout=str(target.get("readout") or "cls"),
            gallery=target.get("gallery"),
            labels=target.get("labels"),
            stats=arrays,
            extra={k: v for k, v in target.items() if k not in _TARGET_KEYS},
        )

    def to_table(self) -> dict[str, Any]:
        """``config.json``'s ``target`` table (the statistics go to ``target_stats``)."""
        return {
            "name": self.name, "encoder": self.encoder, "encoder_path": self.encoder_path,
            "readout": self.readout, "gallery": self.gallery, "labels": self.labels,
            **self.extra, "dim": self.dim, "shape": list(self.shape),
        }

    def image_encoder(self, device: str = "cpu") -> Any:
        """The image encoder this target names (:func:`rtdecode.images.get_image_encoder`)."""
        from rtdecode.images import get_image_encoder

        return get_image_encoder(self.encoder, path=self.encoder_path, readout=self.readout,
                                 device=device)


# --------------------------------------------------------------------------- the card
@dataclass(frozen=True, eq=False)
class CheckpointCard:
    """A checkpoint's ``config.json``, parsed and checked once (module docstring).

    Attributes
    ----------
    architecture : BrainConfig
    systems : tuple of SensorSystem
        One per sensor system, in the model's system order.
    window : TrainedWindow
    target : TargetSpec
    subjects : tuple of str
        The rows of the subject layer (may be empty in checkpoints that do not name them).
    test_images : tuple of str
        The held-out (zero-shot) test images (``serve --retrieval-set test``).
    sfreq_model_hz : float or None
    clamp : float or None
    provenance : dict
        How the checkpoint was made (data, recipe, history, calibration), as training
        wrote it.
    folder : Path or None
        Where the card was read (relative paths in it are relative to this folder).
    n_parameters : int or None
    system_tables : bool
        Whether ``config.json`` lists its systems under ``systems`` (always for several).
    extra : dict
        Keys this rtdecode does not know, kept for writing the card back.
    """

    architecture: BrainConfig
    systems: tuple[SensorSystem, ...]
    window: TrainedWindow
    target: TargetSpec
    subjects: tuple[str, ...] = ()
    test_images: tuple[str, ...] = ()
    sfreq_model_hz: float | None = None
    clamp: float | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    n_parameters: int | None = None
    system_tables: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_config(cls, config: Mapping[str, Any], folder: str | Path | None = None) -> CheckpointCard:
        """Parse and check a checkpoint's ``config.json`` (a dict).

        Raises
        ------
        ValueError
            The config is not an rtdecode encoder config, is from a newer rtdecode, or
            its parts disagree with its architecture (each problem named).
        """
        check_config(config, "config.json")
        cfg = BrainConfig.from_dict(config["architecture"])
        tables = config.get("systems")
        if cfg.n_systems > 1 or tables is not None:
            if not isinstance(tables, list) or len(tables) != cfg.n_systems:
                n = len(tables) if isinstance(tables, list) else None
                raise ValueError(
                    f"config.json lists {n} sensor systems but its architecture reads "
                    f"{cfg.n_systems}; the checkpoint is inconsistent."
                )
            systems = []
            for k, table in enumerate(tables):
                names = table.get("ch_names") or []
                if not 0 < len(names) <= cfg.n_channels or table.get("positions") is None:
                    raise ValueError(
                        f"config.json's systems[{k}] has {len(names)} channel names (or no "
                        f"positions) but the architecture takes 1 to {cfg.n_channels}; the "
                        "checkpoint is inconsistent."
                    )
                systems.append(SensorSystem.from_table(table, f"config.json systems[{k}]",
                                                       fallback=config))
        else:
            names = config.get("ch_names")
            if names is None or len(names) != cfg.n_channels:
                n = None if names is None else len(names)
                raise ValueError(
                    f"config.json lists {n} channel names but its architecture has "
                    f"{cfg.n_channels} input channels; the checkpoint is inconsistent."
                )
            systems = [SensorSystem.from_table(config, "config.json")]
        subjects = config.get("subjects")
        if subjects is not None and len(subjects) != cfg.n_subjects:
            raise ValueError(
                f"config.json lists {len(subjects)} subjects but the architecture has "
                f"{cfg.n_subjects} subject layers; the checkpoint is inconsistent."
            )
        return cls(
            architecture=cfg,
            systems=tuple(systems),
            window=TrainedWindow.from_config(config.get("window_s"), config.get("offsets")),
            target=TargetSpec.from_config(config.get("target"), config.get("target_stats"), cfg),
            subjects=tuple(str(s) for s in subjects or ()),
            test_images=tuple(str(i) for i in config.get("test_images") or ()),
            sfreq_model_hz=_float(config.get("sfreq_model_hz")),
            clamp=_float(config.get("clamp")),
            provenance=dict(config.get("provenance") or {}),
            folder=None if folder is None else Path(folder),
            n_parameters=None if config.get("n_parameters") is None else int(config["n_parameters"]),
            system_tables=tables is not None,
            extra={k: v for k, v in config.items() if k not in _KNOWN_KEYS},
        )

    # ------------------------------------------------------------------ accessors
    @property
    def system(self) -> SensorSystem:
        """System 0 (the only one of a one-system checkpoint; the top-level keys)."""
        return self.systems[0]

    @property
    def ch_names(self) -> tuple[str, ...]:
        """System 0's channels."""
        return self.system.ch_names

    @property
    def recipe(self) -> dict[str, Any]:
        """The training recipe recorded in the provenance (empty when not recorded)."""
        return dict(self.provenance.get("recipe") or {})

    @property
    def gallery_dir(self) -> Path | None:
        """The training gallery folder (absolute, or relative to the checkpoint folder)."""
        named = self.target.gallery or self.provenance.get("gallery")
        if not named:
            return None
        path = Path(named)
        if path.is_absolute() or self.folder is None:
            return path
        return (self.folder / path).resolve()

    def subject_position(self, subject: str) -> int:
        """Index of ``subject`` (``"01"`` or ``"sub-01"``) among the checkpoint's subjects.

        Raises
        ------
        ValueError
            The checkpoint does not know the subject; the message names ``rtdecode calibrate``.
        """
        wanted = str(subject).removeprefix("sub-")
        for i, name in enumerate(self.subjects):
            if name.removeprefix("sub-") == wanted:
                return i
        calibration = self.provenance.get("calibration") or {}
        left_out = [str(n).removeprefix("sub-") for n in calibration.get("subjects_left_out", ())]
        if wanted in left_out:
            raise ValueError(
                f"Subject {subject!r} was left out of this checkpoint: it was calibrated to "
                f"{calibration.get('subject')} alone, with shared layers fine-tuned, which "
                f"changes every other subject's outputs. Decode {subject!r} with the checkpoint "
                f"it was calibrated from ({calibration.get('from')}), or calibrate with "
                "`--trunk-lr-scale 0` (and `--head-lr-scale 0`) to keep every known subject."
            )
        raise ValueError(
            f"Subject {subject!r} is not one of the encoder's subjects "
            f"({', '.join(self.subjects) or 'none'}). Decode one of those, or calibrate the "
            "encoder to this subject first: `rtdecode calibrate CKPT_DIR --data DIR --subject S "
            "--minutes M --out NEW_CKPT`."
        )

    def subject_index(self, subject: str | None) -> int:
        """Row of the subject layer to decode ``subject`` with (None: the only subject).

        Raises
        ------
        ParameterError
            ``subject`` is None but the checkpoint knows several subjects.
        ValueError
            An unknown subject (:meth:`subject_position`).
        """
        if subject is None:
            if len(self.subjects) > 1:
                raise ParameterError(
                    "subject",
                    f"This encoder was trained on {len(self.subjects)} subjects "
                    f"({', '.join(self.subjects)}); pass {{param}} with the one whose stream "
                    "you decode.",
                )
            return 0
        return self.subject_position(subject)

    def system_of(self, subject_index: int) -> SensorSystem:
        """The sensor system of the subject layer's row ``subject_index``."""
        systems = self.architecture.systems
        return self.systems[systems[subject_index] if subject_index < len(systems) else 0]

    def subject_name(self, subject_index: int) -> str | None:
        """The name of a subject layer row, None when the checkpoint names no subjects."""
        return self.subjects[subject_index] if subject_index < len(self.subjects) else None

    # ------------------------------------------------------------------ writing
    def to_config(self) -> dict[str, Any]:
        """The card as ``config.json``'s dict (JSON types; the inverse of :meth:`from_config`)."""
        top = self.system.to_table(with_subjects=False)
        config: dict[str, Any] = {key: top.get(key) for key in META_KEYS}
        config.update(
            architecture=self.architecture.to_dict(),
            sfreq_model_hz=self.sfreq_model_hz,
            window_s=self.window.length_s,
            offsets=self.window.offsets(),
            clamp=self.clamp,
            target=self.target.to_table(),
            subjects=list(self.subjects),
            provenance=dict(self.provenance),
            target_stats=None if self.target.stats is None else dict(self.target.stats),
            format=FORMAT,
            format_version=FORMAT_VERSION,
            n_parameters=self.n_parameters,
            ch_types=top["ch_types"],
            test_images=list(self.test_images),
        )
        if self.system_tables or len(self.systems) > 1:
            config["systems"] = [s.to_table() for s in self.systems]
        config.update(self.extra)
        return jsonable(config)

    def to_meta(self) -> dict[str, Any]:
        """What :func:`~rtdecode.encoder.checkpoint.save_checkpoint` takes to write the card.

        Its architecture and size come from the model saved with it.
        """
        config = self.to_config()
        for key in ("architecture", "n_parameters", "format", "format_version"):
            config.pop(key, None)
        return config

    def replace(self, **changes: Any) -> CheckpointCard:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """What ``rtdecode info CKPT_DIR`` says of the checkpoint besides its architecture."""
        config = self.to_config()
        return {
            "n_channels": len(self.ch_names),
            **{key: config[key] for key in ("sfreq_in_hz", "sfreq_model_hz", "window_s",
                                            "offsets", "clamp", "target", "subjects",
                                            "provenance")},
        }


# --------------------------------------------------------------------------- on disk
def check_config(config: Any, where: str | Path) -> None:
    """Refuse a dict that is not an rtdecode encoder config, or one from a newer rtdecode."""
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), dict):
        raise ValueError(
            f"{where} has no 'architecture' table; it is not an rtdecode encoder checkpoint."
        )
    version = config.get("format_version", FORMAT_VERSION)
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{where} has format_version {version}, newer than this rtdecode reads "
            f"({FORMAT_VERSION}); upgrade rtdecode."
        )


def config_for_save(meta: Mapping[str, Any], architecture: BrainConfig,
                    n_parameters: int) -> dict[str, Any]:
    """The ``config.json`` dict of a model of ``architecture`` described by ``meta``.

    Parameters
    ----------
    meta : mapping
        Contract keys (module docstring): at least ``ch_names`` (n_channels names) and
        ``positions`` ((n_channels, 2), NaN for unknown); missing optional keys are
        written as null, unknown keys are kept. A model of several sensor systems needs
        ``systems`` instead: one table per system with its ``ch_names``, ``positions``
        and (for serving) ``preprocess``; the top-level keys are then system 0's.
    architecture : BrainConfig
        The saved model's (it replaces any ``architecture`` in ``meta``).
    n_parameters : int

    Returns
    -------
    dict
        JSON types only.
    """
    cfg = architecture
    meta = dict(meta)
    systems = meta.get("systems")
    if cfg.n_systems > 1 or systems is not None:
        systems = [dict(sys) for sys in systems or []]
        if len(systems) != cfg.n_systems:
            raise ValueError(
                f"meta['systems'] holds {len(systems)} sensor systems but the model reads "
                f"{cfg.n_systems}; give one table (ch_names, positions, preprocess) per system."
            )
        for k, sys in enumerate(systems):
            names = [str(c) for c in sys.get("ch_names") or []]
            if not 0 < len(names) <= cfg.n_channels:
                raise ValueError(
                    f"meta['systems'][{k}] names {len(names)} channels; the model takes 1 to "
                    f"{cfg.n_channels}."
                )
            positions_array(jsonable(sys.get("positions")), len(names), 2,
                            f"meta['systems'][{k}]['positions']")
            sys["ch_names"] = names
        meta.update({key: systems[0].get(key) for key in SYSTEM_KEYS if key in systems[0]})
        meta["systems"] = systems
    for key in ("ch_names", "positions"):
        if meta.get(key) is None:
            raise ValueError(f"meta[{key!r}] is required to save a checkpoint; add it.")
    ch_names = [str(c) for c in meta["ch_names"]]
    if cfg.n_systems == 1 and len(ch_names) != cfg.n_channels:
        raise ValueError(
            f"meta['ch_names'] names {len(ch_names)} channels but the model has "
            f"{cfg.n_channels}; give one name per model input channel."
        )
    positions_array(jsonable(meta["positions"]), len(ch_names), 2, "meta['positions']")
    target = dict(meta.get("target") or {})
    target.setdefault("name", None)
    target["dim"] = cfg.target_dim
    target["shape"] = list(cfg.target_shape)
    config = {key: meta.get(key) for key in META_KEYS}
    config.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        architecture=cfg.to_dict(),
        ch_names=ch_names,
        target=target,
        n_parameters=n_parameters,
    )
    config.update({k: v for k, v in meta.items() if k not in config})
    return jsonable(config)


def subject_view(meta: Mapping[str, Any], subject: str) -> dict[str, Any]:
    """A ``config.json`` dict as one subject sees it (for readers of the older dict API).

    Returns a copy of ``meta`` whose ``ch_names``, ``positions``, ``positions_3d``,
    ``ch_types``, ``sfreq_in_hz`` and ``preprocess`` are those of the subject's sensor
    system, plus ``subject_index`` (its row of the subject layer). Code of this package
    reads :meth:`CheckpointCard.subject_index` and :meth:`CheckpointCard.system_of`.
    """
    card = CheckpointCard.from_config(meta)
    index = card.subject_position(subject)
    out = dict(meta)
    out.update(jsonable(card.system_of(index).to_table(with_subjects=False)))
    out["subject_index"] = index
    return out


__all__ = [
    "CheckpointCard",
    "SensorSystem",
    "TargetSpec",
    "TrainedWindow",
    "META_KEYS",
    "SYSTEM_KEYS",
    "check_config",
    "config_for_save",
    "positions_array",
    "subject_view",
]
