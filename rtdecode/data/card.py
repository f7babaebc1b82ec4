"""A dataset card: one TOML file that describes a lab's own experiment.

::

    [dataset]
    name = "n170-sub1"
    modality = "eeg"                     # "meg" | "eeg"
    recordings = ["recordings/*.csv"]    # globs relative to the card; any format rtdecode reads
    subject = "01"                       # or a [subjects] table: glob -> subject id

    [events]
    source = "auto"                      # "auto" | "annotations" | "column:Marker0" | a trigger channel
    codes = { 1 = "house", 2 = "face" }  # code or text -> category, image path or image id
    ignore = []                          # codes that are not stimuli (responses ...)

    [images]
    root = "stim"                        # <root>/<category>/<image> when the labels are categories
    labels = "auto"                      # "auto" | "category" | "image"

    [epochs]
    tmin_s = -0.1                        # the epoch window of the experiment
    tmax_s = 0.8

    [channels]
    bad = ["Right AUX"]                  # left out of every recording
    types = { "Right AUX" = "misc" }     # channel -> MNE type, where the file is wrong
    reference = "as-recorded"            # EEG reference: only as recorded is supported
    line_freq_hz = 60

    [split]
    test = ["recordings/data_2017-09-13-15.42.33.csv"]   # names or globs; never trained on

:func:`read_card` checks everything the file alone can tell (keys, values, globs, the
labels against the image folder, the split); :meth:`DatasetCard.read` reads one
recording with the card applied (bad channels, types, events relabelled as trials);
:meth:`DatasetCard.check_channels` checks that the runs share their channels. Every
problem is a :class:`CardError` naming the key and the fix. Nothing here writes a file.

Threads: plain functions and a frozen dataclass, used by the caller's thread.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import mne

    from rtdecode.data.recordings import Event, Recording

__all__ = ["CardError", "DatasetCard", "is_card", "read_card"]

MODALITIES = ("meg", "eeg")
LABEL_KINDS = ("auto", "category", "image")
REFERENCES = ("as-recorded",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_KNOWN = {
    "dataset": {"name", "modality", "recordings", "subject", "description"},
    "subjects": None,  # any glob
    "events": {"source", "codes", "ignore"},
    "images": {"root", "labels"},
    "epochs": {"tmin_s", "tmax_s"},
    "channels": {"bad", "types", "reference", "line_freq_hz"},
    "split": {"test", "train"},
}


class CardError(ValueError):
    """A dataset card is wrong; the message names the card, the key and the fix."""


def is_card(path: str | Path) -> bool:
    """Whether ``path`` is a dataset card (a ``.toml`` file)."""
    p = Path(path)
    return p.suffix.lower() == ".toml" and p.is_file()


def code_key(value: object) -> str | None:
    """The text of an event code: ``1``, ``1.0``, ``"1"`` and ``" 1 "`` are ``"1"``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        f = float(value)
        if not math.isfinite(f):
            return None
        return str(int(f)) if f.is_integer() else repr(f)
    text = str(value).strip()
    try:
        return code_key(float(text))
    except ValueError:
        return text or None


