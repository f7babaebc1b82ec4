"""The embedded default simulated subject: THINGS-like MEG recordings generated in code.

No MEG recording can be downloaded on the machines this project runs on, so the default
subject is simulated (DESIGN.md, "What is real here, and what is simulated"):

- sensors: MNE's canonical Elekta Neuromag Vectorview geometry (306 channels: 102
  magnetometers and 204 planar gradiometers, real positions, orientations and coil types),
  a stim channel ``STI101``;
- head: a spherical conductor (``mne.make_sphere_model``) under the helmet, forward fields
  from ``mne.make_forward_solution`` (MNE's accurate coil definitions);
- brain: eight dipoles in occipital and temporal cortex, each with an early (100-200 ms)
  and a late (400-600 ms) response whose amplitudes are nonlinear functions (tanh,
  softplus) of eight latent image features; the latents are a seeded random rotation of
  the leading principal components of each picture's ``handcrafted`` embedding, so the
  information is in the pictures, not in their labels;
- noise: pink (1/f) background activity from 48 random cortical dipoles, an alpha rhythm,
  white sensor noise (Vectorview specifications), 50 Hz line interference and slow drifts;
- paradigm: THINGS-MEG timing (images on for 500 ms, one every 1.5 +/- 0.2 s), training
  images from some categories, repeated test images from other categories (zero-shot),
  catch trials, all written in the THINGS-MEG BIDS layout so that
  :func:`rtdecode.data.datasets.load_epochs` reads it like the real dataset.

It also writes ``replay_raw.fif``, a continuous 1200 Hz recording of test images (stim
channel, annotations with JSON image ids, and ``replay_events.tsv``) for ``rtdecode
replay``, and ``simulation.json``, the ground truth (sources, which latent feature drives
which response, where in time the image information lies). docs/simulated_subject.md
gives the numbers.

Threads: everything runs in the calling thread; nothing here starts a thread.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import mne

    from rtdecode.images.gallery import Gallery

__all__ = [
    "SIZES",
    "SimulationSize",
    "data_fingerprint",
    "neuromag_info",
    "simulate_subject",
    "source_patterns",
]

SFREQ_TRAIN_HZ = 200.0  # stored rate of the THINGS-like runs (a lab's downsampled copy)
SFREQ_REPLAY_HZ = 1200.0  # the replay file keeps an acquisition rate (THINGS-MEG: 1200 Hz)
IMAGE_DURATION_S = 0.5
SOA_S = 1.5
SOA_JITTER_S = 0.2  # onset-to-onset uniform in [1.3, 1.7] s, as in THINGS-MEG
LEAD_S = 3.0  # rest before the first and after the last image of a run
TRIGGER_S = 0.05  # width of a stim-channel pulse
STIM_CHANNEL = "STI101"
CATCH_CODE = 9999  # stim value of catch trials (THINGS-MEG leaves their value n/a)
SUBJECT = "01"
TASK = "main"
N_LATENT = 8
LINE_FREQ_HZ = 50.0
ENCODER_NAME = "handcrafted"

# Head placement: the sphere that models the head (radius 9 cm, centre 4 cm above the head
# origin) sits 1 cm behind and 2 cm below the centre of the helmet's sensor array, which
# leaves the usual 2-3 cm between scalp and sensors at the vertex.
_SPHERE_R0_HEAD_M = (0.0, 0.0, 0.04)
_HEAD_RADIUS_M = 0.09
_DEV_TO_HEAD_M = (0.0, -0.01, 0.06)

# Vectorview noise floors (white, per sqrt(Hz)) and DAU 16-bit steps used when writing.
_MAG_NOISE_T = 3e-15
_GRAD_NOISE_T_M = 3e-13  # 3 fT/cm
_MAG_LSB_T = 1e-15
_GRAD_LSB_T_M = 5e-14  # 0.5 fT/cm
_COIL_MAG = 3024
_COIL_GRAD = 3012

# Source moments (nAm): (image-independent evoked part, image-dependent modulation).
_EARLY_NAM = (10.0, 20.0)
_LATE_NAM = (6.0, 14.0)

# Background activity (sizes chosen so that magnetometers see ~200 fT RMS, see docs).
_N_BACKGROUND = 48
_BACKGROUND_NAM = 9.0
_ALPHA_NAM = 14.0
_LINE_MAG_T = 15e-15
_LINE_GRAD_T_M = 1e-13  # 1 fT/cm: the gradiometers reject most environmental fields
_DRIFT_MAG_T = 60e-15


@dataclass(frozen=True)
class SimulationSize:
    """How much to simulate.

    Attributes
    ----------
    name : str
        ``"tiny"``, ``"small"`` or ``"full"``.
    n_sessions : int
        Sessions (one run each). Every session shows each test image once, as THINGS-MEG
        does, so test images are repeated ``n_sessions`` times.
    train_reps : int
        Presentations of each training image over all sessions.
    max_train_trials : int
        Upper bound on training presentations (``train_reps`` is lowered to respect it).
    catch_per_session : int
        Catch trials per session (dropped by the loader).
    replay_s : float
        Duration of ``replay_raw.fif``.
    max_categories, max_images_per_category : int or None
        Use only part of the gallery (``tiny``); None uses all of it.
    test_fraction : float
        Share of categories held out for the (zero-shot) test set.
    noise_probe_s : float
        Length of the noise-only stretch simulated to measure the SNR in simulation.json.
    """

    name: str
    n_sessions: int
    train_reps: int
    max_train_trials: int
    catch_per_session: int
    replay_s: float
    max_categories: int | None = None
    max_images_per_category: int | None = None
    test_fraction: float = 0.2
    noise_probe_s: float = 120.0


SIZES: dict[str, SimulationSize] = {
    "tiny": SimulationSize(
        "tiny", 3, 6, 48, 1, 8.0, max_categories=3, max_images_per_category=4, noise_probe_s=20.0
    ),
    "small": SimulationSize("small", 4, 2, 400, 2, 60.0),
    "full": SimulationSize("full", 8, 5, 1200, 4, 90.0),
}


# --------------------------------------------------------------------------- geometry
def neuromag_info(sfreq_hz: float, *, stim: bool = True) -> mne.Info:
    """Measurement info of an Elekta Neuromag Vectorview (306 MEG channels).

    Sensor positions, orientations and coil types are MNE's canonical Vectorview
    definitions (``mne.channels.read_meg_canonical_info("neuromag")``), so layouts, forward
    models and topographies behave as with real Neuromag files. The device-to-head
    transform places the simulated head under the helmet.

    Parameters
    ----------
    sfreq_hz : float
        Sampling rate.
    stim : bool
        Append the trigger channel ``STI101``.

    Returns
    -------
    mne.Info
        306 MEG channels (``MEG 0113`` ...), plus ``STI101`` when ``stim``. Calibrations are
        the 16-bit steps used when writing (1 fT, 0.5 fT/cm).
    """
    import mne
    from mne.io.constants import FIFF

    canonical = mne.channels.read_meg_canonical_info("neuromag", verbose=False)
    names = list(canonical["ch_names"])
    types = ["grad" if ch["coil_type"] == _COIL_GRAD else "mag" for ch in canonical["chs"]]
    if stim:
        names.append(STIM_CHANNEL)
        types.append("stim")
    info = mne.create_info(names, sfreq_hz, types, verbose=False)
    trans = np.eye(4)
    trans[:3, 3] = _DEV_TO_HEAD_M
    with info._unlock():
        for ch, src in zip(info["chs"], canonical["chs"], strict=False):
            for key in ("loc", "coil_type", "coord_frame", "unit", "kind"):
                ch[key] = src[key].copy() if key == "loc" else src[key]
            ch["cal"] = _GRAD_LSB_T_M if ch["coil_type"] == _COIL_GRAD else _MAG_LSB_T
            ch["range"] = 1.0
            ch["unit_mul"] = FIFF.FIFF_UNITM_NONE
        info["dev_head_t"] = mne.transforms.Transform("meg", "head", trans)
        info["line_freq"] = LINE_FREQ_HZ
        info["lowpass"] = sfreq_hz / 2.0
        info["highpass"] = 0.0
    return info


@dataclass(frozen=True)
class Component:
    """One response of a source: a Gaussian bump whose height depends on the image.

    The moment at time ``t`` after onset is
    ``(evoked_nam + modulation_nam * f(sum(weights * z[features]))) * exp(-(t - latency)^2 / 2 width^2)``
    with ``f`` = tanh or a softplus shifted to 0 at 0, and ``z`` the image's latent features:
    every image evokes the response, and its size (even its sign) depends on the image.
    """

    latency_s: float
    width_s: float
    evoked_nam: float
    modulation_nam: float
    features: tuple[int, ...]
    weights: tuple[float, ...]
    nonlinearity: str  # "tanh" | "softplus" | "none"


@dataclass(frozen=True)
class Source:
    """A fixed-orientation dipole and its responses (positions in head coordinates, m)."""

    name: str
    region: str
    pos_m: tuple[float, float, float]
    ori: tuple[float, float, float]
    components: tuple[Component, ...]


def _nonlinear(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "tanh":
        return np.tanh(x)
    if kind == "softplus":
        return np.logaddexp(0.0, x) - np.log(2.0)  # 0 at x = 0, rectifies negative drive
    return np.zeros_like(x)


# Where the eight sources sit (relative to the sphere centre, m) and when they respond:
# (name, region, position, early latency, late latency, early features, late features)
_SOURCE_PLAN = (
    ("V1-L", "occipital (calcarine)", (-0.012, -0.062, -0.004), 0.100, 0.420, (0, 1), (2,)),
    ("V1-R", "occipital (calcarine)", (0.012, -0.062, -0.004), 0.105, 0.440, (1, 0), (3,)),
    ("LO-L", "lateral occipital", (-0.040, -0.049, -0.010), 0.150, 0.460, (2, 3), (4,)),
    ("LO-R", "lateral occipital", (0.040, -0.049, -0.010), 0.160, 0.480, (3, 2), (5,)),
    ("VT-L", "ventral temporal", (-0.044, -0.030, -0.026), 0.185, 0.520, (4,), (6, 4)),
    ("VT-R", "ventral temporal", (0.044, -0.030, -0.026), 0.195, 0.540, (5,), (7, 5)),
    ("AT-L", "anterior temporal", (-0.054, 0.002, -0.020), 0.200, 0.570, (6,), (6, 7)),
    ("AT-R", "anterior temporal", (0.054, 0.002, -0.020), 0.200, 0.590, (7,), (7, 6)),
)


def _tangential(pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector orthogonal to ``pos`` (radial dipoles are silent in MEG)."""
    radial = pos / np.linalg.norm(pos)
    v = rng.standard_normal(3)
    v -= (v @ radial) * radial
    return v / np.linalg.norm(v)


