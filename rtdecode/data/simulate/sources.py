"""What carries the image: the feature space, the cortical sources and their responses.

- Feature space (:func:`image_latents`): each gallery image's ``handcrafted`` embedding,
  z-scored, split into a category-level part (the image's embedding on the leading axes
  between category means: mostly what its category shares) and an exemplar-level part
  (the image's deviation from its category mean on the leading axes within categories);
  each part keeps the embedding's spectrum and is mixed by a seeded rotation, so every
  latent blends several visual properties, and the axes that matter most for the
  embedding drive the most cortex.
- Sources (:func:`build_sources`): dipoles in six visual regions per hemisphere, each
  with an onset response (80-280 ms, by region) and an offset response (150-210 ms after
  the image disappears). Each response's moment is
  ``evoked + modulation * f(drive)``, ``drive = weights . latent[features]``, with ``f``
  one of the nonlinearities of :func:`nonlinear` (a difficulty picks how often each).
- Trials (:func:`source_activity`): a shared latency jitter and gain per trial, and a
  smaller per-source jitter.

Threads: everything runs in the calling thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rtdecode.data.simulate.sensors import HEAD_RADIUS_M, SPHERE_R0_HEAD_M

IMAGE_DURATION_S = 0.5
RESPONSE_S = 1.0  # each trial's responses are computed over 1 s after onset
NONLINEARITIES = ("tanh", "relu", "square", "gate")


@dataclass(frozen=True)
class Component:
    """One response of a source: a Gaussian bump whose height depends on the image.

    The moment at time ``t`` after onset is
    ``(evoked_nam + modulation_nam * f(drive)) * exp(-(t - latency_s)^2 / 2 width_s^2)``
    with ``drive = weights . z[features]``, ``z`` the image's latent vector and ``f`` the
    named nonlinearity (``gate`` multiplies the drive by ``1 + tanh(gate_weights .
    z[gate_features])``).
    """

    kind: str  # "onset" | "offset"
    latency_s: float
    width_s: float
    evoked_nam: float
    modulation_nam: float
    features: tuple[int, ...]
    weights: tuple[float, ...]
    nonlinearity: str
    gate_features: tuple[int, ...] = ()
    gate_weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class Source:
    """A fixed-orientation dipole and its responses (positions in head coordinates, m)."""

    name: str
    region: str
    pos_m: tuple[float, float, float]
    ori: tuple[float, float, float]
    components: tuple[Component, ...]


@dataclass(frozen=True)
class Region:
    """A visual region: where its sources sit and what they respond to."""

    name: str
    label: str
    centre_m: tuple[float, float, float]  # left hemisphere, relative to the sphere centre
    spread_m: float
    onset_s: tuple[float, float]  # range of onset-response latencies
    width_s: tuple[float, float]
    category_share: float  # share of its features drawn from the category-level part


REGIONS = (
    Region("V1", "occipital (calcarine)", (-0.010, -0.064, 0.000), 0.006, (0.080, 0.110), (0.015, 0.025), 0.0),
    Region("V4", "occipital (V3/V4)", (-0.026, -0.056, -0.008), 0.008, (0.110, 0.150), (0.020, 0.030), 0.15),
    Region("LO", "lateral occipital", (-0.042, -0.046, -0.004), 0.008, (0.130, 0.180), (0.020, 0.035), 0.3),
    Region("IPS", "intraparietal", (-0.024, -0.048, 0.040), 0.008, (0.170, 0.240), (0.030, 0.045), 0.4),
    Region("VT", "ventral temporal (fusiform)", (-0.038, -0.028, -0.026), 0.008, (0.160, 0.220), (0.025, 0.040), 0.5),
    Region("AT", "anterior temporal", (-0.048, 0.004, -0.022), 0.007, (0.200, 0.280), (0.035, 0.050), 0.7),
)  # fmt: skip


@dataclass(frozen=True)
class SourceRecipe:
    """How a difficulty builds sources (amplitudes in nAm, before a subject's own scale)."""

    per_region: int  # sources per region and hemisphere
    n_features: int  # latents read by each response
    evoked_nam: float
    modulation_nam: float
    offset_scale: float  # offset response relative to the onset response
    spread: float  # multiplies each region's spread of source positions
    mix: dict[str, float]  # probability of each nonlinearity


# --------------------------------------------------------------------------- features
def image_latents(
    features: np.ndarray,
    categories: Sequence[str],
    n_category: int,
    n_exemplar: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, float]]:
    """Latent features of each image: category-level then exemplar-level dimensions.

    Parameters
    ----------
    features : ndarray, shape (n_images, D)
        Image embeddings.
    categories : sequence of str, length n_images
    n_category, n_exemplar : int
        Dimensions of each part (the category part is capped at n_categories - 1).
    rng : numpy.random.Generator
        Draws the two mixing rotations.

    Returns
    -------
    latents : ndarray, shape (n_images, n_category + n_exemplar)
        Each column has zero mean and unit variance over the images; the first
        ``n_category`` columns vary mostly between categories, the others only within.
    explained : dict
        Share of the embedding's variance each part spans.
    """
    z = (features - features.mean(0)) / np.maximum(features.std(0), 1e-8)
    cats = np.asarray(categories)
    names = sorted(set(categories))
    means = np.stack([z[cats == c].mean(0) for c in names])
    resid = z - means[[names.index(c) for c in categories]]
    n_category = min(n_category, len(names) - 1)
    _, _, vt_cat = np.linalg.svd(means - means.mean(0), full_matrices=False)
    _, _, vt_ex = np.linalg.svd(resid, full_matrices=False)
    n_exemplar = min(n_exemplar, len(vt_ex))
    parts, explained = [], {}
    total = (z**2).sum()
    for name, x, axes, k in (
        ("category", z, vt_cat, n_category),
        ("exemplar", resid, vt_ex, n_exemplar),
    ):
        scores = x @ axes[:k].T
        explained[name] = float((scores**2).sum() / total)
        # keep the embedding's own spectrum (leading axes carry more of the response), at
        # an average variance of 1 per latent
        scores = (scores - scores.mean(0)) / np.sqrt(max((scores.var(0)).mean(), 1e-16))
        rotation, _ = np.linalg.qr(rng.standard_normal((k, k)))
        mixed = scores @ rotation
        parts.append((mixed - mixed.mean(0)) / np.maximum(mixed.std(0), 1e-8))
    return np.concatenate(parts, axis=1), explained