@dataclass(frozen=True)
class DatasetCard:
    """A checked dataset card (see the module docstring for the keys).

    Attributes
    ----------
    path : Path
        The card file; relative paths in it are relative to its folder.
    recordings : tuple of Path
        Every recording the globs match, sorted, resolved.
    subjects : dict of Path to str
        Subject (``sub-01``) of each recording.
    codes : dict of str to str
        Event code text (:func:`code_key`) -> label.
    labels : str
        ``"category"`` (a label is a folder of images under ``images_root``, the target
        is the category's mean image embedding) or ``"image"`` (a label is an image file
        under ``images_root`` or an image id).
    test : tuple of Path
        Test recordings; all others are training recordings.
    """

    path: Path
    name: str
    modality: str
    recordings: tuple[Path, ...]
    subjects: dict[Path, str]
    events_source: str = "auto"
    codes: dict[str, str] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    labels: str = "image"
    images_root: Path | None = None
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    test: tuple[Path, ...] = ()
    tmin_s: float | None = None
    tmax_s: float | None = None
    bad_channels: tuple[str, ...] = ()
    channel_types: dict[str, str] = field(default_factory=dict)
    reference: str = "as-recorded"
    line_freq_hz: float | None = None

    @property
    def root(self) -> Path:
        """The card's folder."""
        return self.path.parent

    @property
    def train(self) -> tuple[Path, ...]:
        """Training recordings: every recording not in the test split."""
        return tuple(p for p in self.recordings if p not in self.test)

    def subject_of(self, path: str | Path) -> str:
        """Subject of a recording of the card."""
        return self.subjects.get(Path(path).resolve(), "sub-unknown")

    def label_of(self, event: Event) -> str | None | bool:
        """The label an event names: a str, None for an ignored code, False for none."""
        value = event.value
        keys = [code_key(value.get("value")), code_key(value.get("trial_type"))]
        keys = [k for k in keys if k is not None]
        for k in keys:
            if k in self.codes:
                return self.codes[k]
        if any(k in self.ignore for k in keys):
            return None
        return False if self.codes else None

    def trial_value(self, event: Event, label: str, recording: Path) -> dict[str, Any]:
        """The event value a labelled event becomes (what the loader and replay read)."""
        ttype = "test" if Path(recording).resolve() in self.test else "exp"
        out = {"trial_type": ttype, "value": event.value.get("value"),
               "code": code_key(event.value.get("value")) or event.value.get("trial_type")}
        if self.labels == "category":
            out.update(image_id=label, category=label, image_path=None)
        elif self.images_root is not None and (self.images_root / label).is_file():
            out.update(image_id=Path(label).stem, image_path=label)
        else:
            out.update(image_id=label)
        return out

    def read(self, path: str | Path) -> Recording:
        """Read one recording with the card applied.

        Bad channels are marked bad, channel types set, and every event whose code the
        card maps becomes a trial (``trial_type`` ``exp`` or ``test`` by the split,
        ``image_id`` and ``category`` from the label); ignored codes are dropped.

        Raises
        ------
        CardError
            A code the card does not map, a bad channel or typed channel the recording
            lacks, or an event source the recording does not have.
        """
        from dataclasses import replace


        path = Path(path).resolve()
        rec = _read_with_source(path, self.events_source, self)
        missing = [c for c in (*self.bad_channels, *self.channel_types)
                   if c not in rec.raw.ch_names]
        if missing:
            raise CardError(
                f"{_where(self)}: [channels] names {missing} which {path.name!r} lacks (it "
                f"has {rec.raw.ch_names}); fix the names in [channels] bad/types."
            )
        if self.channel_types:
            rec.raw.set_channel_types(dict(self.channel_types), on_unit_change="ignore",
                                      verbose="error")
        rec.raw.info["bads"] = sorted(set(rec.raw.info["bads"]) | set(self.bad_channels))
        if self.line_freq_hz is not None:
            rec.raw.info["line_freq"] = float(self.line_freq_hz)
        events: list[Event] = []
        unknown: dict[str, int] = {}
        for ev in rec.events:
            label = self.label_of(ev)
            if label is False:
                key = code_key(ev.value.get("value")) or code_key(ev.value.get("trial_type"))
                unknown[str(key)] = unknown.get(str(key), 0) + 1
                continue
            if label is None:
                continue
            events.append(replace(ev, value=self.trial_value(ev, label, path)))
        if unknown:
            shown = ", ".join(f"{k!r} ({n}x)" for k, n in sorted(unknown.items())[:10])
            first = sorted(unknown)[0]
            raise CardError(
                f"{_where(self)}: {path.name!r} has event code(s) {shown} with no label in "
                f"[events] codes; give each a label (codes = {{ {first} = \"...\" }}) or "
                "list it in [events] ignore."
            )
        return replace(rec, events=events, events_source=f"card ({rec.events_source})")

    def data_channels(self, info: mne.Info) -> list[str]:
        """The channels of the card's modality (``meg``: no reference sensors), bad ones out."""
        import mne

        picks = mne.pick_types(info, meg=self.modality == "meg", eeg=self.modality == "eeg",
                               ref_meg=False, exclude="bads")
        return [info["ch_names"][i] for i in picks]

    def check_channels(self, recordings: list[Recording]) -> list[str]:
        """The data channels every run shares, or a CardError naming the differences.

        Returns
        -------
        list of str
            The first run's channels of the card's modality (bad ones left out).
        """
        first = None
        for rec in recordings:
            chans = self.data_channels(rec.raw.info)
            if not chans:
                raise CardError(
                    f"{_where(self)}: {rec.path.name!r} has no {self.modality.upper()} channel "
                    f"(its types: {sorted(set(rec.raw.get_channel_types()))}); set [dataset] "
                    "modality to what it recorded, or type its channels in [channels] types."
                )
            if first is None:
                first = (rec, chans)
                continue
            if set(chans) != set(first[1]):
                extra = sorted(set(chans) - set(first[1]))
                lack = sorted(set(first[1]) - set(chans))
                raise CardError(
                    f"{_where(self)}: the runs have different channels: {rec.path.name!r} has "
                    f"{extra} that {first[0].path.name!r} lacks and lacks {lack}; list the "
                    "channels not every run has in [channels] bad (or fix the recordings)."
                )
        return [] if first is None else first[1]

    def to_dict(self) -> dict[str, Any]:
        """The card as resolved (paths relative to the card), for reports."""
        rel = self._rel
        return {
            "card": str(self.path), "name": self.name, "modality": self.modality,
            "recordings": [rel(p) for p in self.recordings],
            "subjects": {rel(p): s for p, s in self.subjects.items()},
            "events_source": self.events_source, "codes": dict(self.codes),
            "ignore": sorted(self.ignore), "labels": self.labels,
            "images_root": None if self.images_root is None else rel(self.images_root),
            "categories": {c: len(v) for c, v in self.categories.items()},
            "test": [rel(p) for p in self.test], "train": [rel(p) for p in self.train],
            "tmin_s": self.tmin_s, "tmax_s": self.tmax_s,
            "bad_channels": list(self.bad_channels), "channel_types": dict(self.channel_types),
            "reference": self.reference, "line_freq_hz": self.line_freq_hz,
        }

    def _rel(self, p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)


