"""Sensor systems, head placement and forward fields of the simulated cohort.

Two MEG systems, each described with MNE's own coil types so that
``mne.make_forward_solution`` integrates the fields over the real coil geometry:

- ``neuromag306``: MNE's canonical Elekta Neuromag Vectorview definitions (102
  magnetometers, coil 3024, and 204 planar gradiometers, coil 3012), trigger ``STI101``;
- ``ctf275``: a CTF-275-style whole-head system of first-order axial gradiometers
  (``FIFFV_COIL_CTF_GRAD``, 5001: 18 mm coils, 50 mm baseline) with CTF channel names
  (``MLC11`` ... ``MZP01``, from MNE's ``CTF275.lay``), three of them missing as on the
  272-channel THINGS-MEG recordings, trigger ``UPPT001``. MNE ships no 3D CTF geometry, so
  the sensors sit on a helmet-shaped sphere at the layout's angles (see
  :func:`ctf_positions`); no reference sensors (the data stand for compensated signals).

Threads: everything runs in the calling thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import mne

NEUROMAG = "neuromag306"
CTF = "ctf275"
SYSTEMS = (NEUROMAG, CTF)
LINE_FREQ_HZ = 50.0
STIM_CHANNELS = {NEUROMAG: "STI101", CTF: "UPPT001"}
STIM_CHANNEL = STIM_CHANNELS[NEUROMAG]

# The sphere that models the head (radius 9 cm, centre 4 cm above the head origin).
SPHERE_R0_HEAD_M = (0.0, 0.0, 0.04)
HEAD_RADIUS_M = 0.09

COIL_NEUROMAG_MAG = 3024
COIL_NEUROMAG_GRAD = 3012
COIL_CTF_GRAD = 5001

# Channels left out of the 275 of CTF275.lay (THINGS-MEG's recordings have 272).
CTF_MISSING = ("MLF25", "MRF43", "MRO13")
# The CTF helmet: sensors on a sphere of this radius around its centre, the layout's
# radius 1 mapped to this polar angle from the vertex.
_CTF_HELMET_RADIUS_M = 0.118
_CTF_MAX_POLAR_RAD = np.deg2rad(105.0)


@dataclass(frozen=True)
class SensorSpec:
    """Noise floors and write steps of one system (per channel type)."""

    white_t: dict[str, float]  # white sensor noise per sqrt(Hz), T or T/m, by "mag"/"grad"
    lsb: dict[str, float]  # the 16-bit write step, T or T/m
    manufacturer: str
    model: str


SPECS = {
    NEUROMAG: SensorSpec(
        white_t={"mag": 3e-15, "grad": 3e-13},  # 3 fT, 3 fT/cm
        lsb={"mag": 1e-15, "grad": 5e-14},
        manufacturer="Elekta",
        model="Vectorview (simulated)",
    ),
    CTF: SensorSpec(
        white_t={"mag": 5e-15, "grad": 5e-15},  # axial gradiometers read T
        lsb={"mag": 1e-15, "grad": 1e-15},
        manufacturer="CTF",
        model="CTF-275 (simulated)",
    ),
}


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation matrix from (x, y, z) Euler angles, applied z then y then x."""
    ax, ay, az = angles_rad
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def dev_head_transform(
    system: str, translation_m: np.ndarray | None = None, angles_rad: np.ndarray | None = None
) -> np.ndarray:
    """Device-to-head transform (4, 4) for a head placed under the helmet.

    The nominal placement leaves 2-3 cm between scalp and sensors at the vertex; a
    subject's own placement adds ``translation_m`` (3,) and a small rotation
    ``angles_rad`` (3,) on top.
    """
    trans = np.eye(4)
    if system == NEUROMAG:
        # Vectorview device frame: x right, y anterior, z up, origin inside the helmet
        trans[:3, 3] = (0.0, -0.01, 0.06)
    elif system == CTF:
        # CTF device frame: x anterior (nasion), y left, z up; helmet centre at the origin
        trans[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        trans[:3, 3] = (0.0, -0.012, 0.030)
    else:
        raise ValueError(f"Unknown sensor system {system!r}; use one of {SYSTEMS}.")
    extra = np.eye(4)
    if angles_rad is not None:
        extra[:3, :3] = _rotation(np.asarray(angles_rad, float))
    if translation_m is not None:
        extra[:3, 3] = translation_m
    return extra @ trans


def ctf_positions() -> tuple[list[str], np.ndarray, np.ndarray]:
    """CTF-275-style sensor names, positions and outward normals in device coordinates.

    Each channel of MNE's ``CTF275.lay`` is placed on a sphere (radius 11.8 cm) at the
    polar angle its layout radius gives (the layout's rim at 105 degrees from the vertex)
    and the layout's azimuth.

    Returns
    -------
    names : list of str, length 272
    pos_m : ndarray, shape (272, 3)
        Centre of the lower (pickup) coil, CTF device frame (x anterior, y left, z up).
    normal : ndarray, shape (272, 3)
        Unit vectors pointing away from the head (the gradiometer's axis).
    """
    import mne

    lay = Path(mne.__file__).parent / "channels" / "data" / "layouts" / "CTF275.lay"
    names, xy = [], []
    for line in lay.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] not in CTF_MISSING:
            names.append(parts[5])
            xy.append((float(parts[1]), float(parts[2])))
    xy_arr = np.asarray(xy)
    theta = np.hypot(xy_arr[:, 0], xy_arr[:, 1]) * _CTF_MAX_POLAR_RAD
    phi = np.arctan2(xy_arr[:, 1], xy_arr[:, 0])  # layout: x right, y anterior
    right, anterior, up = np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)
    normal = np.stack([anterior, -right, up], axis=1)  # into the CTF device frame
    return names, normal * _CTF_HELMET_RADIUS_M, normal


