"""The cohort: subjects (sensors, head, sources, noise), their sessions, replay files, truth.

Threads: everything runs in the calling thread; nothing here starts a thread.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
from collections.abc import Sequence
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
    LAYERS,
    REGIONS,
    Source,
    SourceRecipe,
    build_sources,
    hierarchy_latents,
    noise_free_moments,
    source_activity,
)
from rtdecode.data.simulate.stimuli import Stimuli, world_stimuli
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

SFREQ_TRAIN_HZ = 200.0  # stored rate of the THINGS-like runs (a lab's downsampled copy)
SFREQ_REPLAY_HZ = 1200.0  # the replay files keep an acquisition rate (THINGS-MEG: 1200 Hz)
#: Latent dimensions per layer of the image network (PCA of its pooled activations).
N_LATENT: dict[str, int] = {"early": 12, "middle": 12, "late": 16}
#: At most this many images enter the ground truth's noise-free responses (memory).
MAX_TRUTH_IMAGES = 400
FORMAT = "rtdecode-simulation/3"
#: The image world's seed: one world and one zero-shot split for every simulation.
WORLD_SEED = 0


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
    exemplars : int
        Images shown of each training concept (THINGS-MEG: 12).
    train_reps : int
        Presentations of each training image over all sessions (THINGS-MEG: 1).
    catch_per_session : int
        Catch trials per session (dropped by the loader).
    replay_s : float
        Duration of each subject's held-out replay session.
    n_test_concepts : int
        Test concepts, one image each, shown once per session (THINGS-MEG: 200).
    max_concepts : int or None
        Concepts of the image world to use, test concepts included (None: all).
    noise_probe_s : float
        Length of the noise-only stretch simulated to measure the SNR in simulation.json.
    """

    name: str
    n_sessions: int
    exemplars: int
    train_reps: int
    catch_per_session: int
    replay_s: float
    n_test_concepts: int = 200
    max_concepts: int | None = None
    noise_probe_s: float = 120.0


