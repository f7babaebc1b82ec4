"""The brain module: MEG window -> image-embedding predictions (CLIP and MSE heads).

Architecture after Défossez et al. (2023), as adapted by Benchetrit, Banville & King
(ICLR 2024); docs/encoder.md explains each choice.

    x (B, C, T)
      -> SpatialAttention      C sensors -> 270 virtual channels (softmax over sensors,
                               queries built from Fourier features of 2D positions)
      -> 1x1 conv
      -> SubjectLayers         one learned (270, 270) matrix per subject
      -> blocks                residual dilated convs (BN, GELU) + a GLU gate per block
      -> 1x1 projection to 2048 channels
      -> temporal aggregation  affine (T -> 1) | attention | average
      -> heads                 LayerNorm -> GELU -> Linear, "clip" and "mse"

Threading: a BrainModule is used by one thread at a time (the DecodeWorker in the
service, the training loop offline). In eval mode with autograd off, the spatial
attention weights are computed once and cached; training or a weight change
(optimizer step, ``load_state_dict``) invalidates the cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rtdecode.encoder.presets import BrainConfig, get_preset


def world_size() -> int:
    """Processes in the default DDP group (1 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiably.

    The gradient of every rank's input is the sum of the incoming gradients of all ranks
    (each rank's loss depends on every input).
    """

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        torch.distributed.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.clone()
        torch.distributed.all_reduce(g)
        return g


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's rows.

    Backward sums the gradients of all ranks and keeps this rank's rows (a reduce-scatter,
    written with all_reduce, which gloo has).
    """

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        g = grad.contiguous().clone()
        torch.distributed.all_reduce(g)
        start = torch.distributed.get_rank() * ctx.rows
        return g[start : start + ctx.rows]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over DDP ranks (identity without a process group)."""
    return _AllReduceSum.apply(x) if world_size() > 1 else x


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Differentiable concatenation of every rank's ``x`` along dim 0.

    Every rank must have the same row count; identity without a process group.
    """
    return _AllGather.apply(x) if world_size() > 1 else x


def channel_mix(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the same (C_out, C_in) matrix at every time step: x (B, C_in, T) -> (B, C_out, T).

    Computed as one (B*T, C_in) x (C_in, C_out) product: on CPU this is several times
    faster than ``matmul(weight, x)`` (which copies the weight once per batch item) and
    than torch's 1x1 convolution at these sizes.
    """
    return F.linear(x.transpose(1, 2), weight, bias).transpose(1, 2)


def normalize_positions(positions: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Scale 2D sensor positions to [0, 1] per axis; unknown (NaN) rows stay NaN.

    Parameters
    ----------
    positions : array, shape (C, 2)
        Layout coordinates in any unit; rows with a NaN are unknown sensors.

    Returns
    -------
    Tensor, float32, shape (C, 2)
    """
    pos = torch.as_tensor(np.asarray(positions, dtype=np.float32)).clone()
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(
            f"Sensor positions must have shape (n_channels, 2); got {tuple(pos.shape)}."
        )
    valid = torch.isfinite(pos).all(dim=1)
    if not bool(valid.any()):
        raise ValueError(
            "No sensor has a known 2D position (all are NaN); give the MNE layout "
            "positions of at least one channel."
        )
    lo = pos[valid].min(dim=0).values
    span = pos[valid].max(dim=0).values - lo
    # A single sensor (or a line of sensors) has no extent on an axis: centre it.
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (pos - lo) / safe_span, torch.full_like(pos, 0.5))
    out[~valid] = float("nan")
    return out


def fourier_features(positions: torch.Tensor, harmonics: int, margin: float) -> torch.Tensor:
    """Fourier embedding of 2D positions in [0, 1]: cos and sin of 2π(k x + l y)/width.

    ``k, l`` run over ``0..harmonics-1`` and ``width = 1 + 2 * margin``: the margin keeps
    the left and right (top and bottom) edges of the layout from being the same point of
    the periodic basis.

    Parameters
    ----------
    positions : Tensor, shape (C, 2), finite
    harmonics : int
    margin : float

    Returns
    -------
    Tensor, shape (C, 2 * harmonics**2)
    """
    k = torch.arange(harmonics, dtype=positions.dtype, device=positions.device)
    width = 1.0 + 2.0 * margin
    shifted = positions + margin
    phase = (2 * math.pi / width) * (
        shifted[:, 0, None, None] * k[:, None] + shifted[:, 1, None, None] * k[None, :]
    )
    phase = phase.reshape(positions.shape[0], -1)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)


def stack_positions(systems: Sequence[np.ndarray], n_channels: int | None = None) -> np.ndarray:
    """One (C, 2) position array per sensor system -> (L, C_max, 2), NaN-padded.

    A system with fewer channels than the largest gets NaN rows at the end: the spatial
    attention treats them as unknown sensors, so they get no weight.

    Parameters
    ----------
    systems : sequence of array, each shape (C_l, 2)
    n_channels : int, optional
        Pad to this many rows (default: the largest C_l).

    Returns
    -------
    ndarray, float32, shape (L, C_max, 2)
    """
    arrays = [np.asarray(p, dtype=np.float32) for p in systems]
    c_max = max(len(a) for a in arrays) if n_channels is None else int(n_channels)
    out = np.full((len(arrays), c_max, 2), np.nan, dtype=np.float32)
    for k, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[1] != 2 or len(a) > c_max:
            raise ValueError(
                f"The positions of sensor system {k} have shape {a.shape}; give (n_channels, 2) "
                f"with at most {c_max} channels."
            )
        out[k, : len(a)] = a
    return out


class SpatialAttention(nn.Module):
    """Sensors -> virtual channels, each a softmax-weighted sum of the sensors.

    Each output channel j has a learned query ``q_j`` over the Fourier features ``f(p_c)``
    of sensor positions; its weights are ``softmax_c(q_j . f(p_c))``. Unknown positions are
    excluded from the softmax. During training, sensors within ``dropout_radius`` of a
    random point of the unit square are excluded too (one point per batch, drawn from
    the module's own generator so that every DDP rank draws the same point).

    Several sensor systems (``positions`` of shape (L, C, 2), NaN-padded, see
    :func:`stack_positions`) share the queries: each window is read with the weights of
    its own system, and padded channels get weight 0 exactly, so a window's output does
    not depend on what it is batched with.

    Parameters
    ----------
    positions : array, shape (C, 2) or (L, C, 2)
        Each system's positions are scaled to [0, 1] on their own.
    n_out : int
    harmonics : int
    margin : float
    dropout_radius : float
    seed : int
    """

    def __init__(
        self,
        positions: np.ndarray | torch.Tensor,
        n_out: int,
        harmonics: int,
        margin: float,
        dropout_radius: float,
        seed: int = 0,
    ) -> None:
        super().__init__()
        raw = np.asarray(positions, dtype=np.float32)
        single = raw.ndim == 2
        stacked = raw[None] if single else raw
        pos = torch.stack([normalize_positions(p) for p in stacked])  # (L, C, 2)
        valid = torch.isfinite(pos).all(dim=-1)
        features = fourier_features(
            torch.nan_to_num(pos, nan=0.0).reshape(-1, 2), harmonics, margin
        ).reshape(pos.shape[0], pos.shape[1], -1)
        # Zero rows for unknown sensors: their scores are masked anyway, and finite
        # features keep NaN out of the gradient of the queries.
        features[~valid] = 0.0
        # A one-system model keeps its (C, 2) buffer (the layout of older checkpoints).
        self.register_buffer("positions", pos[0] if single else pos)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("features", features, persistent=False)
        self.n_systems = int(pos.shape[0])
        n_features = features.shape[-1]
        self.queries = nn.Parameter(torch.randn(n_out, n_features) / math.sqrt(n_features))
        self.dropout_radius = float(dropout_radius)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _masked_scores(self, banned: torch.Tensor | None) -> torch.Tensor:
        scores = torch.matmul(self.queries, self.features.transpose(1, 2))  # (L, n_out, C)
        mask = ~self.valid
        if banned is not None:
            mask = mask | banned
        return torch.softmax(scores.masked_fill(mask[:, None, :], float("-inf")), dim=-1)

    def _banned_sensors(self) -> torch.Tensor | None:
        if not (self.training and self.dropout_radius > 0):
            return None
        center = torch.rand(2, generator=self.generator).to(self.positions.device)
        pos = self.positions.reshape(self.n_systems, -1, 2)
        dist = torch.linalg.vector_norm(pos - center, dim=-1)
        banned = dist <= self.dropout_radius  # NaN distance compares False
        # never remove every sensor of a system
        banned &= (self.valid & ~banned).any(dim=-1, keepdim=True)
        return banned

    def weights(self) -> torch.Tensor:
        """Attention weights, shape (n_out, C), or (L, n_out, C) for L systems; rows sum to 1."""
        if self.training or torch.is_grad_enabled():
            self._cache = None
            w = self._masked_scores(self._banned_sensors())
        else:
            key = (self.queries._version, self.queries.data_ptr(), self.queries.device)
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, self._masked_scores(None))
            w = self._cache[1]
        return w[0] if self.n_systems == 1 else w

    def forward(self, x: torch.Tensor, system: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``x`` (B, C, T) to (B, n_out, T); ``system`` (B,) long with several systems."""
        w = self.weights()
        if self.n_systems == 1:
            return channel_mix(x, w)
        return torch.bmm(w[system], x)


class SubjectLayers(nn.Module):
    """One (C, C) linear map per subject, chosen by subject index.

    Initialised to the identity, so every subject starts from the shared spatial
    mapping and the layer learns only what differs between subjects.
    """

    def __init__(self, channels: int, n_subjects: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(channels).repeat(n_subjects, 1, 1))

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        """Map ``x`` (B, C, T) to (B, C, T); ``subject`` (B,) long, or None for one subject."""
        if subject is None:
            return channel_mix(x, self.weight[0].T)
        w = self.weight[subject]  # (B, C_in, C_out)
        return torch.bmm(w.transpose(1, 2), x)


class BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d with debiased running statistics.

    Under DDP, batch statistics span every rank.

    * Running statistics: the n-th update uses momentum ``max(momentum, 1/n)``, i.e. a
      plain average of the first ``1/momentum`` batches and then torch's usual
      exponential average. torch starts from mean 0 / variance 1 and needs ~60 updates
      to forget that; after spatial attention the activations have a variance of ~1e-3,
      so an early-stopped model trained on a small data set (a few batches per epoch)
      would be evaluated with a variance ~100 times too large and give the same output
      for every window.
    * DDP: torch's SyncBatchNorm is GPU-only; this one reduces the statistics over ranks
      on CPU (gloo) too, which is what makes a 2-process run match a 1-process run with
      the same global batch.

    In eval mode it is exactly ``nn.BatchNorm1d``.
    """

    _debias_done = False  # set once 1/n has fallen below momentum: no more host syncs

    def _update_momentum(self) -> float:
        momentum = 0.1 if self.momentum is None else float(self.momentum)
        if self._debias_done:
            self.num_batches_tracked.add_(1)
            return momentum
        n = int(self.num_batches_tracked) + 1
        self.num_batches_tracked.fill_(n)
        if 1.0 / n <= momentum:
            self._debias_done = True
        return max(momentum, 1.0 / n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.track_running_stats:
            return super().forward(x)
        momentum = self._update_momentum()
        if world_size() == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, True,
                momentum, self.eps,
            )
        c = x.shape[1]
        count = torch.tensor([x.shape[0] * x.shape[2]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2)), (x * x).sum(dim=(0, 2)), count])
        stats = all_reduce_sum(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            self.running_mean.mul_(1 - momentum).add_(momentum * mean)
            self.running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1).clamp_min(1.0))
        y = (x - mean[None, :, None]) * torch.rsqrt(var + self.eps)[None, :, None]
        if self.affine:
            y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y