def _build_sources(rng: np.random.Generator) -> tuple[Source, ...]:
    r0 = np.asarray(_SPHERE_R0_HEAD_M)
    sources = []
    for name, region, rel, t_early, t_late, f_early, f_late in _SOURCE_PLAN:
        pos = r0 + np.asarray(rel)
        ori = _tangential(np.asarray(rel), rng)
        sign = rng.choice([-1.0, 1.0], size=2)
        comps = []
        for (lat, feats, width, amp, mod, nl), s in zip(
            (
                (t_early, f_early, 0.025, _EARLY_NAM[0], _EARLY_NAM[1], "tanh"),
                (t_late, f_late, 0.060, _LATE_NAM[0], _LATE_NAM[1], "softplus"),
            ),
            sign,
            strict=True,
        ):
            w = np.concatenate([[1.0], rng.uniform(0.4, 0.8, len(feats) - 1)])
            w *= rng.choice([-1.0, 1.0], size=len(feats))
            comps.append(
                Component(
                    latency_s=lat,
                    width_s=width,
                    evoked_nam=float(s * amp),
                    modulation_nam=float(s * mod),
                    features=tuple(int(f) for f in feats),
                    weights=tuple(float(x) for x in w / np.linalg.norm(w)),
                    nonlinearity=nl,
                )
            )
        if name.startswith("V1"):
            # offset response 100 ms after the image disappears; the same for every image
            comps.append(
                Component(IMAGE_DURATION_S + 0.11, 0.03, float(6.0 * sign[0]), 0.0, (), (), "none")
            )
        sources.append(
            Source(
                name,
                region,
                tuple(float(x) for x in pos),
                tuple(float(x) for x in ori),
                tuple(comps),
            )
        )
    return tuple(sources)


