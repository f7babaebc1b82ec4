"""The cohort: subjects (sensors, head, sources, noise), their sessions, replay files, truth.

Threads: everything runs in the calling thread; nothing here starts a thread.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode.data.simulate import design as _design
from rtdecode.data.simulate.design import CATCH_CODE, LEAD_S, SOA_JITTER_S, SOA_S, Trial
from rtdecode.data.simulate.noise import NoiseModel, add_noise, alpha_generators, random_cortex
from rtdecode.data.simulate.sensors import (
    CTF,
    HEAD_RADIUS_M,
    NEUROMAG,
    SPECS,
    SPHERE_R0_HEAD_M,
    STIM_CHANNELS,
    channel_kinds,
    dev_head_transform,
    gain_matrix,
    sensor_info,
)
from rtdecode.data.simulate.sources import (
    IMAGE_DURATION_S,
    Source,
    SourceRecipe,
    build_sources,
    image_latents,
    noise_free_moments,
    source_activity,
)
from rtdecode.data.simulate.writing import (
    TASK,
    TRIGGER_S,
    meg_sidecar,
    write_dataset_sidecars,
    write_json,
    write_raw,
    write_tsv,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import mne

    from rtdecode.images.gallery import Gallery

SFREQ_TRAIN_HZ = 200.0  # stored rate of the THINGS-like runs (a lab's downsampled copy)
SFREQ_REPLAY_HZ = 1200.0  # the replay files keep an acquisition rate (THINGS-MEG: 1200 Hz)
ENCODER_NAME = "handcrafted"
N_CATEGORY = 8  # category-level latents (capped at n_categories - 1)
N_EXEMPLAR = 24  # exemplar-level latents
FORMAT = "rtdecode-simulation/2"


@dataclass(frozen=True)
class SimulationSize:
    """How much to simulate, per subject.

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
        Duration of each subject's held-out replay session.
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


@dataclass(frozen=True)
class Difficulty:
    """How hard a simulated subject is to decode.

    Attributes
    ----------
    name : str
    sources : SourceRecipe
        Sources per region, features per response, moments and the mix of nonlinearities.
    jitter_s : float
        Trial-to-trial latency jitter shared by all responses (sd).
    gain_sd : float
        Trial-to-trial gain, lognormal sd in log units.
    n_background : int
        Background cortical dipoles.
    background_nam, alpha_nam : float
        RMS moments of each background and alpha dipole (before a subject's own scale).
    """

    name: str
    sources: SourceRecipe
    jitter_s: float
    gain_sd: float
    n_background: int
    background_nam: float
    alpha_nam: float


DIFFICULTIES: dict[str, Difficulty] = {
    "demo": Difficulty(
        "demo",
        SourceRecipe(
            per_region=6,
            n_features=6,
            evoked_nam=10.0,
            modulation_nam=50.0,
            offset_scale=0.6,
            spread=1.5,
            mix={"tanh": 0.7, "relu": 0.3},
        ),
        jitter_s=0.008,
        gain_sd=0.15,
        n_background=64,
        background_nam=7.0,
        alpha_nam=12.0,
    ),
    "paper": Difficulty(
        "paper",
        SourceRecipe(
            per_region=4,
            n_features=6,
            evoked_nam=8.0,
            modulation_nam=11.0,
            offset_scale=0.6,
            spread=1.0,
            mix={"tanh": 0.15, "relu": 0.15, "square": 0.4, "gate": 0.3},
        ),
        jitter_s=0.025,
        gain_sd=0.35,
        n_background=64,
        background_nam=14.0,
        alpha_nam=20.0,
    ),
}


def system_of(index: int) -> str:
    """Sensor system of the ``index``-th subject (0-based): Neuromag and CTF alternate."""
    return NEUROMAG if index % 2 == 0 else CTF


@dataclass
class SubjectModel:
    """Everything fixed for one simulated person: placement, sources, fields, noise."""

    label: str  # "01"
    system: str
    dev_head_t: np.ndarray  # (4, 4)
    sources: tuple[Source, ...]
    gain_signal: np.ndarray  # (n_meg, n_sources)
    noise: NoiseModel
    placement: dict[str, Any]

    def info(self, sfreq_hz: float, *, stim: bool = True) -> mne.Info:
        """The mne.Info of this subject's sensors at ``sfreq_hz`` (a stim channel when ``stim``)."""
        return sensor_info(self.system, sfreq_hz, stim=stim, dev_head_t=self.dev_head_t)