class Conv1d(nn.Conv1d):
    """A 'same'-padded Conv1d computed on CPU as one matrix product.

    torch's CPU kernel for dilated 1D convolutions is a slow fallback (about 3x the time
    of an undilated one at 320 channels x 30 samples), and even the undilated kernel is
    ~2x slower than a GEMM for one 30-sample window. Stacking the ``k`` shifted copies
    of the input and multiplying by the (C_out, C_in*k) weight matrix computes the same
    thing with one GEMM, which matters for the 5 ms single-window budget; for training
    batches the two cost the same. CUDA uses cuDNN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, d = self.kernel_size[0], self.dilation[0]
        if x.device.type != "cpu":
            return super().forward(x)
        n_times = x.shape[-1]
        xp = F.pad(x, (self.padding[0], self.padding[0]))
        # (B, C_in, k, T) -> (B, C_in*k, T), matching weight.reshape(C_out, C_in*k), so
        # the weight's gradient keeps its layout (DDP's buckets expect that).
        cols = torch.stack([xp[:, :, i * d : i * d + n_times] for i in range(k)], dim=2)
        cols = cols.reshape(x.shape[0], -1, n_times)
        return channel_mix(cols, self.weight.reshape(self.out_channels, -1), self.bias)


class ConvLayer(nn.Module):
    """Dilated 'same' convolution -> BatchNorm -> GELU.

    With a residual skip when the input and output channel counts match.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, batch_norm: bool):
        super().__init__()
        # No bias before BatchNorm: BN removes it, so it would only get a zero gradient.
        self.conv = Conv1d(
            c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation,
            bias=not batch_norm,
        )
        self.norm = BatchNorm1d(c_out) if batch_norm else nn.Identity()
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm(self.conv(x)))
        return x + y if self.residual else y


