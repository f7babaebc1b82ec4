"""The embedded default data: a simulated THINGS-MEG-like cohort, generated in code.

No MEG recording can be downloaded on the machines this project runs on, so the default
data are simulated (DESIGN.md, "What is real here, and what is simulated"). One module
per concern:

- :mod:`~rtdecode.data.simulate.sensors`: the two MEG systems (MNE's Neuromag 306 and a
  CTF-275-style axial-gradiometer system), head placement, forward fields;
- :mod:`~rtdecode.data.simulate.sources`: the image feature space (category- and
  exemplar-level latents of each picture's embedding), cortical sources with onset and
  offset responses, nonlinear mixing, trial-to-trial variability;
- :mod:`~rtdecode.data.simulate.noise`: background brain activity, alpha, sensor, line
  and drift noise;
- :mod:`~rtdecode.data.simulate.design`: the THINGS-MEG paradigm and its events;
- :mod:`~rtdecode.data.simulate.writing`: FIF runs, BIDS sidecars, events, JSON;
- :mod:`~rtdecode.data.simulate.cohort`: subjects, difficulties, sizes, the entry points
  and the ground truth (``simulation.json``).

docs/simulated_subject.md describes the model and gives the numbers.

Threads: everything runs in the calling thread; nothing here starts a thread.
"""

from __future__ import annotations

from rtdecode.data.simulate.cohort import (
    DIFFICULTIES,
    SFREQ_REPLAY_HZ,
    SFREQ_TRAIN_HZ,
    SIZES,
    Difficulty,
    SimulationSize,
    load_truth,
    simulate_cohort,
    simulate_subject,
    source_patterns,
    system_of,
)
from rtdecode.data.simulate.design import CATCH_CODE
from rtdecode.data.simulate.sensors import (
    CTF,
    NEUROMAG,
    STIM_CHANNEL,
    STIM_CHANNELS,
    ctf_info,
    neuromag_info,
    sensor_info,
)
from rtdecode.data.simulate.writing import data_fingerprint

__all__ = [
    "CATCH_CODE",
    "CTF",
    "DIFFICULTIES",
    "NEUROMAG",
    "SFREQ_REPLAY_HZ",
    "SFREQ_TRAIN_HZ",
    "SIZES",
    "STIM_CHANNEL",
    "STIM_CHANNELS",
    "Difficulty",
    "SimulationSize",
    "ctf_info",
    "data_fingerprint",
    "load_truth",
    "neuromag_info",
    "sensor_info",
    "simulate_cohort",
    "simulate_subject",
    "source_patterns",
    "system_of",
]
