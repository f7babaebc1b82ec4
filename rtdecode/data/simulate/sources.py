"""What carries the image: the feature space, the cortical sources and their responses.

- Feature space (:func:`hierarchy_latents`): a pretrained image network's pooled
  activations at three depths (``early``, ``middle``, ``late``), each reduced to a few
  latent dimensions by a PCA fitted on the training images only; each layer's latents
  keep the layer's spectrum and are mixed by a seeded rotation, so every latent blends
  several of the network's features, and the axes that matter most drive the most cortex.
- Sources (:func:`build_sources`): dipoles in six visual regions per hemisphere, each
  driven by one layer of the network, as a visual hierarchy is (V1 and V3/V4 by the early
  layer, lateral occipital and intraparietal by the middle one, ventral and anterior
  temporal by the late one), with an onset response (80-280 ms, by region) and an offset
  response (150-210 ms after the image disappears). Each response's moment is
  ``evoked + modulation * f(drive)``, ``drive = weights . latent[features]``, with ``f``
  one of the nonlinearities of :func:`nonlinear` (a difficulty picks how often each).
- Trials (:func:`source_activity`): a shared latency jitter and gain per trial, and a
  smaller per-source jitter.

Threads: everything runs in the calling thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    """A visual region: where its sources sit, when they answer and which layer drives them."""

    name: str
    label: str
    centre_m: tuple[float, float, float]  # left hemisphere, relative to the sphere centre
    spread_m: float
    onset_s: tuple[float, float]  # range of onset-response latencies
    width_s: tuple[float, float]
    layer: str  # the image network's layer whose latents drive it (LAYERS)


#: The image network's readouts that drive the regions, from the retina outwards.
LAYERS = ("early", "middle", "late")

REGIONS = (
    Region("V1", "occipital (calcarine)", (-0.010, -0.064, 0.000), 0.006, (0.080, 0.110), (0.015, 0.025), "early"),
    Region("V4", "occipital (V3/V4)", (-0.026, -0.056, -0.008), 0.008, (0.110, 0.150), (0.020, 0.030), "early"),
    Region("LO", "lateral occipital", (-0.042, -0.046, -0.004), 0.008, (0.130, 0.180), (0.020, 0.035), "middle"),
    Region("IPS", "intraparietal", (-0.024, -0.048, 0.040), 0.008, (0.170, 0.240), (0.030, 0.045), "middle"),
    Region("VT", "ventral temporal (fusiform)", (-0.038, -0.028, -0.026), 0.008, (0.160, 0.220), (0.025, 0.040), "late"),
    Region("AT", "anterior temporal", (-0.048, 0.004, -0.022), 0.007, (0.200, 0.280), (0.035, 0.050), "late"),
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
def hierarchy_latents(
    layers: Mapping[str, np.ndarray],
    train: Sequence[int],
    n_latent: Mapping[str, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, list[int]], dict[str, float]]:
    """Latent features of each image, layer by layer of an image network.

    Each layer's pooled activations are z-scored and reduced by a PCA, both fitted on the
    training images only (the test images are projected, never fitted). The scores keep
    the layer's own spectrum (the leading axes carry more of the response) at an average
    variance of 1, are mixed by a seeded rotation, and each column is scaled to unit
    variance over the training images.

    Parameters
    ----------
    layers : mapping of str to ndarray, shape (n_images, d_layer)
        Pooled activations per layer name (``"early"``, ``"middle"``, ``"late"``).
    train : sequence of int
        Rows of the training images.
    n_latent : mapping of str to int
        Latent dimensions per layer (capped at the training images' rank).
    rng : numpy.random.Generator
        Draws the mixing rotations.

    Returns
    -------
    latents : ndarray, float64, shape (n_images, sum of n_latent)
        The layers' latents side by side, in the order of ``layers``.
    columns : dict of str to list of int
        Which columns of ``latents`` belong to each layer.
    explained : dict of str to float
        Share of each layer's (z-scored) training variance its latents span.
    """
    train = np.asarray(train, dtype=int)
    if len(train) < 3:
        raise ValueError(
            f"The image latents need at least 3 training images to fit their PCA, not "
            f"{len(train)}; simulate a larger size."
        )
    parts, columns, explained, start = [], {}, {}, 0
    for name, x in layers.items():
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        mean, std = x[train].mean(0), x[train].std(0)
        z = (x - mean) / np.maximum(std, 1e-8)
        _, sv, vt = np.linalg.svd(z[train], full_matrices=False)
        k = int(min(n_latent[name], len(train) - 1, int((sv > 1e-8 * sv[0]).sum())))
        scores = z @ vt[:k].T
        explained[name] = float((sv[:k] ** 2).sum() / max((sv**2).sum(), 1e-30))
        scores /= np.sqrt(max(scores[train].var(0).mean(), 1e-16))
        rotation, _ = np.linalg.qr(rng.standard_normal((k, k)))
        mixed = scores @ rotation
        mixed = (mixed - mixed[train].mean(0)) / np.maximum(mixed[train].std(0), 1e-8)
        parts.append(mixed)
        columns[name] = list(range(start, start + k))
        start += k
    return np.concatenate(parts, axis=1), columns, explained


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
    columns: Mapping[str, Sequence[int]],
    *,
    region_shift_m: float,
    latency_shift_s: float,
    amplitude_scale: float,
) -> tuple[Source, ...]:
    """One subject's image-driven sources (see the module docstring).

    ``columns`` names the latent columns of each layer (:func:`hierarchy_latents`): a
    region's responses read ``recipe.n_features`` of its layer's latents, and a ``gate``
    is driven by two latents of the last layer (what the image is, rather than how it
    looks). ``region_shift_m`` moves each region's centre (sd, per axis) so that subjects
    differ in their geometry; ``latency_shift_s`` delays all responses;
    ``amplitude_scale`` multiplies all moments.
    """
    r0 = np.asarray(SPHERE_R0_HEAD_M)
    kinds = list(recipe.mix)
    probs = np.array([recipe.mix[k] for k in kinds], float)
    probs /= probs.sum()
    missing = sorted({r.layer for r in REGIONS} - {k for k, v in columns.items() if len(v)})
    if missing:
        raise ValueError(
            f"The sources need latents of the layers {missing}; give hierarchy_latents "
            "every layer of LAYERS with at least one latent each."
        )
    gate_pool = np.asarray(columns[LAYERS[-1]], dtype=int)
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
                pool = np.asarray(columns[region.layer], dtype=int)
                feats = rng.choice(pool, min(recipe.n_features, len(pool)), replace=False)
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
                    if nl == "gate":  # what the image is gates how the region answers
                        g = rng.choice(gate_pool, min(2, len(gate_pool)), replace=False)
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