def make_subject(
    label: str, system: str, difficulty: Difficulty, n_latent: int, n_category: int,
    rng: np.random.Generator,
) -> SubjectModel:
    """Draw one subject: head placement, source geometry and timing, noise."""
    translation = rng.normal(0.0, 0.004, 3)
    angles = np.deg2rad(rng.normal(0.0, 3.0, 3))
    dev_head_t = dev_head_transform(system, translation, angles)
    placement = {
        "latency_shift_s": float(rng.normal(0.0, 0.008)),
        "amplitude_scale": float(rng.lognormal(0.0, 0.15)),
        "noise_scale": float(rng.uniform(0.85, 1.2)),
        "head_translation_m": [float(x) for x in translation],
        "head_rotation_deg": [float(x) for x in np.rad2deg(angles)],
    }
    sources = build_sources(
        rng,
        difficulty.sources,
        n_category,
        n_latent,
        region_shift_m=0.004,
        latency_shift_s=placement["latency_shift_s"],
        amplitude_scale=placement["amplitude_scale"],
    )
    bg_pos, bg_ori = random_cortex(rng, difficulty.n_background)
    al_pos, al_ori = alpha_generators(rng)
    info = sensor_info(system, SFREQ_TRAIN_HZ, stim=False, dev_head_t=dev_head_t)
    pos = np.concatenate([[s.pos_m for s in sources], bg_pos, al_pos])
    ori = np.concatenate([[s.ori for s in sources], bg_ori, al_ori])
    gain = gain_matrix(info, pos, ori)
    n_s, n_b = len(sources), len(bg_pos)
    kinds = channel_kinds(info)
    grad = kinds == "grad"
    spec = SPECS[system]
    white = np.where(grad, spec.white_t["grad"], spec.white_t["mag"]) * rng.uniform(
        0.8, 1.25, len(kinds)
    )
    # planar gradiometers reject the distant fields of mains and drifts
    line = np.where(grad, 1e-13, 15e-15) * rng.uniform(0.5, 1.5, len(kinds))
    drift = np.where(grad, 0.0, 60e-15)
    scale = placement["noise_scale"]
    noise = NoiseModel(
        gain_background=gain[:, n_s : n_s + n_b],
        gain_alpha=gain[:, n_s + n_b :],
        background_nam=difficulty.background_nam * scale,
        alpha_nam=difficulty.alpha_nam * scale * float(rng.uniform(0.7, 1.3)),
        alpha_hz=float(rng.uniform(8.5, 11.5)),
        white=white,
        line_amp=line,
        line_phase=rng.uniform(0, 2 * np.pi, len(kinds)),
        drift_amp=drift,
    )
    return SubjectModel(label, system, dev_head_t, sources, gain[:, :n_s], noise, placement)