def _frame(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing ``normal`` to a right-handed frame."""
    helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    ex = np.cross(helper, normal)
    ex /= np.linalg.norm(ex)
    return ex, np.cross(normal, ex)


def sensor_info(
    system: str, sfreq_hz: float, *, stim: bool = True, dev_head_t: np.ndarray | None = None
) -> mne.Info:
    """Measurement info of one simulated MEG system.

    Parameters
    ----------
    system : {"neuromag306", "ctf275"}
    sfreq_hz : float
        Sampling rate.
    stim : bool
        Append the trigger channel (``STI101`` or ``UPPT001``).
    dev_head_t : ndarray, shape (4, 4), optional
        Device-to-head transform; the nominal placement when omitted.

    Returns
    -------
    mne.Info
        306 (Neuromag) or 272 (CTF) MEG channels with their coil types, positions and
        orientations, plus the trigger channel when ``stim``. Calibrations are the 16-bit
        steps used when writing.
    """
    import mne
    from mne.io.constants import FIFF

    if system == NEUROMAG:
        canonical = mne.channels.read_meg_canonical_info("neuromag", verbose=False)
        names = list(canonical["ch_names"])
        types = [
            "grad" if ch["coil_type"] == COIL_NEUROMAG_GRAD else "mag" for ch in canonical["chs"]
        ]
        locs = [ch["loc"].copy() for ch in canonical["chs"]]
        coils = [ch["coil_type"] for ch in canonical["chs"]]
        units = [ch["unit"] for ch in canonical["chs"]]
    elif system == CTF:
        names, pos, normal = ctf_positions()
        types = ["mag"] * len(names)  # MNE's type for CTF axial gradiometers (unit T)
        locs = []
        for p, n in zip(pos, normal, strict=True):
            ex, ey = _frame(n)
            locs.append(np.concatenate([p, ex, ey, n]))
        coils = [COIL_CTF_GRAD] * len(names)
        units = [FIFF.FIFF_UNIT_T] * len(names)
    else:
        raise ValueError(f"Unknown sensor system {system!r}; use one of {SYSTEMS}.")
    n_meg = len(names)
    if stim:
        names = [*names, STIM_CHANNELS[system]]
        types = [*types, "stim"]
    info = mne.create_info(names, sfreq_hz, types, verbose=False)
    trans = dev_head_transform(system) if dev_head_t is None else np.asarray(dev_head_t, float)
    lsb = SPECS[system].lsb
    with info._unlock():
        for k in range(n_meg):
            ch = info["chs"][k]
            ch["loc"] = np.asarray(locs[k], float)
            ch["coil_type"] = coils[k]
            ch["coord_frame"] = FIFF.FIFFV_COORD_DEVICE
            ch["unit"] = units[k]
            ch["kind"] = FIFF.FIFFV_MEG_CH
            ch["cal"] = lsb[types[k]]
            ch["range"] = 1.0
            ch["unit_mul"] = FIFF.FIFF_UNITM_NONE
        info["dev_head_t"] = mne.transforms.Transform("meg", "head", trans)
        info["line_freq"] = LINE_FREQ_HZ
        info["lowpass"] = sfreq_hz / 2.0
        info["highpass"] = 0.0
    return info


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
    return sensor_info(NEUROMAG, sfreq_hz, stim=stim)


def ctf_info(sfreq_hz: float, *, stim: bool = True) -> mne.Info:
    """Measurement info of the CTF-275-style system (272 axial gradiometers).

    Parameters
    ----------
    sfreq_hz : float
        Sampling rate.
    stim : bool
        Append the trigger channel ``UPPT001``.

    Returns
    -------
    mne.Info
        272 MEG channels named as on CTF systems (``MLC11`` ...), coil type
        ``FIFFV_COIL_CTF_GRAD``, plus ``UPPT001`` when ``stim``.
    """
    return sensor_info(CTF, sfreq_hz, stim=stim)


def channel_kinds(info: mne.Info) -> np.ndarray:
    """``"mag"`` or ``"grad"`` for each MEG channel of ``info`` (stim excluded), shape (n_meg,)."""
    import mne

    picks = mne.pick_types(info, meg=True, ref_meg=False)
    return np.array(info.get_channel_types(picks=picks))


def gain_matrix(info: mne.Info, pos_m: np.ndarray, ori: np.ndarray) -> np.ndarray:
    """Sensor fields of fixed-orientation unit dipoles in the head sphere.

    Parameters
    ----------
    info : mne.Info
        The sensors (only MEG channels are used) and their device-to-head transform.
    pos_m, ori : ndarray, shape (n_dipoles, 3)
        Dipole positions (head coordinates, m) and unit orientations.

    Returns
    -------
    ndarray, shape (n_meg, n_dipoles)
        T or T/m per A*m, from ``mne.make_forward_solution`` on a spherical conductor.
    """
    import mne

    sphere = mne.make_sphere_model(r0=SPHERE_R0_HEAD_M, head_radius=HEAD_RADIUS_M, verbose=False)
    src = mne.setup_volume_source_space(
        pos=dict(rr=np.asarray(pos_m, float), nn=np.asarray(ori, float)),
        sphere=sphere,
        verbose=False,
    )
    meg_info = mne.pick_info(info, mne.pick_types(info, meg=True, ref_meg=False))
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
