"""From a checkpoint to a ready decoder: the one way to open one for decoding.

``rtdecode serve`` (``service.py``), ``rtdecode evaluate-online`` (``training/online.py``)
and ``rtdecode evaluate`` (``training/evaluate.py``) open their checkpoint here:

* :func:`open_decoding` opens the checkpoint once (``open_checkpoint``: the model and its
  :class:`~rtdecode.encoder.card.CheckpointCard`), picks the subject's row of the subject
  layer and its sensor system, checks the window once (:func:`check_window`), builds the
  system's preprocessor and the retrieval set (:func:`load_retrieval`), and loads the
  image decoder, if any, checked against the encoder's image space. The result, a
  :class:`Decoding`, builds the :class:`~rtdecode.worker.DecodeWorker` that runs it.
* :func:`gallery_space` is the gallery, the target's image encoder and the gallery's
  standardised embeddings: the space in which the CLIP head's predictions are ranked
  (live and offline).

Errors about an argument raise :class:`~rtdecode.contracts.ParameterError` naming the
parameter (``subject``, ``gallery``, ``retrieval_set``, ``window_s``,
``allow_fixed_window``, ``decoder``); the command line names the matching flag.

Threads: called once, in the thread that starts the service or the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rtdecode.contracts import Frame, ParameterError
from rtdecode.encoder.card import CheckpointCard, SensorSystem
from rtdecode.lanes import WindowSource, WorkerOptions

if TYPE_CHECKING:
    from rtdecode.decoder.base import ImageDecoder
    from rtdecode.decoder.retrieval import Retrieval
    from rtdecode.encoder.model import BrainModule
    from rtdecode.images.categories import CategoryGallery
    from rtdecode.images.encoders import ImageEncoder
    from rtdecode.images.gallery import Gallery
    from rtdecode.signal.preprocess import Preprocessor
    from rtdecode.worker import DecodeWorker

__all__ = [
    "RETRIEVAL_SETS",
    "Decoding",
    "GallerySpace",
    "check_image_space",
    "check_window",
    "gallery_space",
    "load_retrieval",
    "open_decoding",
    "retrieval_ids",
]

#: ``retrieval_set`` names; anything else is a folder of images.
RETRIEVAL_SETS = ("test", "all")


@dataclass(frozen=True, eq=False)
class Decoding:
    """A checkpoint opened for decoding one subject's stream (:func:`open_decoding`).

    Attributes
    ----------
    model : torch.nn.Module
        The encoder, in eval mode, on ``device``.
    card : CheckpointCard
    subject : int
        The row of the subject layer to decode with.
    system : SensorSystem
        That subject's sensor system (channels, positions, preprocessing).
    preprocessor : rtdecode.signal.preprocess.Preprocessor
        The system's fitted preprocessing.
    window_s : float
        The window length to cut (the checkpoint's).
    gallery : Gallery or CategoryGallery
    retrieval : rtdecode.decoder.retrieval.Retrieval
        The retrieval set, in the CLIP head's (standardised) space.
    image_decoder : ImageDecoder or None
    device : str
    """

    model: BrainModule
    card: CheckpointCard
    subject: int
    system: SensorSystem
    preprocessor: Preprocessor
    window_s: float
    gallery: Gallery | CategoryGallery
    retrieval: Retrieval
    image_decoder: ImageDecoder | None
    device: str

    @property
    def window_shape(self) -> tuple[int, int]:
        """(channels, samples at the model rate) of one preprocessed window."""
        pre = self.preprocessor
        return len(pre.config.ch_names), pre.n_times_out(self.window_s)

    def worker(self, windows: WindowSource, publish: Callable[[Frame], None],
               options: WorkerOptions | None = None) -> DecodeWorker:
        """The :class:`~rtdecode.worker.DecodeWorker` that decodes ``windows`` with this."""
        from rtdecode.worker import DecodeWorker

        return DecodeWorker(
            windows, self.preprocessor, self.model, self.retrieval, self.image_decoder, publish,
            device=self.device, options=options, target_stats=self.card.target.stats,
            gallery=self.gallery, subject=self.subject, window_shape=self.window_shape,
        )


def open_decoding(
    ckpt_dir: str | Path,
    *,
    subject: str | None = None,
    device: str = "cpu",
    gallery: str | Path | None = None,
    retrieval_set: str = "all",
    decoder: str | None = None,
    window_s: float | None = None,
    allow_fixed_window: bool = False,
    hop_s: float = 0.05,
    progress: bool = True,
) -> Decoding:
    """Open a checkpoint for decoding: model, subject, preprocessor, retrieval set, decoder.

    Parameters
    ----------
    ckpt_dir : path
        The encoder checkpoint folder.
    subject : str, optional
        The subject whose stream is decoded (required when the checkpoint has several).
    device : str
        Where the encoder (and the gallery's image encoder and the decoder) run.
    gallery : path, optional
        Gallery folder (default: the one the checkpoint names).
    retrieval_set : str
        ``"test"``, ``"all"`` or a folder of images (:func:`load_retrieval`).
    decoder : str, optional
        An image decoder (registry name or folder); None or ``"none"`` for retrieval only.
    window_s : float, optional
        A window length asked for; it must be the checkpoint's (:func:`check_window`).
    allow_fixed_window : bool
        Decode with a checkpoint trained on one fixed window after onset.
    hop_s : float
        The hop windows are cut at (named in the fixed-window refusal).
    progress : bool
        Show the gallery embedding's progress.

    Returns
    -------
    Decoding
    """
    from rtdecode.encoder.checkpoint import open_checkpoint

    model, card = open_checkpoint(ckpt_dir, device=device)
    index = card.subject_index(subject)  # an unknown subject's error names `rtdecode calibrate`
    length_s = check_window(card, window_s, allow_fixed_window=allow_fixed_window, hop_s=hop_s)
    system = card.system_of(index)
    pre = system.preprocessor()
    gallery_, retrieval = load_retrieval(card, gallery, retrieval_set, device=device,
                                         progress=progress)
    image_decoder = None
    if decoder and decoder.lower() != "none":
        from rtdecode.decoder.registry import load_decoder

        image_decoder = load_decoder(decoder, device=device)
        check_image_space(card, getattr(image_decoder, "image_encoder", None),
                          "the decoder's image encoder", "decoder")
    return Decoding(model=model, card=card, subject=index, system=system, preprocessor=pre,
                    window_s=length_s, gallery=gallery_, retrieval=retrieval,
                    image_decoder=image_decoder, device=str(device))


# --------------------------------------------------------------------------- checks
def check_window(card: CheckpointCard, window_s: float | None = None, *,
                 allow_fixed_window: bool = False, hop_s: float = 0.05) -> float:
    """The window length to cut, after checking the checkpoint was trained for streaming.

    Parameters
    ----------
    card : CheckpointCard
    window_s : float, optional
        A length asked for (None: the checkpoint's); another length is refused.
    allow_fixed_window : bool
        Accept a checkpoint trained on one fixed window after onset.
    hop_s : float
        The hop of the windows to decode (for the refusal's sentence).

    Returns
    -------
    float
        The checkpoint's ``window_s``.
    """
    length_s = card.window.length_s
    if length_s is None:
        if window_s is None:
            raise ParameterError(
                "window_s", "The checkpoint does not record its window length; set {param} "
                "to the length it was trained on."
            )
        length_s = float(window_s)
    if window_s is not None and abs(float(window_s) - length_s) > 1e-9:
        raise ParameterError(
            "window_s",
            f"The encoder was trained on {length_s} s windows but {{param}}={window_s} was "
            f"asked for; leave {{param}} unset (the checkpoint's is used) or retrain with "
            f"window_s = {window_s} in the recipe.",
        )
    if card.window.sampling == "fixed" and not allow_fixed_window:
        raise ParameterError(
            "allow_fixed_window",
            f"This encoder was trained on one window ({length_s} s starting "
            f"{card.window.start_s} s after onset), but serve cuts a window every {hop_s} s at "
            "every lag, most of which it never saw. Retrain it with the streaming recipe "
            '(window_sampling = "stream" in the [train] table, the default), or pass {param}.',
        )
    return length_s


def check_image_space(card: CheckpointCard, name: str | None, what: str,
                      parameter: str | None = None) -> None:
    """Refuse embeddings of another image encoder than the one the model was trained on.

    Parameters
    ----------
    card : CheckpointCard
    name : str or None
        The other image encoder's identity (None: unknown, accepted).
    what : str
        What it belongs to, for the sentence (``"the decoder's image encoder"``).
    parameter : str, optional
        The argument that chose it (``"decoder"``): the error is then a ParameterError.
    """
    expected = card.target.name
    if expected is None or name is None or name == expected:
        return
    fix = (f"give a {{param}} made with {expected!r}" if parameter
           else f"use the same image encoder ({expected!r})")
    message = (f"The encoder was trained to predict {expected!r} embeddings but {what} is "
               f"{name!r}; {fix} (or retrain the encoder on {name!r}).")
    if parameter is None:
        raise ValueError(message)
    raise ParameterError(parameter, message)


# --------------------------------------------------------------------------- retrieval
@dataclass(frozen=True, eq=False)
class GallerySpace:
    """A gallery in the CLIP head's space.

    Attributes
    ----------
    gallery : Gallery or CategoryGallery
    image_encoder : ImageEncoder
        The one the checkpoint's target names.
    embeddings : ndarray, float32, shape (n_images, ...)
        The gallery's embeddings, standardised with the target's statistics (row ``i``
        is ``gallery.ids[i]``).
    """

    gallery: Gallery | CategoryGallery
    image_encoder: ImageEncoder
    embeddings: np.ndarray


def gallery_space(card: CheckpointCard, gallery_dir: str | Path, *, labels: str | None = None,
                  device: str = "cpu", progress: bool = True) -> GallerySpace:
    """Open ``gallery_dir`` and embed it as the checkpoint's CLIP head predicts.

    Parameters
    ----------
    card : CheckpointCard
    gallery_dir : path
    labels : str, optional
        ``"image"`` or ``"category"`` when the checkpoint does not say (its own wins).
    device : str
        Where the image encoder runs.
    progress : bool
    """
    from rtdecode.encoder.metrics import standardize
    from rtdecode.images.categories import open_gallery

    gallery = open_gallery(gallery_dir, card.target.labels or labels)  # images, or categories
    encoder = card.target.image_encoder(device)
    check_image_space(card, encoder.name, "the image encoder built here from its target")
    # The CLIP head was trained against z-scored embeddings: search in that space.
    z = standardize(gallery.embeddings(encoder, progress=progress), card.target.stats)
    return GallerySpace(gallery, encoder, z)


def load_retrieval(
    card: CheckpointCard,
    gallery_dir: str | Path | None = None,
    retrieval_set: str = "all",
    *,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[Gallery | CategoryGallery, Retrieval]:
    """The gallery and the retrieval index a checkpoint decodes into.

    Parameters
    ----------
    card : CheckpointCard
    gallery_dir : path, optional
        Gallery folder (default: the one the checkpoint names).
    retrieval_set : str
        ``"test"`` (the checkpoint's held-out test images, the paper's small test set),
        ``"all"`` (every gallery image) or a folder of images to retrieve among.
    device : str
        Where the gallery's image encoder embeds the images.
    progress : bool

    Returns
    -------
    gallery : Gallery or CategoryGallery
        Thumbnails and embeddings come from it.
    retrieval : Retrieval
        Over the standardised embeddings of the retrieval set (the CLIP head's space).
    """
    from rtdecode.decoder.retrieval import Retrieval

    if retrieval_set not in RETRIEVAL_SETS:
        gallery_dir = Path(retrieval_set).expanduser()  # a folder of images
    elif gallery_dir is None:
        gallery_dir = card.gallery_dir
    if gallery_dir is None:
        raise ParameterError(
            "gallery", "No gallery for retrieval; pass {param} DIR or use a checkpoint whose "
            "config.json names its gallery."
        )
    space = gallery_space(card, gallery_dir, device=device, progress=progress)
    ids = retrieval_ids(retrieval_set, card, space.gallery)
    rows = [space.gallery.index(i) for i in ids]
    return space.gallery, Retrieval(space.embeddings[rows], ids)


def retrieval_ids(retrieval_set: str, card: CheckpointCard,
                  gallery: Gallery | CategoryGallery) -> list[str]:
    """Ids of the images to retrieve among.

    ``test``: the checkpoint's held-out (zero-shot) test images, the paper's "small test
    set"; ``all`` or a folder: every image of the gallery.
    """
    if retrieval_set != "test":
        return list(gallery.ids)
    test = list(card.test_images)
    if not test:
        raise ParameterError(
            "retrieval_set",
            "{param} test needs the checkpoint's list of held-out test images, and this "
            "checkpoint has none (config.json 'test_images'); retrain it with this rtdecode, "
            "or use {param} all or a folder of images.",
        )
    missing = [i for i in test if i not in gallery]
    if missing:
        raise ParameterError(
            "gallery",
            f"The gallery {gallery.root} lacks {len(missing)} of the checkpoint's test images, "
            f"e.g. {missing[:3]}; pass the gallery it was trained with ({{param}}).",
        )
    return test