# ---------------------------------------------------------------- reading the card


def _where(card: DatasetCard | Path) -> str:
    return f"The dataset card {str(card.path if isinstance(card, DatasetCard) else card)!r}"


def _need(table: dict, section: str, key: str, path: Path, example: str) -> Any:
    if key not in table:
        raise CardError(
            f"{_where(path)} has no [{section}] {key}; add it, e.g. `{key} = {example}` "
            f"under [{section}]."
        )
    return table[key]


def _str_list(value: object, section: str, key: str, path: Path) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CardError(
            f"{_where(path)}: [{section}] {key} = {value!r} must be a list of non-empty "
            f"strings, e.g. {key} = [\"run-*.fif\"]."
        )
    return value


def _glob(root: Path, pattern: str) -> list[Path]:
    return sorted(p.resolve() for p in root.glob(pattern)
                  if p.is_file() or p.suffix.lower() == ".ds")


def _subjects(doc: dict, files: list[Path], root: Path, path: Path) -> dict[Path, str]:
    table = doc.get("subjects")
    single = doc["dataset"].get("subject")
    out: dict[Path, str] = {}
    for f in files:
        sid = None
        if isinstance(table, dict):
            rel = str(f.relative_to(root)) if f.is_relative_to(root) else f.name
            sid = next((str(v) for g, v in table.items()
                        if fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(f.name, g)), None)
        if sid is None and single is not None:
            sid = str(single)
        if sid is None:
            from rtdecode.data.things import subject_of

            sid = subject_of(f)
        out[f] = sid if sid.startswith("sub-") else f"sub-{sid}"
    return out