SIZES: dict[str, SimulationSize] = {
    "tiny": SimulationSize(
        "tiny", 3, 2, 3, 1, 8.0, n_test_concepts=4, max_concepts=12, noise_probe_s=20.0
    ),
    "small": SimulationSize(
        "small", 4, 2, 1, 2, 60.0, n_test_concepts=40, max_concepts=240, noise_probe_s=60.0
    ),
    "full": SimulationSize("full", 4, 1, 1, 4, 90.0),
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
    # Calibrated on the paper's linear baseline (bench/paper_difficulty.py, seed 11, one
    # subject, full size): the ridge of `rtdecode evaluate` on the 0-750 ms window reaches
    # about 10 % top-5 among the 200 test images, repetitions averaged (chance 2.5 %), at
    # modulation_nam = 4.8 (docs/simulated_subject.md, "Calibration of `paper`").
    "paper": Difficulty(
        "paper",
        SourceRecipe(
            per_region=4,
            n_features=6,
            evoked_nam=8.0,
            modulation_nam=4.8,
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
    label: str, system: str, difficulty: Difficulty, columns: dict[str, list[int]],
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
        columns,
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


def _linear_share(
    subject: SubjectModel, n_latent: int, noise_var: np.ndarray, sfreq_hz: float,
    n_draws: int = 400,
) -> float:
    """Share of the image-driven response variance that is linear in the latents.

    A property of the response model, not of a stimulus set: measured over ``n_draws``
    latent vectors drawn from a standard normal (the latents' own distribution, up to
    their shape), by least squares from the latents to the noise-free response (each
    channel in units of its noise), over the first 800 ms.
    """
    z = np.random.default_rng(4321).standard_normal((n_draws, n_latent))
    n_t = int(round(0.8 * sfreq_hz))
    resp = np.einsum(
        "cs,nst->nct", subject.gain_signal,
        noise_free_moments(subject.sources, z, sfreq_hz)[..., :n_t],
    ) / np.sqrt(noise_var)[None, :, None]
    flat = (resp - resp.mean(0)).reshape(n_draws, -1)
    design = np.concatenate([np.ones((n_draws, 1)), z], axis=1)
    coef, *_ = np.linalg.lstsq(design, flat, rcond=None)
    return float(((design @ coef) ** 2).sum() / max((flat**2).sum(), 1e-30))


def _peak_ms(curve: np.ndarray, t: np.ndarray, lo: float, hi: float) -> float:
    sel = (t >= lo) & (t < hi)
    return float(1000 * t[sel][int(np.argmax(curve[sel]))])


def ground_truth_numbers(
    subject: SubjectModel, latents: np.ndarray, probe_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """SNR figures and the time course of image information, over the images of ``latents``.

    Information at time t is the between-image variance of the noise-free response, per
    channel in units of that channel's noise variance, summed over channels.
    ``linear_share`` is the share of that variance a linear function of the latents
    explains (:func:`_linear_share`): the rest needs a nonlinear readout.
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
    linear_share = _linear_share(subject, latents.shape[1], noise_var, sfreq)
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
    latents: np.ndarray, target: np.ndarray, train: Sequence[int], test: Sequence[int]
) -> dict[str, Any]:
    """Retrieval among the test images from noise-free latents (a ridge map to the target).

    The best any decoder of this "brain" could do: the latents carry this much of the
    target embedding. A ridge map (fitted on the training images, target z-scored with
    the training images' statistics) predicts each test image's embedding; the true image
    is ranked among all test images by cosine similarity.

    Parameters
    ----------
    latents : ndarray, shape (n_images, n_latent)
    target : ndarray, shape (n_images, D)
        The target embedding (the image network's pooled last layer).
    train, test : sequence of int
        Rows of the training and test images.

    Returns
    -------
    dict
        ``top1``, ``top5``, ``median_rank`` (1 = first) and ``n_candidates``.
    """
    train, test = np.asarray(train, dtype=int), np.asarray(test, dtype=int)
    mean, std = target[train].mean(0), np.maximum(target[train].std(0), 1e-8)
    z = (target - mean) / std
    a = np.concatenate([latents, np.ones((len(latents), 1))], axis=1)
    at = a[train]
    w = np.linalg.solve(at.T @ at + 1e-3 * np.eye(a.shape[1]), at.T @ z[train])
    pred = a[test] @ w
    cand = z[test]
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    cand = cand / np.linalg.norm(cand, axis=1, keepdims=True)
    sim = pred @ cand.T
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)
    return {
        "top1": float((rank < 1).mean()),
        "top5": float((rank < 5).mean()),
        "median_rank": float(np.median(rank + 1)),
        "n_candidates": len(test),
    }


# --------------------------------------------------------------------------- entry points
def _network_features(stimuli: Stimuli) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """The image network's pooled layers and its target embedding of every stimulus.

    Returns ``({"early": (n, d1), "middle": (n, d2), "late": (n, d3)}, target (n, D),
    encoder name)``. The target goes through the gallery's embedding cache, so that
    serving and training on this folder later reuse it.
    """
    from rtdecode.images import DEFAULT_IMAGE_ENCODER, Gallery, get_image_encoder, load_rgb

    encoder = get_image_encoder(DEFAULT_IMAGE_ENCODER)
    gallery = Gallery.from_folder(stimuli.root)
    order = [gallery.index(i) for i in stimuli.ids]
    target = np.asarray(gallery.embeddings(encoder, progress=False), dtype=np.float64)[order]
    layers: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    for start in range(0, len(stimuli), 64):
        images = [load_rgb(p) for p in stimuli.paths[start : start + 64]]
        for name, x in encoder.layers(images).items():
            layers[name].append(np.asarray(x, dtype=np.float64))
    return (
        {name: np.concatenate(v) for name, v in layers.items()},
        target.reshape(len(target), -1),
        str(encoder.name),
    )


def _trial_latents(latents: np.ndarray, trials: list[Trial]) -> np.ndarray:
    zero = np.zeros(latents.shape[1])
    return np.stack([latents[t.image] if t.image >= 0 else zero for t in trials])


def _simulate_and_write(
    subject: SubjectModel, diff: Difficulty, latents: np.ndarray, trials: list[Trial],
    info: mne.Info, stimuli: Stimuli, out: Path, fif: Path, tsv: Path, date: _dt.datetime,
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
    rows = _design.event_rows(trials, onset_samples, sfreq_hz, stimuli, out)
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
        Everything (image world, features, split, subjects, sessions, noise) follows from it.
        Subject ``k`` is the same whatever ``n_subjects`` is.
    n_subjects : int
        Subjects ``sub-01`` ...; odd-numbered ones wear the Neuromag 306 system, even ones
        the CTF-275-style system.
    difficulty : {"demo", "paper"}
        ``demo``: easy, image information plain in single 250 ms windows. ``paper``:
        weaker, more variable and more nonlinear responses in more noise, so that
        single-trial retrieval is about as hard as on THINGS-MEG.
    size : {"full", "small", "tiny"}
        Sessions and trials per subject (:data:`SIZES`; docs/simulated_subject.md gives
        the counts). ``full``: every concept of the image world, 4 sessions, a 90 s
        replay session. ``tiny``: 12 concepts, 3 sessions, for tests.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``out_dir``, holding ``images/`` (the images shown, with ``gallery.csv``),
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
    ss_features, _, *ss_subjects = np.random.SeedSequence(seed).spawn(2 + n_subjects)
    labels = [f"{k + 1:02d}" for k in range(n_subjects)]

    bar = tqdm(
        total=1 + n_subjects * (spec.n_sessions + 3),
        desc=f"simulating {n_subjects} subject(s) ({size}, {difficulty})",
        unit="step",
        disable=not progress,
    )
    with bar:
        bar.set_postfix_str("image world")
        stimuli = world_stimuli(
            out,
            seed=WORLD_SEED,
            n_test_concepts=spec.n_test_concepts,
            exemplars_per_concept=spec.exemplars,
            max_concepts=spec.max_concepts,
        )
        bar.set_postfix_str(f"image network on {len(stimuli)} images")
        layers, target, encoder_name = _network_features(stimuli)
        latents, columns, explained = hierarchy_latents(
            layers, stimuli.train, N_LATENT, np.random.default_rng(ss_features)
        )
        split = _design.Split(
            list(stimuli.train), list(stimuli.test), stimuli.train_concepts, stimuli.test_concepts
        )
        # the ground truth's noise-free responses: every test image and a sample of the
        # training ones (all of them would not fit in memory at the full size)
        n_truth_train = max(0, MAX_TRUTH_IMAGES - len(split.test_images))
        truth_rows = sorted(
            np.random.default_rng(seed).permutation(split.train_images)[:n_truth_train].tolist()
            + split.test_images
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
            subject = make_subject(label, system, diff, columns, np.random.default_rng(ss_model))
            sessions = _design.make_sessions(
                split,
                np.random.default_rng(ss_order),
                n_sessions=spec.n_sessions,
                train_reps=spec.train_reps,
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
                    subject, diff, latents, trials, info_train, stimuli, out,
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
                subject, diff, latents, trials, subject.info(SFREQ_REPLAY_HZ), stimuli, out,
                out / "replay" / f"{stem}_raw.fif", out / "replay" / f"{stem}_events.tsv", date,
                rng_replay, n_times=int(round(spec.replay_s * SFREQ_REPLAY_HZ)), annotate=True,
            )[0]
            bar.update()

            bar.set_postfix_str(f"sub-{label} ground truth")
            snr, information = ground_truth_numbers(
                subject, latents[truth_rows], spec.noise_probe_s
            )
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

        from rtdecode.images.world import link_or_copy

        first = f"replay/sub-{labels[0]}_task-{TASK}_replay"
        link_or_copy(out / f"{first}_raw.fif", out / "replay_raw.fif")
        link_or_copy(out / f"{first}_events.tsv", out / "replay_events.tsv")
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
                "layers": {
                    name: {
                        "dim": int(layers[name].shape[1]),
                        "columns": columns[name],
                        "explained_variance": explained[name],
                        "regions": [r.name for r in REGIONS if r.layer == name],
                    }
                    for name in LAYERS
                },
                "latent": (
                    "per layer of the image network (pooled activations at the end of an "
                    "early, a middle and the last stage): z-scored and reduced by a PCA, "
                    "both fitted on the training images only, whitened to an average "
                    "variance of 1, mixed by a seeded rotation, each column scaled to unit "
                    "variance over the training images"
                ),
                "ids": list(stimuli.ids),
                "values": [[round(float(v), 5) for v in row] for row in latents],
            },
            "hierarchy": {
                r.name: {"label": r.label, "layer": r.layer, "onset_s": list(r.onset_s)}
                for r in REGIONS
            },
            "target": {"encoder": encoder_name, "dim": int(target.shape[1])},
            "latent_retrieval_ceiling": latent_retrieval_ceiling(
                latents, target, split.train_images, split.test_images
            ),
            "response_model": (
                "moment = (evoked + modulation * f(weights . latent[features])) * "
                "gaussian(t; latency + shared jitter + own jitter, width) * trial gain"
            ),
            "split": {
                "train_concepts": split.train_concepts,
                "test_concepts": split.test_concepts,
                "n_train_concepts": len(split.train_concepts),
                "n_test_concepts": len(split.test_concepts),
                "n_shared_concepts": len(set(split.train_concepts) & set(split.test_concepts)),
                "n_train_images": len(split.train_images),
                "n_test_images": len(split.test_images),
                "train_repetitions": spec.train_reps,
                "test_repetitions": spec.n_sessions,
            },
            "images": {"n_images": len(stimuli), "licenses": stimuli.licenses},
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
