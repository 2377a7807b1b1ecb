"""Dataset readers: image folder, ImageNet val, ImageNet sample, CUB-200-2011, ImageNet-S, teex kahikatea, VOC.

Every reader is a read-only sequence of :class:`Sample` (``path``, ``label``, lazily decoded ``mask``, ``meta``,
``image()``) with ``name``, ``class_names``, and the common arguments ``split``, ``limit``, ``subset`` + ``seed``
and ``with_masks_only``. Build one by name::

    from engine.data import open_dataset

    ds = open_dataset("kahikatea", with_masks_only=True, subset=32)   # root defaults to ../shared/data/kahikatea
    for sample in ds:
        image, mask = sample.image(), sample.mask                      # PIL RGB, (H, W) bool at the image's size

Errors: a missing or empty dataset, a missing labels file, or a mask whose size differs from its image's raise
:class:`DatasetError` (naming the path and the expected layout); an unreadable image raises
:class:`~engine.errors.ImageDecodeError` from :meth:`Sample.image` (images are not decoded at construction).
"""

from .base import (
    IMAGE_EXTENSIONS,
    Dataset,
    DatasetError,
    Sample,
    available_datasets,
    default_root,
    image_name,
    open_dataset,
    register_dataset,
    shared_data_dir,
)
from .cub import CUB200
from .folder import ImageFolder
from .imagenet import ImageNetSample, ImageNetVal, read_class_table
from .imagenet_s import ImageNetS, decode_segmentation
from .kahikatea import Kahikatea
from .voc import VOC_CLASSES, VOCSegmentation

__all__ = [
    "CUB200",
    "IMAGE_EXTENSIONS",
    "VOC_CLASSES",
    "Dataset",
    "DatasetError",
    "ImageFolder",
    "ImageNetS",
    "ImageNetSample",
    "ImageNetVal",
    "Kahikatea",
    "Sample",
    "VOCSegmentation",
    "available_datasets",
    "decode_segmentation",
    "default_root",
    "image_name",
    "open_dataset",
    "read_class_table",
    "register_dataset",
    "shared_data_dir",
]
