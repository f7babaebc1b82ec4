"""One window through the brain encoder at batch 1, host array in, host vectors out.

The live worker's lane 1 encodes one 250 ms window every 50 ms. At batch 1 the encoder is
launch-bound on a GPU: the kernels are tiny and the time goes to launching them, to the
copies and to the syncs. :class:`EncoderRunner` is how the worker (and bench/gpu.py, which
measures exactly this) runs it:

* **CPU** (and ``precision="fp32"`` without graphs anywhere): the window as a tensor, the
  forward pass, both heads read back: what the worker always did.
* **CUDA**: the window goes into a pinned host buffer and from there, without blocking,
  into a fixed device buffer; the forward pass runs under autocast (bf16 where the GPU
  has it, else fp16) and is captured once in a CUDA graph, so every later window replays
  it with one launch; both heads are concatenated on the device and come back in ONE
  non-blocking copy into a pinned host buffer, followed by one sync.

Precision: ``"auto"`` is fp32 on the CPU (bf16 on 2 cores is slower and changes the
numbers) and bf16/fp16 on CUDA; every choice can be forced. Graphs: ``None`` captures on
CUDA; a capture that fails (an op that cannot be captured) falls back to eager with a
warning, never a crash.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn

__all__ = ["PRECISIONS", "EncoderRunner", "autocast"]

log = logging.getLogger(__name__)

#: Accepted values of ``precision``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast(
    device: str | torch.device, precision: str, *, cache_enabled: bool = True
) -> AbstractContextManager[object]:
    """The autocast context of ``precision`` on ``device`` (``fp32``: none).

    Parameters
    ----------
    device : str | torch.device
    precision : {"fp32", "bf16", "fp16"}
    cache_enabled : bool
        Keep autocast's cast-weight cache (False around a CUDA graph capture).
    """
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, cache_enabled=cache_enabled)


class EncoderRunner:
    """Run a BrainModule on one window at a time (see the module docstring).

    Parameters
    ----------
    model : BrainModule
        On ``device``, in eval mode (the runner puts it there).
    device : str | torch.device
    n_channels, n_times : int
        The window's shape at the model's input.
    subject : int
        The subject layer's index.
    precision : {"auto", "fp32", "bf16", "fp16"}
    cuda_graph : bool | None
        Capture the forward pass in a CUDA graph (None: on CUDA). Needs CUDA.

    Attributes
    ----------
    precision : str
        What runs: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    cuda_graph : bool
        Whether windows replay a captured graph.
    clip_dim, mse_dim : int
        Sizes of the two heads' vectors.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device,
        n_channels: int,
        n_times: int,
        subject: int = 0,
        *,
        precision: str = "auto",
        cuda_graph: bool | None = None,
    ) -> None:
        import torch

        if precision not in PRECISIONS:
            raise ValueError(
                f"precision={precision!r} is not one of {', '.join(PRECISIONS)}; "
                "use 'auto' unless you are comparing them."
            )
        self._torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if cuda_graph and not self.cuda:
            raise ValueError(
                f"cuda_graph=True needs a CUDA device, not {str(self.device)!r}; leave it None."
            )
        self.model = model.to(self.device).eval()
        self.shape = (1, int(n_channels), int(n_times))
        self.subject = int(subject)
        self.precision = self._resolve_precision(precision)
        self._host_x = torch.zeros(self.shape, dtype=torch.float32, pin_memory=self.cuda)
        self._dev_x = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        self._subject = torch.full((1,), self.subject, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            probe = self.model(self._dev_x, self._subject)
        self.clip_dim = int(probe["clip"][0].numel())
        self.mse_dim = int(probe["mse"][0].numel())
        self._host_y = torch.zeros((1, self.clip_dim + self.mse_dim), dtype=torch.float32,
                                   pin_memory=self.cuda)
        self._graph = None
        self._static_y = None
        self.cuda_graph = False
        if cuda_graph if cuda_graph is not None else self.cuda:
            try:
                self._capture()
                self.cuda_graph = True
            except Exception as exc:  # an op that cannot be captured: eager still works
                log.warning("CUDA graph capture failed (%s); the encoder runs eagerly.", exc)
                self._graph = None

    # ---------------------------------------------------------------- set-up
    def _resolve_precision(self, precision: str) -> str:
        torch = self._torch
        if precision == "auto":
            if not self.cuda:
                return "fp32"
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision

    def _heads(self, x=None):
        # Both heads of the forward pass on ``x`` (the device buffer by default), as one
        # float32 row: [clip | mse].
        torch = self._torch
        # cache_enabled=False: autocast's cast-weight cache must not outlive a capture.
        with autocast(self.device, self.precision, cache_enabled=False):
            out = self.model(self._dev_x if x is None else x, self._subject)
        return torch.cat([out["clip"].reshape(1, -1), out["mse"].reshape(1, -1)], 1).float()

    def _capture(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up on a side stream before capturing
                    self._heads()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: lane 2 may be generating on its own stream meanwhile.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._static_y = self._heads()
        self._graph = graph

    # ---------------------------------------------------------------- run
    def __call__(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode one window.

        Parameters
        ----------
        window : ndarray, shape (n_channels, n_times)
            Preprocessed, at the model's rate.

        Returns
        -------
        clip, mse : ndarray, float32, shapes (clip_dim,), (mse_dim,)
            Fresh arrays (the runner's buffers are reused for the next window).
        """
        torch = self._torch
        x = np.asarray(window, dtype=np.float32)
        if x.shape != self.shape[1:]:
            raise ValueError(
                f"The window has shape {x.shape}; this encoder takes {self.shape[1:]} "
                "(channels, samples at the model's rate)."
            )
        with torch.inference_mode():
            if not self.cuda:
                y = self._heads(torch.from_numpy(x)[None])
                self._host_y.copy_(y)
            else:
                self._host_x[0].copy_(torch.from_numpy(x))
                self._dev_x.copy_(self._host_x, non_blocking=True)
                if self._graph is not None:
                    self._graph.replay()
                    y = self._static_y
                else:
                    y = self._heads()
                self._host_y.copy_(y, non_blocking=True)  # the one device-to-host copy
                torch.cuda.current_stream(self.device).synchronize()
        out = self._host_y.numpy()[0]
        return out[: self.clip_dim].copy(), out[self.clip_dim:].copy()

    def describe(self) -> dict[str, Any]:
        """What runs, for /api/status and benchmarks."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "cuda_graph": self.cuda_graph,
            "pinned_copies": self.cuda,
        }