class GLUGate(nn.Module):
    """Convolution to twice the channels, halved again by a gated linear unit."""

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = Conv1d(
            channels, 2 * channels, kernel, padding=dilation * (kernel // 2), dilation=dilation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.conv(x), dim=1)


class Head(nn.Module):
    """LayerNorm -> GELU -> Linear, reshaped to the target shape."""

    def __init__(self, dim_in: int, target_shape: Sequence[int]) -> None:
        super().__init__()
        self.target_shape = tuple(target_shape)
        self.norm = nn.LayerNorm(dim_in)
        self.linear = nn.Linear(dim_in, int(np.prod(self.target_shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.linear(F.gelu(self.norm(z)))
        return y.reshape(z.shape[0], *self.target_shape)


class TemporalAggregation(nn.Module):
    """Projection (1x1 conv, hidden -> P) followed by aggregation over time.

    Both the projection and the aggregation are linear in the time axis, so the module
    aggregates the hidden features first and projects once: the result equals
    "project every time step, then aggregate" up to rounding, at 1/T of the cost
    (the 2048-channel projection dominates inference time otherwise). The attention
    scores of the projected features are computed through the folded weights too.
    """

    def __init__(self, hidden: int, projection_dim: int, n_times: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.projection = nn.Conv1d(hidden, projection_dim, 1)
        if mode == "affine":
            # Start as the average over time, which is a sensible aggregation already.
            self.time = nn.Linear(n_times, 1)
            nn.init.constant_(self.time.weight, 1.0 / n_times)
            nn.init.zeros_(self.time.bias)
        elif mode == "attention":
            self.score = nn.Linear(projection_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Aggregate ``h`` (B, H, T) over time to (B, P)."""
        w_proj = self.projection.weight[:, :, 0]  # (P, H)
        b_proj = self.projection.bias
        if self.mode == "affine":
            w_t = self.time.weight[0]  # (T,)
            pooled = torch.matmul(h, w_t)  # (B, H)
            return F.linear(pooled, w_proj, b_proj * w_t.sum()) + self.time.bias
        if self.mode == "attention":
            w_score = self.score.weight @ w_proj  # (1, H)
            b_score = self.score.weight @ b_proj + self.score.bias  # (1,)
            logits = torch.matmul(w_score, h)[:, 0] + b_score  # (B, T)
            alpha = torch.softmax(logits, dim=-1)
            pooled = torch.matmul(h, alpha[:, :, None])[:, :, 0]
            return F.linear(pooled, w_proj, b_proj)
        return F.linear(h.mean(dim=-1), w_proj, b_proj)


class BrainModule(nn.Module):
    """Brain encoder: MEG window -> predicted image embedding (two heads).

    Parameters
    ----------
    config : BrainConfig
    positions : array, shape (config.n_channels, 2)
        2D sensor positions (e.g. MNE layout ``pos[:, :2]``); NaN rows are unknown
        sensors, excluded by the spatial attention.
    """

    def __init__(self, config: BrainConfig, positions: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        pos = np.asarray(positions, dtype=np.float32)
        expected = (config.n_channels, 2) if config.n_systems == 1 else (
            config.n_systems, config.n_channels, 2)
        if pos.shape != expected:
            raise ValueError(
                f"positions has shape {pos.shape} but the model has {config.n_systems} sensor "
                f"system(s) of up to {config.n_channels} channels; give shape {expected} "
                "(one (x, y) row per channel; several systems stacked by stack_positions)."
            )
        self.config = config
        c = config
        self.spatial = SpatialAttention(
            pos, c.spatial_channels, c.fourier_harmonics, c.fourier_margin,
            c.spatial_dropout_radius, c.seed,
        )
        self.merge = Conv1d(c.spatial_channels, c.spatial_channels, 1)
        self.subject_layers = SubjectLayers(c.spatial_channels, c.n_subjects) if c.subject_layers else None
        self.register_buffer(
            "subject_system", torch.tensor(c.systems, dtype=torch.long), persistent=False
        )
        layers: list[nn.Module] = []
        c_in = c.spatial_channels
        index = 0
        for _ in range(c.n_blocks):
            for _ in range(c.layers_per_block):
                dilation = 2 ** (index % c.dilation_period)
                layers.append(ConvLayer(c_in, c.hidden, c.kernel_size, dilation, c.batch_norm))
                c_in = c.hidden
                index += 1
            layers.append(GLUGate(c.hidden, c.glu_kernel_size, c.glu_dilation))
        self.blocks = nn.Sequential(*layers)
        self.aggregate = TemporalAggregation(c_in, c.projection_dim, c.n_times, c.aggregation)
        self.heads = nn.ModuleDict(
            {name: Head(c.projection_dim, c.target_shape) for name in ("clip", "mse")}
        )

    def _check_inputs(self, x: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor | None:
        c = self.config
        # With several systems a window may hold only its own system's channels (the
        # rest are padding, which gets no attention weight).
        ok_channels = x.shape[1] == c.n_channels if c.n_systems == 1 else 0 < x.shape[1] <= c.n_channels
        if x.ndim != 3 or not ok_channels or x.shape[2] != c.n_times:
            raise ValueError(
                f"The encoder expects windows of shape (batch, {c.n_channels}, {c.n_times}) "
                f"(channels, samples at the model rate); got {tuple(x.shape)}. Preprocess "
                "with the checkpoint's Preprocessor and window length."
            )
        if subject is None:
            if c.n_subjects > 1 and (self.subject_layers is not None or c.n_systems > 1):
                raise ValueError(
                    f"This encoder was trained on {c.n_subjects} subjects; pass subject "
                    "indices (B,) to forward()."
                )
            return None
        if subject.ndim != 1 or subject.shape[0] != x.shape[0]:
            raise ValueError(
                f"subject must have shape ({x.shape[0]},); got {tuple(subject.shape)}."
            )
        if subject.device.type == "cpu" and subject.numel():
            lo, hi = int(subject.min()), int(subject.max())
            if lo < 0 or hi >= c.n_subjects:
                raise ValueError(
                    f"Subject index {hi if hi >= c.n_subjects else lo} is out of range; this "
                    f"encoder knows subjects 0..{c.n_subjects - 1}."
                )
        return subject.long()

    def encode(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """The shared trunk: x (B, C, T) -> aggregated features (B, projection_dim)."""
        subject = self._check_inputs(x, subject)
        system = None
        if self.config.n_systems > 1:
            if x.shape[1] < self.config.n_channels:
                x = F.pad(x, (0, 0, 0, self.config.n_channels - x.shape[1]))
            system = (self.subject_system[subject] if subject is not None
                      else self.subject_system[:1].expand(x.shape[0]))
        h = self.merge(self.spatial(x, system))
        if self.subject_layers is not None:
            h = self.subject_layers(h, subject)
        h = self.blocks(h)
        return self.aggregate(h)

    def forward(
        self, x: torch.Tensor, subject: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Predict the image embedding of each window.

        Parameters
        ----------
        x : Tensor, float32, shape (B, n_channels, n_times)
            Preprocessed MEG windows.
        subject : Tensor, long, shape (B,), optional
            Subject indices; may be omitted for a single-subject model.

        Returns
        -------
        dict
            ``"clip"`` and ``"mse"``: Tensors of shape (B, D) or (B, N, D) (token grid).
        """
        z = self.encode(x, subject)
        return {name: head(z) for name, head in self.heads.items()}


class RidgeModule(nn.Module):
    """The linear baseline as a servable encoder: flattened window -> embedding.

    ``y = W vec(x) + b``, the same output for both heads. The weights come from a ridge
    regression on standardised windows (:func:`fit_ridge`), with the standardisation
    folded into ``W`` and ``b``, so the module runs on the Preprocessor's output like
    :class:`BrainModule` does. Subjects are accepted and ignored (one map for all).

    Parameters
    ----------
    config : BrainConfig
        ``kind="ridge"``; ``n_channels``, ``n_times`` and ``target_shape`` apply.
    positions : array, shape (config.n_channels, 2)
        Kept with the weights (the checkpoint contract); the map does not use them.
    """

    def __init__(self, config: BrainConfig, positions: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        if config.n_systems != 1:
            raise ValueError(
                f"A ridge encoder reads one sensor system, not {config.n_systems}; train it on "
                "the subjects of one system (--subjects)."
            )
        pos = np.asarray(positions, dtype=np.float32)
        if pos.shape != (config.n_channels, 2):
            raise ValueError(
                f"positions has shape {pos.shape} but the model has {config.n_channels} "
                f"channels; give one (x, y) row per channel, shape ({config.n_channels}, 2)."
            )
        self.config = config
        self.register_buffer("positions", torch.from_numpy(pos.copy()))
        self.linear = nn.Linear(config.n_channels * config.n_times, int(np.prod(config.target_shape)))

    def forward(
        self, x: torch.Tensor, subject: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Predict from x (B, n_channels, n_times): {"clip", "mse"}, each (B, D) or (B, N, D)."""
        c = self.config
        c.check_window_shape(tuple(x.shape))
        y = self.linear(x.reshape(x.shape[0], -1)).reshape(x.shape[0], *c.target_shape)
        return {"clip": y, "mse": y}

    @torch.no_grad()
    def set_weights(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Load a fitted map: ``weight`` (prod(target_shape), C*T), ``bias`` (prod(target_shape),)."""
        self.linear.weight.copy_(torch.as_tensor(np.asarray(weight, np.float32)))
        self.linear.bias.copy_(torch.as_tensor(np.asarray(bias, np.float32)))


def fit_ridge(
    X: np.ndarray, Y: np.ndarray, alphas: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression on standardised flattened windows, folded into one linear map.

    scikit-learn's ``StandardScaler`` then ``RidgeCV`` (efficient leave-one-out over
    ``alphas``); the scaler is folded in, so ``X.reshape(n, -1) @ W.T + b`` is the
    prediction.

    Parameters
    ----------
    X : array, shape (n, C, T)
    Y : array, shape (n, ...)
    alphas : sequence of float

    Returns
    -------
    W : ndarray, float64, shape (prod(Y.shape[1:]), C*T)
    b : ndarray, float64, shape (prod(Y.shape[1:]),)
    alpha : float
        The regularisation RidgeCV chose.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    flat = np.asarray(X).reshape(len(X), -1)
    scaler = StandardScaler().fit(flat)
    ridge = RidgeCV(alphas=list(alphas)).fit(scaler.transform(flat), np.asarray(Y).reshape(len(Y), -1))
    coef = np.atleast_2d(ridge.coef_) / scaler.scale_[None, :]
    bias = np.atleast_1d(ridge.intercept_) - coef @ scaler.mean_
    return coef, bias, float(ridge.alpha_)


def module_for(config: BrainConfig, positions: np.ndarray | torch.Tensor) -> nn.Module:
    """The encoder module a config describes: BrainModule, RidgeModule or RiemannModule (kind)."""
    if config.kind == "riemann":
        from rtdecode.encoder.riemann import RiemannModule

        return RiemannModule(config, positions)
    return (RidgeModule if config.kind == "ridge" else BrainModule)(config, positions)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def build_model(
    preset_or_config: str | BrainConfig | None,
    n_channels: int,
    n_times: int,
    positions: np.ndarray,
    n_subjects: int = 1,
    target_dim: int | Sequence[int] | None = None,
    **overrides,
) -> nn.Module:
    """Build an encoder (BrainModule, or RidgeModule for the ridge preset) for data of the given sizes.

    Parameters
    ----------
    preset_or_config : str or BrainConfig or None
        Preset name (``PRESETS``), a config, or None for ``"paper"``.
    n_channels, n_times : int
        Window shape at the model rate (the largest system's channel count).
    positions : array, shape (n_channels, 2), or (n_systems, n_channels, 2)
        Several systems: NaN-padded (:func:`stack_positions`), and ``subject_system``
        given among ``overrides``.
    n_subjects : int
    target_dim : int or (N, D), optional
        Embedding size; the preset's when None.
    **overrides
        Other BrainConfig fields to change (e.g. ``aggregation="attention"``).
    """
    if preset_or_config is None:
        preset_or_config = "paper"
    base = get_preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    changes = dict(n_channels=int(n_channels), n_times=int(n_times), n_subjects=int(n_subjects))
    pos = np.asarray(positions)
    if pos.ndim == 3 and len(pos) == 1:
        positions = pos[0]
    elif pos.ndim == 3:
        changes["n_systems"] = int(pos.shape[0])
    if target_dim is not None:
        changes["target_shape"] = (
            (int(target_dim),) if np.ndim(target_dim) == 0 else tuple(int(v) for v in target_dim)
        )
    changes.update(overrides)
    return module_for(base.replace(**changes), positions)


__all__ = [
    "BrainModule",
    "RidgeModule",
    "fit_ridge",
    "module_for",
    "stack_positions",
    "SpatialAttention",
    "SubjectLayers",
    "build_model",
    "count_parameters",
    "fourier_features",
    "normalize_positions",
]