def _random_cortex(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random dipoles 4.5-7 cm from the sphere centre, tangential orientations."""
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d[:, 2] = np.abs(d[:, 2]) * 0.8 + 0.1 * d[:, 2]  # cortex lies mostly above the centre
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rel = d * rng.uniform(0.045, 0.07, (n, 1))
    ori = np.stack([_tangential(r, rng) for r in rel])
    return rel + np.asarray(_SPHERE_R0_HEAD_M), ori


def _gain_matrix(info: mne.Info, pos_m: np.ndarray, ori: np.ndarray) -> np.ndarray:
    """Sensor fields of unit dipoles, shape (n_meg, n_dipoles), T or T/m per A*m."""
    import mne

    sphere = mne.make_sphere_model(r0=_SPHERE_R0_HEAD_M, head_radius=_HEAD_RADIUS_M, verbose=False)
    src = mne.setup_volume_source_space(
        pos=dict(rr=np.asarray(pos_m, float), nn=np.asarray(ori, float)),
        sphere=sphere,
        verbose=False,
    )
    meg_info = mne.pick_info(info, mne.pick_types(info, meg=True))
    fwd = mne.make_forward_solution(
        meg_info, trans=None, src=src, bem=sphere, meg=True, eeg=False, verbose=False
    )
    kept = fwd["src"][0]["vertno"]
    if len(kept) != len(pos_m):
        raise RuntimeError(
            f"The forward model kept {len(kept)} of {len(pos_m)} dipoles; every simulated "
            "source must lie inside the head sphere."
        )
    free = fwd["sol"]["data"].reshape(len(meg_info["ch_names"]), len(pos_m), 3)
    return np.einsum("cdk,dk->cd", free, np.asarray(ori, float))


@dataclass
class _Subject:
    """Everything fixed for the simulated person: sources, fields, noise sources."""

    sources: tuple[Source, ...]
    gain_signal: np.ndarray  # (306, n_sources)
    gain_background: np.ndarray  # (306, n_background)
    gain_alpha: np.ndarray  # (306, 2)
    is_grad: np.ndarray  # (306,) bool
    line_phase: np.ndarray  # (306,)
    line_amp: np.ndarray  # (306,)


def _make_subject(rng: np.random.Generator, info: mne.Info) -> _Subject:
    sources = _build_sources(rng)
    pos = np.array([s.pos_m for s in sources])
    ori = np.array([s.ori for s in sources])
    bg_pos, bg_ori = _random_cortex(rng, _N_BACKGROUND)
    # alpha: two parieto-occipital generators
    r0 = np.asarray(_SPHERE_R0_HEAD_M)
    al_pos = r0 + np.array([[-0.025, -0.055, 0.030], [0.025, -0.055, 0.030]])
    al_ori = np.stack([_tangential(p - r0, rng) for p in al_pos])
    gain = _gain_matrix(
        info, np.concatenate([pos, bg_pos, al_pos]), np.concatenate([ori, bg_ori, al_ori])
    )
    n_s, n_b = len(sources), len(bg_pos)
    is_grad = np.array([ch["coil_type"] == _COIL_GRAD for ch in info["chs"][: gain.shape[0]]])
    line_amp = np.where(is_grad, _LINE_GRAD_T_M, _LINE_MAG_T) * rng.uniform(0.5, 1.5, len(is_grad))
    return _Subject(
        sources=sources,
        gain_signal=gain[:, :n_s],
        gain_background=gain[:, n_s : n_s + n_b],
        gain_alpha=gain[:, n_s + n_b :],
        is_grad=is_grad,
        line_phase=rng.uniform(0, 2 * np.pi, len(is_grad)),
        line_amp=line_amp,
    )


# --------------------------------------------------------------------------- signals
def _colored_noise(
    rng: np.random.Generator, n_series: int, n_times: int, sfreq_hz: float, shape: str
) -> np.ndarray:
    """Unit-variance noise, shape (n_series, n_times): ``pink`` (1/f), ``alpha`` or ``drift``."""
    spec = np.fft.rfft(rng.standard_normal((n_series, n_times)), axis=1)
    f = np.fft.rfftfreq(n_times, 1.0 / sfreq_hz)
    if shape == "pink":
        w = 1.0 / np.sqrt(np.maximum(f, 0.1))
    elif shape == "alpha":
        w = np.exp(-0.5 * ((f - 10.0) / 1.2) ** 2)
    elif shape == "drift":
        w = 1.0 / np.maximum(f, 0.005) * (f < 0.5)
    else:  # pragma: no cover - internal
        raise ValueError(shape)
    x = np.fft.irfft(spec * w, n=n_times, axis=1)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 1e-30)


def _amplitudes(sources: Sequence[Source], latents: np.ndarray) -> list[np.ndarray]:
    """Per-source (n_trials, n_components) moments in nAm for latent rows ``latents``."""
    out = []
    for s in sources:
        cols = []
        for c in s.components:
            drive = (
                latents[:, list(c.features)] @ np.asarray(c.weights)
                if c.features
                else np.zeros(len(latents))
            )
            cols.append(c.evoked_nam + c.modulation_nam * _nonlinear(c.nonlinearity, drive))
        out.append(np.stack(cols, axis=1))
    return out


def _source_activity(
    sources: Sequence[Source],
    latents: np.ndarray,
    onsets: np.ndarray,
    n_times: int,
    sfreq_hz: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Source moments (A*m), shape (n_sources, n_times), for trials at sample ``onsets``."""
    n_win = int(round(1.0 * sfreq_hz))
    t = np.arange(n_win) / sfreq_hz
    amps = _amplitudes(sources, latents)
    # trial-to-trial variability: a shared gain (attention, head position) and latency jitter
    trial_gain = rng.lognormal(0.0, 0.2, len(onsets))
    out = np.zeros((len(sources), n_times))
    for k, s in enumerate(sources):
        lat = np.array([c.latency_s for c in s.components])
        width = np.array([c.width_s for c in s.components])
        jitter = rng.standard_normal((len(onsets), len(lat))) * (0.04 * lat)
        for i, n0 in enumerate(onsets):
            bumps = np.exp(-0.5 * ((t[None, :] - (lat + jitter[i])[:, None]) / width[:, None]) ** 2)
            wave = (amps[k][i] * trial_gain[i]) @ bumps
            stop = min(n_times, n0 + n_win)
            out[k, n0:stop] += wave[: stop - n0]
    return out * 1e-9


def _simulate_run(
    subject: _Subject,
    latents: np.ndarray,
    onsets: np.ndarray,
    n_times: int,
    sfreq_hz: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sensor data (T, T/m), shape (306, n_times), float64."""
    sig = subject.gain_signal @ _source_activity(
        subject.sources, latents, onsets, n_times, sfreq_hz, rng
    )
    bg = _colored_noise(rng, subject.gain_background.shape[1], n_times, sfreq_hz, "pink")
    data = sig + subject.gain_background @ (bg * (_BACKGROUND_NAM * 1e-9))
    del bg, sig
    alpha = _colored_noise(rng, 2, n_times, sfreq_hz, "alpha")
    # alpha waxes and wanes over seconds; the envelope has mean 1
    envelope = (0.5 + _colored_noise(rng, 1, n_times, sfreq_hz, "drift") ** 2) / 1.5
    data += subject.gain_alpha @ (alpha * envelope * (_ALPHA_NAM * 1e-9))
    white = np.where(subject.is_grad, _GRAD_NOISE_T_M, _MAG_NOISE_T) * np.sqrt(sfreq_hz / 2.0)
    data += rng.standard_normal(data.shape) * white[:, None]
    t = np.arange(n_times) / sfreq_hz
    data += subject.line_amp[:, None] * np.sin(
        2 * np.pi * LINE_FREQ_HZ * t[None, :] + subject.line_phase[:, None]
    )
    drift = _colored_noise(rng, 1, n_times, sfreq_hz, "drift")[0]
    data[~subject.is_grad] += (
        _DRIFT_MAG_T * rng.uniform(0.5, 1.5, (~subject.is_grad).sum())[:, None] * drift
    )
    return data


# --------------------------------------------------------------------------- paradigm
@dataclass
class _Trial:
    trial_type: str  # "exp" | "test" | "catch"
    image: int  # gallery row, -1 for catch


@dataclass
class _Design:
    train_images: list[int]
    test_images: list[int]
    train_categories: list[str]
    test_categories: list[str]
    sessions: list[list[_Trial]] = field(default_factory=list)


def _make_design(gallery: Gallery, size: SimulationSize, rng: np.random.Generator) -> _Design:
    cats = sorted(set(gallery.categories))
    if len(cats) < 2:
        raise ValueError(
            f"The gallery at {gallery.root} has {len(cats)} category; the simulation needs at "
            "least 2 so that test categories can be held out of training."
        )
    if size.max_categories is not None:
        cats = sorted(rng.permutation(cats)[: size.max_categories].tolist())
    n_test = min(len(cats) - 1, max(1, int(round(size.test_fraction * len(cats)))))
    test_cats = sorted(rng.permutation(cats)[:n_test].tolist())
    train_cats = [c for c in cats if c not in test_cats]
    by_cat: dict[str, list[int]] = {c: [] for c in cats}
    for i, c in enumerate(gallery.categories):
        if c in by_cat:
            by_cat[c].append(i)
    if size.max_images_per_category is not None:
        by_cat = {
            c: sorted(rng.permutation(v)[: size.max_images_per_category].tolist())
            for c, v in by_cat.items()
        }
    train_images = [i for c in train_cats for i in by_cat[c]]
    test_images = [i for c in test_cats for i in by_cat[c]]
    reps = max(1, min(size.train_reps, size.max_train_trials // max(1, len(train_images))))
    presentations = rng.permutation(np.repeat(train_images, reps))
    design = _Design(train_images, test_images, train_cats, test_cats)
    for chunk in np.array_split(presentations, size.n_sessions):
        trials = [_Trial("exp", int(i)) for i in chunk]
        trials += [_Trial("test", int(i)) for i in test_images]
        trials += [_Trial("catch", -1) for _ in range(size.catch_per_session)]
        design.sessions.append([trials[j] for j in rng.permutation(len(trials))])
    return design


def _onsets(n_trials: int, sfreq_hz: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Onset samples of ``n_trials`` images and the run length in samples."""
    soa = rng.uniform(SOA_S - SOA_JITTER_S, SOA_S + SOA_JITTER_S, n_trials)
    t = LEAD_S + np.concatenate([[0.0], np.cumsum(soa[:-1])])
    onsets = np.round(t * sfreq_hz).astype(int)
    n_times = (
        int(onsets[-1] + round((LEAD_S + 1.0) * sfreq_hz))
        if n_trials
        else int(2 * LEAD_S * sfreq_hz)
    )
    return onsets, n_times


def _event_rows(
    trials: Sequence[_Trial], onsets: np.ndarray, sfreq_hz: float, gallery: Gallery, data_root: Path
) -> list[dict[str, Any]]:
    rows = []
    for tr, n0 in zip(trials, onsets, strict=True):
        row: dict[str, Any] = {
            "onset": round(float(n0 / sfreq_hz), 6),
            "duration": IMAGE_DURATION_S,
            "trial_type": tr.trial_type,
            "value": CATCH_CODE,
            "sample": int(n0),
            "image_nr": "n/a",
            "image_path": "n/a",
            "image_id": "n/a",
            "category": "n/a",
        }
        if tr.image >= 0:
            row.update(
                value=tr.image + 1,
                image_nr=tr.image + 1,
                image_path=Path(gallery.paths[tr.image])
                .resolve()
                .relative_to(data_root.resolve())
                .as_posix(),
                image_id=gallery.ids[tr.image],
                category=gallery.categories[tr.image],
            )
        rows.append(row)
    return rows


EVENT_COLUMNS = (
    "onset",
    "duration",
    "trial_type",
    "value",
    "sample",
    "image_nr",
    "image_path",
    "image_id",
    "category",
)


def _write_tsv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    lines = ["\t".join(EVENT_COLUMNS)]
    lines += ["\t".join(str(r[c]) for c in EVENT_COLUMNS) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_raw(
    path: Path,
    info: mne.Info,
    data: np.ndarray,
    rows: Sequence[dict[str, Any]],
    *,
    meas_date: _dt.datetime,
    annotate: bool,
) -> dict[str, int]:
    """Quantise to 16 bit, add triggers (and annotations), write FIF. Returns clip counts."""
    import mne

    n_meg = data.shape[0]
    cal = np.array([ch["cal"] for ch in info["chs"][:n_meg]])
    steps = np.round(data / cal[:, None])
    n_clipped = int((np.abs(steps) > 32767).sum())
    steps = np.clip(steps, -32767, 32767)
    # raw.save(fmt="short") truncates toward zero after dividing by the calibration; a
    # quarter step away from zero makes that truncation land on the rounded integer.
    full = np.zeros((len(info["ch_names"]), data.shape[1]))
    full[:n_meg] = (steps + 0.25 * np.sign(steps)) * cal[:, None]
    width = max(1, int(round(TRIGGER_S * info["sfreq"])))
    stim = full[info["ch_names"].index(STIM_CHANNEL)]
    for r in rows:
        stim[r["sample"] : r["sample"] + width] = r["value"]
    raw = mne.io.RawArray(full, info, verbose=False)
    raw.set_meas_date(meas_date)
    if annotate:
        desc = [json.dumps(_marker_value(r), separators=(",", ":")) for r in rows]
        raw.set_annotations(
            mne.Annotations(
                [r["onset"] for r in rows], [r["duration"] for r in rows], desc, orig_time=meas_date
            )
        )
    raw.save(path, fmt="short", overwrite=True, verbose=False)
    return {"clipped_samples": n_clipped}


def _marker_value(row: dict[str, Any]) -> dict[str, Any]:
    """The marker payload of an event row (what the replayed marker stream carries)."""
    if row["trial_type"] == "catch":
        return {"trial_type": "catch", "value": row["value"]}
    return {
        "image_id": row["image_id"],
        "trial_type": row["trial_type"],
        "category": row["category"],
        "image_nr": row["image_nr"],
    }


# --------------------------------------------------------------------------- gallery
def _gallery_and_features(
    images_dir: Path, seed: int, progress: bool
) -> tuple[Gallery, np.ndarray, str]:
    """Build the demo gallery and return it with its handcrafted embeddings (N, D)."""
    from rtdecode.images import get_image_encoder, make_demo_gallery

    gallery = make_demo_gallery(images_dir, seed=seed, progress=False)
    encoder = get_image_encoder(ENCODER_NAME)
    feats = np.asarray(gallery.embeddings(encoder, progress=False), dtype=np.float64)
    return gallery, feats.reshape(len(feats), -1), str(encoder.name)


def _latents(features: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Latent image features (N, N_LATENT): a fixed random rotation of the leading PCs.

    The encoder features are z-scored, their ``N_LATENT`` leading principal components
    (unit variance each) are mixed by a seeded random rotation, so that every latent blends
    several visual properties, and the subspace the brain carries is the one that explains
    most of the embedding (a random projection of all 492 dimensions would leave the
    gallery's retrieval structure mostly outside the simulated brain).
    """
    z = (features - features.mean(0)) / np.maximum(features.std(0), 1e-8)
    u, s, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    k = min(N_LATENT, len(s))
    scores = u[:, :k] * np.sqrt(len(z))
    rotation, _ = np.linalg.qr(rng.standard_normal((k, k)))
    lat = scores @ rotation
    lat = (lat - lat.mean(0)) / np.maximum(lat.std(0), 1e-8)
    if k < N_LATENT:  # fewer images than latents (a tiny gallery): pad with zeros
        lat = np.pad(lat, ((0, 0), (0, N_LATENT - k)))
    return lat, vt[:k].T @ rotation


# --------------------------------------------------------------------------- ground truth
def _noise_free(subject: _Subject, latents: np.ndarray, sfreq_hz: float) -> np.ndarray:
    """Sensor responses without noise or trial variability, shape (n_images, 306, 1 s)."""
    t = np.arange(int(sfreq_hz)) / sfreq_hz
    amps = _amplitudes(subject.sources, latents)
    moments = np.zeros((len(latents), len(subject.sources), len(t)))
    for k, s in enumerate(subject.sources):
        bumps = np.stack(
            [np.exp(-0.5 * ((t - c.latency_s) / c.width_s) ** 2) for c in s.components]
        )
        moments[:, k] = amps[k] @ bumps
    return np.einsum("cs,nst->nct", subject.gain_signal, moments * 1e-9)


def _noise_variance(subject: _Subject, probe_s: float, sfreq_hz: float) -> np.ndarray:
    """Per-channel variance of the simulated noise in the 1-40 Hz band, shape (306,)."""
    n_times = int(probe_s * sfreq_hz)
    empty = np.zeros((0, N_LATENT))
    noise = _simulate_run(
        subject, empty, np.zeros(0, int), n_times, sfreq_hz, np.random.default_rng(12345)
    )
    spec = np.fft.rfft(noise, axis=1)
    f = np.fft.rfftfreq(n_times, 1 / sfreq_hz)
    spec[:, (f < 1.0) | (f > 40.0)] = 0
    return np.fft.irfft(spec, n=n_times, axis=1).var(axis=1)


def _ground_truth_numbers(
    subject: _Subject, latents: np.ndarray, probe_s: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """SNR figures and the time course of image information, over all gallery images.

    Information at time t is the between-image variance of the noise-free response, per
    channel in units of that channel's noise variance, summed over channels.
    """
    sfreq = SFREQ_TRAIN_HZ
    noise_var = _noise_variance(subject, probe_s, sfreq)
    resp = _noise_free(subject, latents, sfreq)
    t = np.arange(resp.shape[-1]) / sfreq
    mean = resp.mean(axis=0)
    evoked_snr = mean**2 / noise_var[:, None]
    mags = ~subject.is_grad
    early = t < 0.8
    snr = {
        "band_hz": [1.0, 40.0],
        "noise_rms_mag_fT": float(np.sqrt(noise_var[mags]).mean() * 1e15),
        "noise_rms_grad_fT_per_cm": float(np.sqrt(noise_var[~mags]).mean() * 1e13),
        "evoked_peak_mag_fT": float(np.abs(mean[mags]).max() * 1e15),
        "evoked_peak_grad_fT_per_cm": float(np.abs(mean[~mags]).max() * 1e13),
        "single_trial_peak_snr_db_best_sensor": float(10 * np.log10(evoked_snr.max())),
        "single_trial_snr_db_all_sensors_0_800ms": float(
            10 * np.log10(evoked_snr[:, early].mean())
        ),
        "image_information_fraction": float(resp.var(axis=0).sum() / (mean**2).sum()),
    }
    info_t = (resp.var(axis=0) / noise_var[:, None]).sum(axis=0)
    win = int(round(0.25 * sfreq))
    win_curve = np.convolve(info_t, np.ones(win) / win, mode="valid")
    step = int(round(0.01 * sfreq))
    info = {
        "times_ms": [round(1000 * x, 1) for x in t[::step]],
        "information": [float(x) for x in info_t[::step] / info_t.max()],
        "evoked_power": [float(x) for x in evoked_snr.sum(0)[::step] / evoked_snr.sum(0).max()],
        "peak_information_ms": float(1000 * t[int(np.argmax(info_t))]),
        "window_250ms_offsets_ms": [round(1000 * x, 1) for x in t[: len(win_curve)][::step]],
        "window_250ms_information": [float(x) for x in win_curve[::step] / win_curve.max()],
        "best_window_250ms_offset_ms": float(1000 * t[int(np.argmax(win_curve))]),
    }
    return snr, info


# --------------------------------------------------------------------------- entry point
def simulate_subject(
    out_dir: str | Path, seed: int = 0, size: str = "full", *, progress: bool = True
) -> Path:
    """Write the simulated subject: THINGS-like BIDS runs, a replay file and the truth.

    Parameters
    ----------
    out_dir : path-like
        Folder to write (created; existing files of a previous simulation are replaced).
    seed : int
        Everything (gallery, feature projection, sources, design, noise) follows from it.
    size : {"full", "small", "tiny"}
        ``full``: 8 sessions, 1352 trials, a 90 s replay file (< 2 min on 2 cores).
        ``small``: 4 sessions, 568 trials, 60 s replay. ``tiny``: 3 sessions, 63 trials
        from 3 categories, 8 s replay, for tests (seconds). Counts are for the 240-image
        demo gallery.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``out_dir``, holding ``images/`` (the demo gallery),
        ``sub-01/ses-XX/meg/sub-01_ses-XX_task-main_run-01_meg.fif`` (+ ``_events.tsv``,
        ``_meg.json``), ``replay_raw.fif`` + ``replay_events.tsv``, ``simulation.json``,
        ``dataset_description.json`` and ``participants.tsv``.
    """
    from tqdm.auto import tqdm

    if size not in SIZES:
        raise ValueError(f"Unknown simulation size {size!r}; use one of {sorted(SIZES)}.")
    spec = SIZES[size]
    out = Path(out_dir).expanduser()
    if (out / "simulation.json").is_file():
        # an earlier simulation: its sessions may outnumber this one's, drop them all
        shutil.rmtree(out / f"sub-{SUBJECT}", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    # independent streams, so that e.g. a longer replay file leaves the sessions unchanged
    ss_model, ss_design, ss_replay, *ss_runs = np.random.SeedSequence(seed).spawn(
        3 + spec.n_sessions
    )
    rng_model, rng_design, rng_replay = (
        np.random.default_rng(s) for s in (ss_model, ss_design, ss_replay)
    )

    bar = tqdm(
        total=spec.n_sessions + 4, desc=f"simulating ({size})", unit="step", disable=not progress
    )
    with bar:
        bar.set_postfix_str("gallery")
        gallery, features, encoder_name = _gallery_and_features(out / "images", seed, progress)
        latents, _ = _latents(features, rng_model)
        bar.update()

        bar.set_postfix_str("forward model")
        info_train = neuromag_info(SFREQ_TRAIN_HZ)
        subject = _make_subject(rng_model, info_train)
        design = _make_design(gallery, spec, rng_design)
        bar.update()

        _write_bids_sidecars(out, seed, size)
        clipped = 0
        runs = []
        for ses, trials in enumerate(design.sessions, start=1):
            bar.set_postfix_str(f"session {ses}/{spec.n_sessions}")
            rng = np.random.default_rng(ss_runs[ses - 1])
            onsets, n_times = _onsets(len(trials), SFREQ_TRAIN_HZ, rng)
            lat = np.stack(
                [latents[t.image] if t.image >= 0 else np.zeros(N_LATENT) for t in trials]
            )
            data = _simulate_run(subject, lat, onsets, n_times, SFREQ_TRAIN_HZ, rng)
            meg_dir = out / f"sub-{SUBJECT}" / f"ses-{ses:02d}" / "meg"
            meg_dir.mkdir(parents=True, exist_ok=True)
            stem = f"sub-{SUBJECT}_ses-{ses:02d}_task-{TASK}_run-01"
            rows = _event_rows(trials, onsets, SFREQ_TRAIN_HZ, gallery, out)
            _write_tsv(meg_dir / f"{stem}_events.tsv", rows)
            date = _dt.datetime(2024, 1, 1, 9, tzinfo=_dt.UTC) + _dt.timedelta(days=7 * (ses - 1))
            clipped += _write_raw(
                meg_dir / f"{stem}_meg.fif", info_train, data, rows, meas_date=date, annotate=False
            )["clipped_samples"]
            _write_json(meg_dir / f"{stem}_meg.json", _meg_sidecar(SFREQ_TRAIN_HZ, n_times))
            runs.append(
                {
                    "path": (meg_dir / f"{stem}_meg.fif").relative_to(out).as_posix(),
                    "n_trials": len(trials),
                    "duration_s": n_times / SFREQ_TRAIN_HZ,
                }
            )
            del data
            bar.update()

        bar.set_postfix_str("replay file")
        n_replay = max(2, int((spec.replay_s - 2 * LEAD_S) // SOA_S))
        order = np.resize(rng_replay.permutation(design.test_images), n_replay).tolist()
        trials = [_Trial("test", int(i)) for i in order]
        if n_replay >= 8:  # an occasional catch trial, as in a real session
            trials[n_replay // 2] = _Trial("catch", -1)
        info_replay = neuromag_info(SFREQ_REPLAY_HZ)
        onsets, _ = _onsets(len(trials), SFREQ_REPLAY_HZ, rng_replay)
        n_times = int(round(spec.replay_s * SFREQ_REPLAY_HZ))
        lat = np.stack([latents[t.image] if t.image >= 0 else np.zeros(N_LATENT) for t in trials])
        data = _simulate_run(subject, lat, onsets, n_times, SFREQ_REPLAY_HZ, rng_replay)
        rows = _event_rows(trials, onsets, SFREQ_REPLAY_HZ, gallery, out)
        _write_tsv(out / "replay_events.tsv", rows)
        date = _dt.datetime(2024, 3, 1, 9, tzinfo=_dt.UTC)
        clipped += _write_raw(
            out / "replay_raw.fif", info_replay, data, rows, meas_date=date, annotate=True
        )["clipped_samples"]
        del data
        bar.update()

        bar.set_postfix_str("ground truth")
        snr, information = _ground_truth_numbers(subject, latents, spec.noise_probe_s)
        truth = {
            "format": "rtdecode-simulation/1",
            "seed": seed,
            "size": asdict(spec),
            "subject": f"sub-{SUBJECT}",
            "sensors": "Elekta Neuromag Vectorview 306 (MNE canonical geometry), STI101 trigger",
            "head_model": {
                "type": "sphere",
                "r0_head_m": list(_SPHERE_R0_HEAD_M),
                "head_radius_m": _HEAD_RADIUS_M,
                "dev_head_translation_m": list(_DEV_TO_HEAD_M),
            },
            "sfreq_hz": {"runs": SFREQ_TRAIN_HZ, "replay": SFREQ_REPLAY_HZ},
            "timing": {
                "image_duration_s": IMAGE_DURATION_S,
                "soa_s": [SOA_S - SOA_JITTER_S, SOA_S + SOA_JITTER_S],
                "trigger_width_s": TRIGGER_S,
                "catch_code": CATCH_CODE,
            },
            "image_features": {
                "encoder": encoder_name,
                "n_latent": N_LATENT,
                "latent": "leading principal components of the z-scored encoder features, mixed by a seeded random rotation, z-scored",
                "ids": list(gallery.ids),
                "values": [[round(float(v), 5) for v in row] for row in latents],
            },
            "response_model": "moment = (evoked + modulation * f(weights . latent[features])) * gaussian(t; latency, width), per-trial gain ~ lognormal(0, 0.2), latency jitter 4% of latency",
            "sources": [asdict(s) for s in subject.sources],
            "noise": {
                "background_dipoles": _N_BACKGROUND,
                "background_rms_nAm": _BACKGROUND_NAM,
                "background_spectrum": "1/f (pink) above 0.1 Hz",
                "alpha_rms_nAm": _ALPHA_NAM,
                "alpha_hz": 10.0,
                "sensor_white_mag_fT_per_sqrtHz": _MAG_NOISE_T * 1e15,
                "sensor_white_grad_fT_per_cm_per_sqrtHz": _GRAD_NOISE_T_M * 1e13,
                "line_hz": LINE_FREQ_HZ,
                "line_mag_fT": _LINE_MAG_T * 1e15,
                "drift_mag_fT": _DRIFT_MAG_T * 1e15,
            },
            "snr": snr,
            "information": information,
            "split": {
                "train_categories": design.train_categories,
                "test_categories": design.test_categories,
                "n_train_images": len(design.train_images),
                "n_test_images": len(design.test_images),
                "test_repetitions": spec.n_sessions,
            },
            "runs": runs,
            "replay": {
                "path": "replay_raw.fif",
                "events": "replay_events.tsv",
                "n_trials": len(trials),
                "duration_s": spec.replay_s,
            },
            "clipped_samples": clipped,
            "elapsed_s": round(time.perf_counter() - t_start, 2),
        }
        _write_json(out / "simulation.json", truth)
        bar.update()
    return out


def _meg_sidecar(sfreq_hz: float, n_times: int) -> dict[str, Any]:
    return {
        "TaskName": TASK,
        "Manufacturer": "Elekta",
        "ManufacturersModelName": "Vectorview (simulated)",
        "SamplingFrequency": sfreq_hz,
        "PowerLineFrequency": LINE_FREQ_HZ,
        "DewarPosition": "upright",
        "SoftwareFilters": "n/a",
        "DigitizedLandmarks": False,
        "DigitizedHeadPoints": False,
        "MEGChannelCount": 306,
        "RecordingDuration": n_times / sfreq_hz,
        "RecordingType": "continuous",
    }


def _write_bids_sidecars(out: Path, seed: int, size: str) -> None:
    _write_json(
        out / "dataset_description.json",
        {
            "Name": f"rtdecode simulated subject (seed {seed}, size {size})",
            "BIDSVersion": "1.8.0",
            "DatasetType": "raw",
            "GeneratedBy": [
                {"Name": "rtdecode simulate", "Description": "simulated MEG, not brain data"}
            ],
        },
    )
    (out / "participants.tsv").write_text(f"participant_id\nsub-{SUBJECT}\n", encoding="utf-8")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def source_patterns(truth: dict[str, Any] | str | Path) -> tuple[list[str], np.ndarray]:
    """Sensor patterns of the simulated sources, to check data against the ground truth.

    Parameters
    ----------
    truth : dict or path-like
        ``simulation.json`` (or its path, or the simulation folder).

    Returns
    -------
    ch_names : list of str
        The 306 MEG channels.
    patterns : ndarray, float64, shape (306, n_sources)
        Field of each source at unit moment (T or T/m per A*m), in ``truth["sources"]``
        order.
    """
    if not isinstance(truth, dict):
        path = Path(truth)
        path = path / "simulation.json" if path.is_dir() else path
        truth = json.loads(path.read_text(encoding="utf-8"))
    info = neuromag_info(SFREQ_TRAIN_HZ, stim=False)
    pos = np.array([s["pos_m"] for s in truth["sources"]])
    ori = np.array([s["ori"] for s in truth["sources"]])
    return list(info["ch_names"]), _gain_matrix(info, pos, ori)


def data_fingerprint(path: str | Path) -> str:
    """SHA-1 of a FIF recording's samples (not its file bytes, which hold write times)."""
    import mne

    raw = mne.io.read_raw_fif(path, preload=True, verbose=False)
    return hashlib.sha1(np.ascontiguousarray(raw.get_data()).tobytes()).hexdigest()
