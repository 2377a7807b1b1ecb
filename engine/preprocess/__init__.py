"""Image preprocessing, shared by every backend so an image becomes exactly the same tensor whatever runs the model.

Three parts:

* :mod:`~engine.preprocess.decode`: :func:`load_image` turns a path, encoded bytes, a PIL image or a ``uint8``
  array into a fully decoded RGB image (image-bomb, truncation and mode checks); :data:`IMAGE_SUFFIXES`, the one set
  of image file suffixes, and :func:`list_image_files`.
* :mod:`~engine.preprocess.transform`: :class:`Preprocessor` resizes, crops and normalises a batch and records, per
  image, which region of the original the network saw (:class:`ImageMeta`).
* :mod:`~engine.preprocess.postprocess`: :func:`saliency_to_image` upsamples a low-resolution saliency map onto that
  region of the original image.
"""

from .decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    SOURCE_SIZE_KEY,
    is_image_file,
    jpeg_draft_size,
    list_image_files,
    load_image,
)
from .decode import _to_rgb as _to_rgb  # private, re-exported: imported from engine.preprocess by older tests
from .postprocess import saliency_to_image
from .transform import ImageMeta, Preprocessor

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "SOURCE_SIZE_KEY",
    "ImageMeta",
    "Preprocessor",
    "is_image_file",
    "jpeg_draft_size",
    "list_image_files",
    "load_image",
    "saliency_to_image",
]