def simulate_run(
    subject: SubjectModel,
    difficulty: Difficulty,
    latents: np.ndarray,
    onset_samples: np.ndarray,
    n_times: int,
    sfreq_hz: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sensor data (T, T/m), shape (n_meg, n_times), float64, for trials at ``onset_samples``."""
    moments = source_activity(
        subject.sources,
        latents,
        onset_samples,
        n_times,
        sfreq_hz,
        rng,
        jitter_s=difficulty.jitter_s,
        gain_sd=difficulty.gain_sd,
    )
    data = subject.gain_signal @ moments
    del moments
    return add_noise(data, subject.noise, sfreq_hz, rng)


# --------------------------------------------------------------------------- ground truth
def _noise_variance(subject: SubjectModel, probe_s: float, sfreq_hz: float) -> np.ndarray:
    """Per-channel variance of the simulated noise in the 1-40 Hz band, shape (n_meg,)."""
    n_times = int(probe_s * sfreq_hz)
    noise = add_noise(
        np.zeros((len(subject.gain_signal), n_times)), subject.noise, sfreq_hz,
        np.random.default_rng(12345),
    )
    spec = np.fft.rfft(noise, axis=1)
    f = np.fft.rfftfreq(n_times, 1 / sfreq_hz)
    spec[:, (f < 1.0) | (f > 40.0)] = 0
    return np.fft.irfft(spec, n=n_times, axis=1).var(axis=1)


def _peak_ms(curve: np.ndarray, t: np.ndarray, lo: float, hi: float) -> float:
    sel = (t >= lo) & (t < hi)
    return float(1000 * t[sel][int(np.argmax(curve[sel]))])


def ground_truth_numbers(
    subject: SubjectModel, latents: np.ndarray, probe_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """SNR figures and the time course of image information, over all gallery images.

    Information at time t is the between-image variance of the noise-free response, per
    channel in units of that channel's noise variance, summed over channels.
    ``linear_share`` is the share of that variance a linear function of the latents
    explains (least squares over the gallery): the rest needs a nonlinear readout.
    """
    sfreq = SFREQ_TRAIN_HZ
    noise_var = _noise_variance(subject, probe_s, sfreq)
    resp = np.einsum(
        "cs,nst->nct", subject.gain_signal, noise_free_moments(subject.sources, latents, sfreq)
    )
    t = np.arange(resp.shape[-1]) / sfreq
    mean = resp.mean(axis=0)
    evoked_snr = mean**2 / noise_var[:, None]
    kinds = channel_kinds(subject.info(sfreq, stim=False))
    mags, grads = kinds == "mag", kinds == "grad"
    early = t < 0.8
    centred = (resp - mean) / np.sqrt(noise_var)[None, :, None]
    flat = centred.reshape(len(resp), -1)
    design = np.concatenate([np.ones((len(latents), 1)), latents], axis=1)
    coef, *_ = np.linalg.lstsq(design, flat, rcond=None)
    linear_share = float(((design @ coef) ** 2).sum() / max((flat**2).sum(), 1e-30))
    unit = "fT" if subject.system == NEUROMAG else "fT (axial gradiometer)"
    snr: dict[str, Any] = {
        "band_hz": [1.0, 40.0],
        "noise_rms_mag_fT": float(np.sqrt(noise_var[mags]).mean() * 1e15),
        "evoked_peak_mag_fT": float(np.abs(mean[mags]).max() * 1e15),
        "mag_unit": unit,
        "single_trial_peak_snr_db_best_sensor": float(10 * np.log10(evoked_snr.max())),
        "single_trial_snr_db_all_sensors_0_800ms": float(
            10 * np.log10(evoked_snr[:, early].mean())
        ),
        "image_snr_db_0_800ms": float(
            10 * np.log10((resp.var(axis=0)[:, early] / noise_var[:, None]).mean())
        ),
        "image_information_fraction": float(resp.var(axis=0).sum() / (mean**2).sum()),
        "linear_share": linear_share,
    }
    if grads.any():
        snr["noise_rms_grad_fT_per_cm"] = float(np.sqrt(noise_var[grads]).mean() * 1e13)
        snr["evoked_peak_grad_fT_per_cm"] = float(np.abs(mean[grads]).max() * 1e13)
    info_t = (resp.var(axis=0) / noise_var[:, None]).sum(axis=0)
    evoked_t = evoked_snr.sum(0)
    win = int(round(0.25 * sfreq))
    win_curve = np.convolve(info_t, np.ones(win) / win, mode="valid")
    step = int(round(0.01 * sfreq))
    info = {
        "times_ms": [round(1000 * x, 1) for x in t[::step]],
        "information": [float(x) for x in info_t[::step] / info_t.max()],
        "evoked_power": [float(x) for x in evoked_t[::step] / evoked_t.max()],
        "peak_information_ms": float(1000 * t[int(np.argmax(info_t))]),
        "onset_peak_ms": _peak_ms(info_t, t, 0.0, IMAGE_DURATION_S),
        "offset_peak_ms": _peak_ms(info_t, t, IMAGE_DURATION_S + 0.05, 1.0),
        "offset_to_onset_peak_ratio": float(
            info_t[t >= IMAGE_DURATION_S + 0.05].max() / info_t[t < IMAGE_DURATION_S].max()
        ),
        "window_250ms_offsets_ms": [round(1000 * x, 1) for x in t[: len(win_curve)][::step]],
        "window_250ms_information": [float(x) for x in win_curve[::step] / win_curve.max()],
        "best_window_250ms_offset_ms": float(1000 * t[int(np.argmax(win_curve))]),
    }
    return snr, info


def latent_retrieval_ceiling(
    latents: np.ndarray, features: np.ndarray, train: list[int], test: list[int]
) -> dict[str, float]:
    """Retrieval among the test images from noise-free latents (a ridge map to the embedding).

    The best any decoder of this "brain" could do: the latents carry this much of the
    embedding. Top-1 and top-5 over the test images, cosine similarity.
    """
    z = (features - features.mean(0)) / np.maximum(features.std(0), 1e-8)
    a = np.concatenate([latents, np.ones((len(latents), 1))], axis=1)
    at = a[train]
    w = np.linalg.solve(at.T @ at + 1e-3 * np.eye(a.shape[1]), at.T @ z[train])
    pred = a[test] @ w
    cand = z[test]
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    cand = cand / np.linalg.norm(cand, axis=1, keepdims=True)
    sim = pred @ cand.T
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)
    return {"top1": float((rank < 1).mean()), "top5": float((rank < 5).mean())}


# --------------------------------------------------------------------------- entry points
def _gallery_and_features(images_dir: Path, seed: int) -> tuple[Gallery, np.ndarray, str]:
    """Build the demo gallery and return it with its handcrafted embeddings (N, D)."""
    from rtdecode.images import get_image_encoder, make_demo_gallery

    gallery = make_demo_gallery(images_dir, seed=seed, progress=False)
    encoder = get_image_encoder(ENCODER_NAME)
    feats = np.asarray(gallery.embeddings(encoder, progress=False), dtype=np.float64)
    return gallery, feats.reshape(len(feats), -1), str(encoder.name)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _trial_latents(latents: np.ndarray, trials: list[Trial]) -> np.ndarray:
    zero = np.zeros(latents.shape[1])
    return np.stack([latents[t.image] if t.image >= 0 else zero for t in trials])


def _simulate_and_write(
    subject: SubjectModel, diff: Difficulty, latents: np.ndarray, trials: list[Trial],
    info: mne.Info, gallery: Gallery, out: Path, fif: Path, tsv: Path, date: _dt.datetime,
    rng: np.random.Generator, *, n_times: int | None, annotate: bool,
) -> tuple[int, int]:
    """Simulate one run of ``trials`` and write its FIF (and events); (clipped, n_times).

    A run lasts as long as its trials unless ``n_times`` is given; ``annotate`` adds the
    JSON annotations a replayed marker stream carries.
    """
    sfreq_hz = info["sfreq"]
    onset_samples, n_needed = _design.onsets(len(trials), sfreq_hz, rng)
    n_times = n_needed if n_times is None else n_times
    data = simulate_run(
        subject, diff, _trial_latents(latents, trials), onset_samples, n_times, sfreq_hz, rng
    )
    rows = _design.event_rows(trials, onset_samples, sfreq_hz, gallery, out)
    write_tsv(tsv, rows)
    n_clipped = write_raw(fif, info, data, rows, meas_date=date, annotate=annotate)
    return n_clipped, n_times


def simulate_cohort(
    out_dir: str | Path,
    seed: int = 0,
    n_subjects: int = 4,
    difficulty: str = "demo",
    size: str = "full",
    *,
    progress: bool = True,
) -> Path:
    """Write a simulated THINGS-like cohort: BIDS runs, held-out replay sessions, the truth.

    Parameters
    ----------
    out_dir : path-like
        Folder to write (created; files of a previous simulation there are replaced).
    seed : int
        Everything (gallery, features, split, subjects, sessions, noise) follows from it.
        Subject ``k`` is the same whatever ``n_subjects`` is.
    n_subjects : int
        Subjects ``sub-01`` ...; odd-numbered ones wear the Neuromag 306 system, even ones
        the CTF-275-style system.
    difficulty : {"demo", "paper"}
        ``demo``: easy, image information plain in single 250 ms windows. ``paper``:
        weaker, more variable and more nonlinear responses in more noise, so that
        single-trial retrieval is about as hard as on THINGS-MEG.
    size : {"full", "small", "tiny"}
        Sessions and trials per subject (:data:`SIZES`). ``full``: 8 sessions, 1352
        trials, a 90 s replay session. ``tiny``: 3 sessions, 63 trials, for tests.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``out_dir``, holding ``images/`` (the demo gallery),
        ``sub-XX/ses-YY/meg/sub-XX_ses-YY_task-main_run-01_meg.fif`` (+ ``_events.tsv``,
        ``_meg.json``), ``replay/sub-XX_task-main_replay_raw.fif`` (+ ``_events.tsv``), one
        held-out session per subject at 1200 Hz, ``replay_raw.fif`` + ``replay_events.tsv``
        (sub-01's), ``simulation.json``, ``dataset_description.json``, ``participants.tsv``.
    """
    from tqdm.auto import tqdm

    if size not in SIZES:
        raise ValueError(f"Unknown simulation size {size!r}; use one of {sorted(SIZES)}.")
    if difficulty not in DIFFICULTIES:
        raise ValueError(
            f"Unknown difficulty {difficulty!r}; use one of {sorted(DIFFICULTIES)}."
        )
    if int(n_subjects) < 1:
        raise ValueError(f"n_subjects must be at least 1, not {n_subjects!r}.")
    spec, diff = SIZES[size], DIFFICULTIES[difficulty]
    out = Path(out_dir).expanduser()
    if (out / "simulation.json").is_file():
        # an earlier simulation: its subjects and sessions may outnumber this one's
        for old in [*out.glob("sub-*"), out / "replay"]:
            shutil.rmtree(old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay").mkdir(exist_ok=True)
    t_start = time.perf_counter()
    # independent streams: a subject's data do not depend on how many others there are
    ss_features, ss_split, *ss_subjects = np.random.SeedSequence(seed).spawn(2 + n_subjects)
    labels = [f"{k + 1:02d}" for k in range(n_subjects)]

    bar = tqdm(
        total=1 + n_subjects * (spec.n_sessions + 3),
        desc=f"simulating {n_subjects} subject(s) ({size}, {difficulty})",
        unit="step",
        disable=not progress,
    )
    with bar:
        bar.set_postfix_str("gallery")
        gallery, features, encoder_name = _gallery_and_features(out / "images", seed)
        latents, explained = image_latents(
            features, gallery.categories, N_CATEGORY, N_EXEMPLAR, np.random.default_rng(ss_features)
        )
        n_category = min(N_CATEGORY, len(set(gallery.categories)) - 1)
        split = _design.make_split(
            gallery,
            np.random.default_rng(ss_split),
            test_fraction=spec.test_fraction,
            max_categories=spec.max_categories,
            max_images_per_category=spec.max_images_per_category,
        )
        write_dataset_sidecars(
            out, f"rtdecode simulated cohort (seed {seed}, {size}, {difficulty})", labels
        )
        bar.update()

        subjects_truth, clipped = [], 0
        for label, ss in zip(labels, ss_subjects, strict=True):
            ss_model, ss_order, ss_replay, *ss_runs = ss.spawn(3 + spec.n_sessions)
            system = system_of(int(label) - 1)
            bar.set_postfix_str(f"sub-{label} forward model")
            subject = make_subject(
                label, system, diff, latents.shape[1], n_category, np.random.default_rng(ss_model)
            )
            sessions = _design.make_sessions(
                split,
                np.random.default_rng(ss_order),
                n_sessions=spec.n_sessions,
                train_reps=spec.train_reps,
                max_train_trials=spec.max_train_trials,
                catch_per_session=spec.catch_per_session,
            ).sessions
            bar.update()
            info_train = subject.info(SFREQ_TRAIN_HZ)
            runs = []
            for ses, trials in enumerate(sessions, start=1):
                bar.set_postfix_str(f"sub-{label} session {ses}/{spec.n_sessions}")
                meg_dir = out / f"sub-{label}" / f"ses-{ses:02d}" / "meg"
                meg_dir.mkdir(parents=True, exist_ok=True)
                stem = f"sub-{label}_ses-{ses:02d}_task-{TASK}_run-01"
                date = _dt.datetime(2024, 1, 1, 9, tzinfo=_dt.UTC) + _dt.timedelta(
                    days=7 * (ses - 1) + int(label)
                )
                n_clipped, n_times = _simulate_and_write(
                    subject, diff, latents, trials, info_train, gallery, out,
                    meg_dir / f"{stem}_meg.fif", meg_dir / f"{stem}_events.tsv", date,
                    np.random.default_rng(ss_runs[ses - 1]), n_times=None, annotate=False,
                )
                clipped += n_clipped
                write_json(
                    meg_dir / f"{stem}_meg.json",
                    meg_sidecar(system, len(subject.gain_signal), SFREQ_TRAIN_HZ, n_times),
                )
                runs.append(
                    {
                        "path": (meg_dir / f"{stem}_meg.fif").relative_to(out).as_posix(),
                        "n_trials": len(trials),
                        "duration_s": n_times / SFREQ_TRAIN_HZ,
                    }
                )
                bar.update()

            bar.set_postfix_str(f"sub-{label} replay session")
            rng_replay = np.random.default_rng(ss_replay)
            n_replay = max(2, int((spec.replay_s - 2 * LEAD_S) // SOA_S))
            trials = _design.replay_trials(split, n_replay, rng_replay)
            stem = f"sub-{label}_task-{TASK}_replay"
            date = _dt.datetime(2024, 3, 1, 9, tzinfo=_dt.UTC) + _dt.timedelta(days=int(label))
            clipped += _simulate_and_write(
                subject, diff, latents, trials, subject.info(SFREQ_REPLAY_HZ), gallery, out,
                out / "replay" / f"{stem}_raw.fif", out / "replay" / f"{stem}_events.tsv", date,
                rng_replay, n_times=int(round(spec.replay_s * SFREQ_REPLAY_HZ)), annotate=True,
            )[0]
            bar.update()

            bar.set_postfix_str(f"sub-{label} ground truth")
            snr, information = ground_truth_numbers(subject, latents, spec.noise_probe_s)
            subjects_truth.append(
                {
                    "subject": f"sub-{label}",
                    "system": system,
                    "sensors": _sensor_text(system),
                    "stim_channel": STIM_CHANNELS[system],
                    "n_meg_channels": int(subject.gain_signal.shape[0]),
                    "dev_head_t": subject.dev_head_t.tolist(),
                    "placement": subject.placement,
                    "sources": [asdict(s) for s in subject.sources],
                    "noise": _noise_text(subject.noise),
                    "snr": snr,
                    "information": information,
                    "runs": runs,
                    "replay": {
                        "path": f"replay/{stem}_raw.fif",
                        "events": f"replay/{stem}_events.tsv",
                        "n_trials": len(trials),
                        "duration_s": spec.replay_s,
                        "sfreq_hz": SFREQ_REPLAY_HZ,
                    },
                }
            )
            bar.update()

        first = f"replay/sub-{labels[0]}_task-{TASK}_replay"
        _link_or_copy(out / f"{first}_raw.fif", out / "replay_raw.fif")
        _link_or_copy(out / f"{first}_events.tsv", out / "replay_events.tsv")
        truth = {
            "format": FORMAT,
            "seed": seed,
            "size": asdict(spec),
            "difficulty": asdict(diff),
            "n_subjects": n_subjects,
            "head_model": {
                "type": "sphere",
                "r0_head_m": list(SPHERE_R0_HEAD_M),
                "head_radius_m": HEAD_RADIUS_M,
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
                "n_latent": int(latents.shape[1]),
                "n_category": n_category,
                "n_exemplar": int(latents.shape[1] - n_category),
                "latent": (
                    "columns [0, n_category): the image's z-scored embedding on the leading "
                    "axes between category means; the rest: its "
                    "deviation from that mean on the leading axes within categories; each "
                    "part whitened and mixed by a seeded rotation"
                ),
                "explained_variance": explained,
                "ids": list(gallery.ids),
                "values": [[round(float(v), 5) for v in row] for row in latents],
            },
            "latent_retrieval_ceiling": latent_retrieval_ceiling(
                latents, features, split.train_images, split.test_images
            ),
            "response_model": (
                "moment = (evoked + modulation * f(weights . latent[features])) * "
                "gaussian(t; latency + shared jitter + own jitter, width) * trial gain"
            ),
            "split": {
                "train_categories": split.train_categories,
                "test_categories": split.test_categories,
                "n_train_images": len(split.train_images),
                "n_test_images": len(split.test_images),
                "test_repetitions": spec.n_sessions,
            },
            "subjects": subjects_truth,
            "replay": {"path": "replay_raw.fif", "events": "replay_events.tsv",
                       "subject": f"sub-{labels[0]}"},
            "clipped_samples": clipped,
            "elapsed_s": round(time.perf_counter() - t_start, 2),
        }
        write_json(out / "simulation.json", truth)
        bar.update()
    return out


def _sensor_text(system: str) -> str:
    if system == NEUROMAG:
        return "Elekta Neuromag Vectorview 306 (MNE canonical geometry), STI101 trigger"
    return "CTF-275-style, 272 axial gradiometers (FIFFV_COIL_CTF_GRAD), UPPT001 trigger"


def _noise_text(noise: NoiseModel) -> dict[str, Any]:
    return {
        "background_dipoles": int(noise.gain_background.shape[1]),
        "background_rms_nAm": round(noise.background_nam, 3),
        "background_spectrum": "1/f (pink) above 0.1 Hz",
        "alpha_rms_nAm": round(noise.alpha_nam, 3),
        "alpha_hz": round(noise.alpha_hz, 3),
        "sensor_white_per_sqrtHz_median": float(np.median(noise.white)),
        "line_hz": 50.0,
        "line_median": float(np.median(noise.line_amp)),
        "drift_max": float(noise.drift_amp.max()),
    }


def simulate_subject(
    out_dir: str | Path, seed: int = 0, size: str = "full", *, progress: bool = True
) -> Path:
    """Write one simulated subject (``sub-01``, Neuromag 306, difficulty ``demo``).

    The first subject of :func:`simulate_cohort` alone: the same layout, ``replay_raw.fif``
    at the top. Parameters as there.
    """
    return simulate_cohort(out_dir, seed=seed, n_subjects=1, size=size, progress=progress)


def load_truth(truth: dict[str, Any] | str | Path) -> dict[str, Any]:
    """``simulation.json`` as a dict, from a dict, its path or the simulation folder."""
    if isinstance(truth, dict):
        return truth
    path = Path(truth)
    path = path / "simulation.json" if path.is_dir() else path
    return json.loads(path.read_text(encoding="utf-8"))


def source_patterns(
    truth: dict[str, Any] | str | Path, subject: str | None = None
) -> tuple[list[str], np.ndarray]:
    """Sensor patterns of a subject's simulated sources, to check data against the truth.

    Parameters
    ----------
    truth : dict or path-like
        ``simulation.json`` (or its path, or the simulation folder).
    subject : str, optional
        ``"01"`` or ``"sub-01"``; the first subject when omitted.

    Returns
    -------
    ch_names : list of str
        The subject's MEG channels.
    patterns : ndarray, float64, shape (n_meg, n_sources)
        Field of each source at unit moment (T or T/m per A*m), in the subject's
        ``sources`` order.
    """
    t = load_truth(truth)
    entries = t["subjects"]
    if subject is None:
        entry = entries[0]
    else:
        want = subject if str(subject).startswith("sub-") else f"sub-{subject}"
        found = [e for e in entries if e["subject"] == want]
        if not found:
            raise ValueError(
                f"No subject {subject!r} in this simulation; it has "
                f"{[e['subject'] for e in entries]}."
            )
        entry = found[0]
    info = sensor_info(
        entry["system"], SFREQ_TRAIN_HZ, stim=False, dev_head_t=np.array(entry["dev_head_t"])
    )
    pos = np.array([s["pos_m"] for s in entry["sources"]])
    ori = np.array([s["ori"] for s in entry["sources"]])
    return list(info["ch_names"]), gain_matrix(info, pos, ori)