# --------------------------------------------------------------------------- sources
def tangential(pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector orthogonal to ``pos`` (radial dipoles are silent in MEG)."""
    radial = pos / np.linalg.norm(pos)
    v = rng.standard_normal(3)
    v -= (v @ radial) * radial
    return v / np.linalg.norm(v)


def _inside(rel: np.ndarray, margin_m: float = 0.017) -> np.ndarray:
    """Pull a point back inside the head sphere, ``margin_m`` under the scalp."""
    r = np.linalg.norm(rel)
    limit = HEAD_RADIUS_M - margin_m
    return rel * (limit / r) if r > limit else rel


def _weights(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.standard_normal(n)
    return w / np.linalg.norm(w)


def build_sources(
    rng: np.random.Generator,
    recipe: SourceRecipe,
    n_category: int,
    n_latent: int,
    *,
    region_shift_m: float,
    latency_shift_s: float,
    amplitude_scale: float,
) -> tuple[Source, ...]:
    """One subject's image-driven sources (see the module docstring).

    ``region_shift_m`` moves each region's centre (sd, per axis) so that subjects differ
    in their geometry; ``latency_shift_s`` delays all responses; ``amplitude_scale``
    multiplies all moments.
    """
    r0 = np.asarray(SPHERE_R0_HEAD_M)
    kinds = list(recipe.mix)
    probs = np.array([recipe.mix[k] for k in kinds], float)
    probs /= probs.sum()
    cat_pool = np.arange(n_category)
    ex_pool = np.arange(n_category, n_latent)
    sources = []
    for region in REGIONS:
        for hemi, sign_x in (("L", -1.0), ("R", 1.0)):
            centre = np.array(region.centre_m)
            centre[0] = abs(centre[0]) * sign_x
            centre = centre + rng.normal(0.0, region_shift_m, 3)
            for k in range(recipe.per_region):
                rel = _inside(centre + rng.normal(0.0, region.spread_m * recipe.spread, 3))
                ori = tangential(rel, rng)
                onset = rng.uniform(*region.onset_s) + latency_shift_s
                width = rng.uniform(*region.width_s)
                n_cat = int(rng.binomial(recipe.n_features, region.category_share))
                n_cat = min(n_cat, len(cat_pool))
                feats = np.concatenate(
                    [
                        rng.choice(cat_pool, n_cat, replace=False),
                        rng.choice(ex_pool, min(recipe.n_features - n_cat, len(ex_pool)), replace=False),
                    ]
                ).astype(int)
                polarity = rng.choice([-1.0, 1.0])
                comps = []
                for kind, latency, scale in (
                    ("onset", onset, 1.0),
                    # offset responses: earlier regions answer first after the image goes
                    ("offset", IMAGE_DURATION_S + 0.15 + 0.3 * (onset - 0.08), recipe.offset_scale),
                ):
                    nl = str(rng.choice(kinds, p=probs))
                    gate_f: tuple[int, ...] = ()
                    gate_w: tuple[float, ...] = ()
                    if nl == "gate":  # the category part gates an exemplar drive
                        pool = cat_pool if len(cat_pool) else ex_pool
                        g = rng.choice(pool, min(2, len(pool)), replace=False)
                        gate_f = tuple(int(i) for i in g)
                        gate_w = tuple(float(x) for x in _weights(rng, len(g)) * 1.5)
                    amp = amplitude_scale * scale * rng.uniform(0.7, 1.3)
                    comps.append(
                        Component(
                            kind=kind,
                            latency_s=float(latency),
                            width_s=float(width * (1.3 if kind == "offset" else 1.0)),
                            evoked_nam=float(polarity * recipe.evoked_nam * amp),
                            modulation_nam=float(polarity * recipe.modulation_nam * amp),
                            features=tuple(int(f) for f in feats),
                            weights=tuple(float(x) for x in _weights(rng, len(feats))),
                            nonlinearity=nl,
                            gate_features=gate_f,
                            gate_weights=gate_w,
                        )
                    )
                sources.append(
                    Source(
                        f"{region.name}-{hemi}{k + 1}",
                        region.label,
                        tuple(float(x) for x in r0 + rel),
                        tuple(float(x) for x in ori),
                        tuple(comps),
                    )
                )
    return tuple(sources)


# --------------------------------------------------------------------------- responses
def nonlinear(kind: str, drive: np.ndarray, gate: np.ndarray | None = None) -> np.ndarray:
    """The response nonlinearities, each with mean ~0 and variance ~0.5-1 for a N(0, 1) drive.

    ``tanh``: saturating, mostly linear; ``relu``: rectified (only a positive drive
    counts); ``square``: even (``(x^2 - 1) / sqrt 2``), invisible to a linear readout of
    this response alone; ``gate``: ``x * (1 + tanh(gate))``, a multiplicative interaction.
    """
    if kind == "tanh":
        return np.tanh(drive)
    if kind == "relu":
        return np.maximum(drive, 0.0) - 1.0 / np.sqrt(2.0 * np.pi)
    if kind == "square":
        return (drive**2 - 1.0) / np.sqrt(2.0)
    if kind == "gate":
        return drive * (1.0 + np.tanh(gate if gate is not None else 0.0))
    raise ValueError(f"Unknown nonlinearity {kind!r}; use one of {NONLINEARITIES}.")


def amplitudes(sources: Sequence[Source], latents: np.ndarray) -> np.ndarray:
    """Moments in nAm, shape (n_trials, n_components), components in source order."""
    cols = []
    for s in sources:
        for c in s.components:
            drive = latents[:, list(c.features)] @ np.asarray(c.weights)
            gate = (
                latents[:, list(c.gate_features)] @ np.asarray(c.gate_weights)
                if c.gate_features
                else None
            )
            cols.append(c.evoked_nam + c.modulation_nam * nonlinear(c.nonlinearity, drive, gate))
    return np.stack(cols, axis=1) if cols else np.zeros((len(latents), 0))


def _gauss(dt_s: np.ndarray, width_s: np.ndarray) -> np.ndarray:
    """Gaussian bumps, exactly 0 beyond 6 widths (denormal floats are very slow)."""
    return np.exp(-np.minimum(0.5 * (dt_s / width_s) ** 2, 18.0)) * (np.abs(dt_s) < 6 * width_s)


def _component_table(sources: Sequence[Source]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    owner = np.array([k for k, s in enumerate(sources) for _ in s.components], int)
    lat = np.array([c.latency_s for s in sources for c in s.components])
    width = np.array([c.width_s for s in sources for c in s.components])
    return owner, lat, width


def source_activity(
    sources: Sequence[Source],
    latents: np.ndarray,
    onsets: np.ndarray,
    n_times: int,
    sfreq_hz: float,
    rng: np.random.Generator,
    *,
    jitter_s: float,
    gain_sd: float,
) -> np.ndarray:
    """Source moments (A*m), shape (n_sources, n_times), for trials at sample ``onsets``.

    Trial to trial: one latency shift for all responses (normal, sd ``jitter_s``) plus a
    per-source one (sd ``jitter_s / 3``), and one gain for all moments (lognormal,
    sd ``gain_sd`` in log units).
    """
    n_win = int(round(RESPONSE_S * sfreq_hz))
    t = np.arange(n_win) / sfreq_hz
    amps = amplitudes(sources, latents)  # (n_trials, n_comp)
    owner, lat, width = _component_table(sources)
    n_trials = len(onsets)
    shared = rng.normal(0.0, jitter_s, n_trials)
    own = rng.normal(0.0, jitter_s / 3.0, (n_trials, len(sources)))
    gain = rng.lognormal(0.0, gain_sd, n_trials)
    out = np.zeros((len(sources), n_times))
    starts = np.searchsorted(owner, np.arange(len(sources)))  # components are grouped
    for i, n0 in enumerate(onsets):
        centre = lat + shared[i] + own[i, owner]
        bumps = _gauss(t[None, :] - centre[:, None], width[:, None])
        wave = np.add.reduceat(bumps * (amps[i] * gain[i])[:, None], starts, axis=0)
        stop = min(n_times, n0 + n_win)
        out[:, n0:stop] += wave[:, : stop - n0]
    return out * 1e-9


def noise_free_moments(sources: Sequence[Source], latents: np.ndarray, sfreq_hz: float) -> np.ndarray:
    """Moments without trial variability (A*m), shape (n_images, n_sources, 1 s of samples)."""
    n_win = int(round(RESPONSE_S * sfreq_hz))
    t = np.arange(n_win) / sfreq_hz
    owner, lat, width = _component_table(sources)
    bumps = _gauss(t[None, :] - lat[:, None], width[:, None])
    amps = amplitudes(sources, latents)
    out = np.zeros((len(latents), len(sources), n_win))
    for c, k in enumerate(owner):
        out[:, k] += amps[:, c : c + 1] * bumps[c]
    return out * 1e-9
