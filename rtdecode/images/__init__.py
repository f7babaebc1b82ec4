"""Image galleries and image encoders.

Importing this package loads numpy and PIL only: torch is imported when the ImageNet CNN
(the default encoder) or a transformers encoder is built, scikit-image when images are
encoded by the handcrafted encoder or the demo gallery is made.
"""

from rtdecode.images.build import build_gallery
from rtdecode.images.demo import make_demo_gallery
from rtdecode.images.encoders import (
    DEFAULT_IMAGE_ENCODER,
    LAYER_NAMES,
    ImageEncoder,
    fit_image,
    get_image_encoder,
    image_encoder_for,
    list_image_encoders,
    register_image_encoder,
)
from rtdecode.images.gallery import Gallery, GalleryWarning, load_rgb

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "LAYER_NAMES",
    "Gallery",
    "GalleryWarning",
    "ImageEncoder",
    "build_gallery",
    "fit_image",
    "get_image_encoder",
    "image_encoder_for",
    "list_image_encoders",
    "load_rgb",
    "make_demo_gallery",
    "register_image_encoder",
]