def _images(root: Path | None, labels: str, codes: dict[str, str], path: Path):
    """The label kind and, for categories, each category's image files."""
    if not codes:
        return ("image" if labels == "auto" else labels), {}
    if root is None:
        if labels == "category":
            raise CardError(
                f"{_where(path)}: [images] labels = \"category\" needs [images] root, the "
                "folder holding one sub-folder of images per category."
            )
        return "image", {}
    names = sorted(set(codes.values()))
    if labels == "auto":
        labels = "category" if all((root / n).is_dir() for n in names) else "image"
    cats: dict[str, tuple[str, ...]] = {}
    if labels == "category":
        for n in names:
            folder = root / n
            files = sorted(str(p.relative_to(root)) for p in folder.glob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            if not files:
                raise CardError(
                    f"{_where(path)}: the category {n!r} (a label in [events] codes) has no "
                    f"images: {str(folder)!r} {'holds no image files' if folder.is_dir() else 'does not exist'}; "
                    f"put the pictures of {n!r} in it, or fix the label."
                )
            cats[n] = tuple(files)
    return labels, cats


def read_card(path: str | Path) -> DatasetCard:
    """Read and check a dataset card.

    Parameters
    ----------
    path : str | Path
        The TOML file.

    Returns
    -------
    DatasetCard

    Raises
    ------
    FileNotFoundError
        The card does not exist.
    CardError
        (a ValueError) a missing or unknown key, a wrong value, a glob that matches
        nothing, a code with no label, a category with no images, a test file that is
        also in training, a split entry that is not a recording of the card.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"The dataset card {str(path)!r} does not exist; check the path.")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"{_where(path)} is not valid TOML ({exc}); fix the syntax.") from exc
    for section, table in doc.items():
        if section not in _KNOWN:
            raise CardError(
                f"{_where(path)} has an unknown section [{section}]; known: "
                f"{', '.join(f'[{s}]' for s in _KNOWN)}."
            )
        allowed = _KNOWN[section]
        if allowed is not None and isinstance(table, dict):
            unknown = sorted(set(table) - allowed)
            if unknown:
                raise CardError(
                    f"{_where(path)}: [{section}] has unknown key(s) {unknown}; known: "
                    f"{sorted(allowed)}."
                )
    root = path.parent
    ds = doc.get("dataset")
    if not isinstance(ds, dict):
        raise CardError(
            f"{_where(path)} has no [dataset] table; add one with name, modality and "
            "recordings (see docs/datasets.md)."
        )
    name = str(_need(ds, "dataset", "name", path, '"my-study"'))
    modality = str(_need(ds, "dataset", "modality", path, '"eeg"')).lower()
    if modality not in MODALITIES:
        raise CardError(
            f"{_where(path)}: [dataset] modality = {modality!r} is not one of {MODALITIES}."
        )
    globs = _str_list(_need(ds, "dataset", "recordings", path, '["data_*.csv"]'),
                      "dataset", "recordings", path)
    files: list[Path] = []
    for g in globs:
        found = _glob(root, g)
        if not found:
            raise CardError(
                f"{_where(path)}: [dataset] recordings glob {g!r} matches no file under "
                f"{str(root)!r}; globs are relative to the card's folder."
            )
        files += [f for f in found if f not in files]
    files.sort()

    ev = doc.get("events", {})
    source = str(ev.get("source", "auto"))
    codes_in = ev.get("codes", {})
    if not isinstance(codes_in, dict):
        raise CardError(
            f"{_where(path)}: [events] codes must be a table, e.g. codes = {{ 1 = \"house\" }}."
        )
    codes: dict[str, str] = {}
    for k, v in codes_in.items():
        if not isinstance(v, str | int) or str(v).strip() == "":
            raise CardError(
                f"{_where(path)}: the code {k!r} in [events] codes has no label ({v!r}); give "
                f"it a category, image path or image id (codes = {{ {k} = \"house\" }}), or "
                "move it to [events] ignore."
            )
        codes[code_key(k) or str(k)] = str(v).strip()
    ignore = frozenset(code_key(c) or str(c) for c in ev.get("ignore", []))

    im = doc.get("images", {})
    images_root = None
    if "root" in im:
        images_root = (root / str(im["root"])).resolve()
        if not images_root.is_dir():
            raise CardError(
                f"{_where(path)}: [images] root {str(images_root)!r} is not a folder; give the "
                "folder of the pictures, relative to the card."
            )
    labels = str(im.get("labels", "auto"))
    if labels not in LABEL_KINDS:
        raise CardError(f"{_where(path)}: [images] labels = {labels!r} is not one of {LABEL_KINDS}.")
    labels, categories = _images(images_root, labels, codes, path)

    ep = doc.get("epochs", {})
    tmin_s = float(ep["tmin_s"]) if "tmin_s" in ep else None
    tmax_s = float(ep["tmax_s"]) if "tmax_s" in ep else None
    if tmin_s is not None and tmax_s is not None and not tmax_s > tmin_s:
        raise CardError(
            f"{_where(path)}: [epochs] tmax_s = {tmax_s} must be after tmin_s = {tmin_s}."
        )
    ch = doc.get("channels", {})
    bads = tuple(_str_list(ch.get("bad", []), "channels", "bad", path)) if ch.get("bad") else ()
    types = {str(k): str(v) for k, v in ch.get("types", {}).items()}
    reference = str(ch.get("reference", "as-recorded"))
    if reference not in REFERENCES:
        raise CardError(
            f"{_where(path)}: [channels] reference = {reference!r} is not supported; only "
            "\"as-recorded\" is: the live service decodes the stream as it arrives, so a "
            "re-reference would have to run online too. Re-reference in the acquisition."
        )
    line = ch.get("line_freq_hz")

    sp = doc.get("split", {})
    test = _split_files(sp.get("test", []), "test", files, root, path)
    if "train" in sp:
        train = _split_files(sp["train"], "train", files, root, path)
        both = sorted(set(test) & set(train))
        if both:
            raise CardError(
                f"{_where(path)}: {[p.name for p in both]} are in both [split] test and "
                "[split] train; a test file is never trained on: remove it from train."
            )
        files = sorted(set(train) | set(test))
    return DatasetCard(
        path=path, name=name, modality=modality, recordings=tuple(files),
        subjects=_subjects(doc, files, root, path), events_source=source, codes=codes,
        ignore=ignore, labels=labels, images_root=images_root, categories=categories,
        test=tuple(test), tmin_s=tmin_s, tmax_s=tmax_s, bad_channels=bads,
        channel_types=types, reference=reference,
        line_freq_hz=None if line is None else float(line),
    )


def _split_files(entries: object, key: str, files: list[Path], root: Path, path: Path
                 ) -> list[Path]:
    out: list[Path] = []
    for entry in _str_list(entries, "split", key, path) if entries else []:
        hits = [f for f in files
                if fnmatch.fnmatch(f.name, entry)
                or (f.is_relative_to(root) and fnmatch.fnmatch(str(f.relative_to(root)), entry))]
        if not hits:
            raise CardError(
                f"{_where(path)}: [split] {key} entry {entry!r} is none of the card's "
                f"recordings ({', '.join(f.name for f in files[:6])}...); give a file name or "
                "glob of a recording that [dataset] recordings lists."
            )
        out += [h for h in hits if h not in out]
    return sorted(out)


def _read_with_source(path: Path, source: str, card: DatasetCard) -> Recording:
    """``read_recording`` with the card's ``[events] source``."""
    from dataclasses import replace

    from rtdecode.data.recordings import read_recording

    rec = read_recording(path)
    if source == "auto":
        return rec
    if source == "annotations":
        from rtdecode.data.recordings import _events_from_annotations

        return replace(rec, events=_events_from_annotations(rec.raw), events_source="annotations")
    if source.startswith("column:"):
        column = source.split(":", 1)[1]
        if path.suffix.lower() != ".csv":
            return _from_channel(rec, column, card)
        from rtdecode.data.csv_recording import read_raw_csv
        from rtdecode.data.recordings import _events_from_annotations

        try:
            raw = read_raw_csv(path, marker_columns=[column])
        except ValueError as exc:
            raise CardError(f"{_where(card)}: [events] source {source!r}: {exc}") from exc
        return replace(rec, raw=raw, events=_events_from_annotations(raw),
                       events_source=f"column {column}")
    return _from_channel(rec, source, card)


def _from_channel(rec: Recording, channel: str, card: DatasetCard) -> Recording:
    """Events from the rising edges of one trigger channel."""
    from dataclasses import replace

    import mne

    from rtdecode.data.recordings import Event

    if channel not in rec.raw.ch_names:
        raise CardError(
            f"{_where(card)}: [events] source {channel!r} is not a channel of "
            f"{rec.path.name!r}; give \"auto\", \"annotations\", \"column:NAME\" or one of its "
            f"channels."
        )
    found = mne.find_events(rec.raw, stim_channel=channel, shortest_event=1,
                            initial_event=True, consecutive="increasing", verbose="error")
    fs = rec.sfreq_hz
    events = [Event(sample=int(s) - rec.raw.first_samp, onset_s=(int(s) - rec.raw.first_samp) / fs,
                    value={"trial_type": None, "value": int(c), "image_id": None})
              for s, _, c in found]
    return replace(rec, events=events, events_source=f"channel {channel}")
