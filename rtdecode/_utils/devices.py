"""Which torch device to run on.

One rule for the encoder, the decoders, the image encoders, training and the service.
torch is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks CUDA when torch sees it, else the CPU.

    Parameters
    ----------
    device : str | torch.device | None
        A torch.device is returned as is; a string is checked: asking for CUDA on a
        machine without it is an error that says what to ask for instead.

    Returns
    -------
    torch.device
    """
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {device!r} was asked for but CUDA is not available here; use "
            "device='cpu' or 'auto'."
        )
    return dev


def device_name(device: str | torch.device | None = "auto") -> str:
    """:func:`resolve_device` as a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    For settings, logs and libraries that take one.
    """
    return str(resolve_device(device))
