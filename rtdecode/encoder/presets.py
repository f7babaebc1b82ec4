"""Architecture presets of the brain encoder (no torch here: cheap to import).

A :class:`BrainConfig` holds everything needed to rebuild a :class:`BrainModule`
(hyper-parameters and the data-dependent sizes); it is what a checkpoint stores under
``"architecture"`` in ``config.json``. ``PRESETS`` names the configurations that users
pick with ``rtdecode train --preset NAME``. The data-dependent fields (``n_channels``,
``n_times``, ``n_subjects``, ``target_shape``) of a preset are defaults that
:func:`rtdecode.encoder.build_model` overrides with the sizes of the data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

AGGREGATIONS = ("affine", "attention", "average")
# The regularisations every ridge fit chooses from (efficient leave-one-out): 1e-1 .. 1e6.
RIDGE_ALPHAS = tuple(10.0**k for k in range(-1, 7))
KINDS = ("brain", "ridge", "riemann")
RIEMANN_ESTIMATORS = ("scm", "oas")


@dataclass(frozen=True)
class BrainConfig:
    """Hyper-parameters and sizes of a :class:`~rtdecode.encoder.model.BrainModule`.

    Attributes
    ----------
    n_channels : int
        MEG sensors at the input (rows of ``x``).
    n_times : int
        Samples per window at the model rate (250 ms at 120 Hz -> 30).
    n_subjects : int
        Rows of the subject-specific layer.
    target_shape : tuple of int
        ``(D,)`` for a vector target, ``(N, D)`` for a token grid.
    spatial_channels : int
        Virtual channels produced by the spatial attention (270 in Défossez et al.).
    fourier_harmonics : int
        Harmonics K per axis of the sensor-position embedding (2*K*K features).
    fourier_margin : float
        Margin added around the unit square so the periodic embedding does not
        wrap opposite edges of the helmet onto each other.
    spatial_dropout_radius : float
        Sensors within this radius (normalised layout units) of a random point are
        removed from the attention during training; 0 disables it.
    subject_layers : bool
        Per-subject linear map after the spatial attention.
    hidden : int
        Channels of the dilated convolution blocks.
    n_blocks : int
        Convolution blocks; each has ``layers_per_block`` residual dilated
        convolutions followed by a GLU gate.
    layers_per_block : int
    kernel_size : int
    dilation_period : int
        Dilation is ``2 ** (layer % dilation_period)``.
    glu_kernel_size, glu_dilation : int
        Kernel and dilation of the convolution feeding each GLU gate.
    batch_norm : bool
    projection_dim : int
        Channels of the final 1x1 projection (2048 in the paper).
    aggregation : str
        Temporal aggregation: ``affine`` (learned T->1 map), ``attention`` or
        ``average``.
    seed : int
        Seed of the spatial-dropout generator (the same on every DDP rank).
    kind : str
        ``"brain"``: the deep brain module. ``"ridge"``: one linear map from the
        flattened preprocessed window to the embedding (:class:`RidgeModule`, fitted in
        closed form); only ``n_channels``, ``n_times`` and ``target_shape`` apply to it.
        ``"riemann"``: Xdawn covariances, tangent space and a linear map
        (:class:`~rtdecode.encoder.riemann.RiemannModule`); ``n_channels``, ``n_times``,
        ``target_shape`` and the ``riemann_*`` fields apply.
    n_systems : int
        Sensor systems (channel sets) the spatial attention reads: ``n_channels`` is the
        largest system's channel count, and a smaller system's channels come first with
        the rest padded (and masked out of the softmax).
    subject_system : tuple of int
        The system of each subject (``n_subjects`` entries); empty means all subjects
        use system 0.
    riemann_filters : int
        ``kind="riemann"``: Xdawn spatial filters kept per class.
    riemann_classes : int
        ``kind="riemann"``: classes whose Xdawn prototypes are stacked on the window.
    riemann_estimator : str
        ``kind="riemann"``: covariance estimator, ``"scm"`` (sample covariance) or
        ``"oas"`` (Oracle Approximating Shrinkage, per window).
    riemann_shrinkage : float
        ``kind="riemann"``: fixed shrinkage towards ``trace/n * I`` in [0, 1), applied
        after the estimator.
    """

    n_channels: int = 306
    n_times: int = 30
    n_subjects: int = 1
    target_shape: tuple[int, ...] = (768,)
    spatial_channels: int = 270
    fourier_harmonics: int = 32
    fourier_margin: float = 0.2
    spatial_dropout_radius: float = 0.2
    subject_layers: bool = True
    hidden: int = 320
    n_blocks: int = 2
    layers_per_block: int = 2
    kernel_size: int = 3
    dilation_period: int = 5
    glu_kernel_size: int = 3
    glu_dilation: int = 2
    batch_norm: bool = True
    projection_dim: int = 2048
    aggregation: str = "affine"
    seed: int = 0
    kind: str = "brain"
    n_systems: int = 1
    subject_system: tuple[int, ...] = ()
    riemann_filters: int = 4
    riemann_classes: int = 2
    riemann_estimator: str = "oas"
    riemann_shrinkage: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_shape", tuple(int(v) for v in self.target_shape))
        object.__setattr__(self, "subject_system", tuple(int(v) for v in self.subject_system))
        checks = {
            "n_channels": self.n_channels,
            "n_times": self.n_times,
            "n_subjects": self.n_subjects,
            "spatial_channels": self.spatial_channels,
            "fourier_harmonics": self.fourier_harmonics,
            "hidden": self.hidden,
            "layers_per_block": self.layers_per_block,
            "projection_dim": self.projection_dim,
            "dilation_period": self.dilation_period,
            "n_systems": self.n_systems,
        }
        for name, value in checks.items():
            if int(value) < 1:
                raise ValueError(f"BrainConfig.{name}={value} must be a positive integer.")
        if self.n_blocks < 0:
            raise ValueError(f"BrainConfig.n_blocks={self.n_blocks} must be 0 or more.")
        if self.kernel_size % 2 == 0 or self.glu_kernel_size % 2 == 0:
            raise ValueError(
                f"Kernel sizes must be odd so that 'same' padding keeps the length; got "
                f"kernel_size={self.kernel_size}, glu_kernel_size={self.glu_kernel_size}."
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"BrainConfig.aggregation={self.aggregation!r} is unknown; use one of {AGGREGATIONS}."
            )
        if self.kind not in KINDS:
            raise ValueError(f"BrainConfig.kind={self.kind!r} is unknown; use one of {KINDS}.")
        if self.riemann_estimator not in RIEMANN_ESTIMATORS:
            raise ValueError(
                f"BrainConfig.riemann_estimator={self.riemann_estimator!r} is unknown; use one "
                f"of {RIEMANN_ESTIMATORS}."
            )
        if not 0.0 <= self.riemann_shrinkage < 1.0 or min(self.riemann_filters,
                                                           self.riemann_classes) < 1:
            raise ValueError(
                f"BrainConfig.riemann_shrinkage={self.riemann_shrinkage} must lie in [0, 1) and "
                f"riemann_filters={self.riemann_filters}, riemann_classes="
                f"{self.riemann_classes} must be positive integers."
            )
        if self.subject_system and (
            len(self.subject_system) != self.n_subjects
            or not all(0 <= v < self.n_systems for v in self.subject_system)
        ):
            raise ValueError(
                f"BrainConfig.subject_system={self.subject_system} must give one system index "
                f"in 0..{self.n_systems - 1} for each of the {self.n_subjects} subjects."
            )
        if self.n_systems > 1 and not self.subject_system:
            raise ValueError(
                f"BrainConfig has n_systems={self.n_systems} but no subject_system; give the "
                "system of each subject."
            )
        if len(self.target_shape) not in (1, 2) or min(self.target_shape) < 1:
            raise ValueError(
                f"BrainConfig.target_shape={self.target_shape} must be (D,) or (N, D) "
                "with positive sizes."
            )

    @property
    def target_dim(self) -> int:
        """Size of the embedding's last axis (D)."""
        return self.target_shape[-1]

    @property
    def systems(self) -> tuple[int, ...]:
        """The system of each subject (all 0 for a one-system model)."""
        return self.subject_system or (0,) * self.n_subjects

    def check_window_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse a batch of windows whose shape is not (batch, n_channels, n_times)."""
        if len(shape) != 3 or shape[1] != self.n_channels or shape[2] != self.n_times:
            raise ValueError(
                f"The encoder expects windows of shape (batch, {self.n_channels}, "
                f"{self.n_times}) (channels, samples at the model rate); got {shape}. "
                "Preprocess with the checkpoint's Preprocessor and window length."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["target_shape"] = list(self.target_shape)
        d["subject_system"] = list(self.subject_system)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown architecture option(s) {unknown}; this rtdecode knows {sorted(known)}. "
                "The checkpoint may come from a newer rtdecode: upgrade rtdecode to load it."
            )
        return cls(**d)

    def replace(self, **changes: Any) -> BrainConfig:
        """A copy of this config with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, BrainConfig] = {
    # Défossez et al. (2023) brain module as adapted by Benchetrit et al. (2024): 270
    # virtual channels, K=32 Fourier positions, 320 hidden channels, 2 blocks, 2048-dim
    # projection, affine temporal aggregation, CLIP and MSE heads onto 768 dims.
    "paper": BrainConfig(),
    # Small enough to train on a laptop CPU and ship with the demo (<= ~20 MB).
    "demo": BrainConfig(
        target_shape=(256,),
        spatial_channels=128,
        fourier_harmonics=16,
        hidden=128,
        n_blocks=2,
        projection_dim=512,
    ),
    # Tiny: for tests (a few thousand parameters, milliseconds per step).
    "test": BrainConfig(
        n_channels=8,
        n_times=12,
        target_shape=(8,),
        spatial_channels=6,
        fourier_harmonics=3,
        hidden=8,
        n_blocks=1,
        projection_dim=16,
    ),
    # The linear baseline of Benchetrit et al. as a servable model: one ridge map from the
    # flattened, standardised window to the embedding, fitted in closed form.
    "ridge": BrainConfig(kind="ridge", target_shape=(256,)),
    # Xdawn covariances + tangent space + a linear map onto the embedding (the pyriemann
    # ERP pipeline as a servable model), fitted in closed form; the window is one epoch.
    "riemann": BrainConfig(kind="riemann", target_shape=(256,)),
}


def get_preset(name: str) -> BrainConfig:
    """The preset called ``name``; a clear error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"Unknown encoder preset {name!r}; choose one of {sorted(PRESETS)}."
        ) from None
