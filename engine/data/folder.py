"""A plain folder of images, flat (unlabelled) or with one sub-folder per class."""

from __future__ import annotations

import os

from .base import Dataset, DatasetError, _Record, is_image_file, list_images, register_dataset

__all__ = ["ImageFolder"]


@register_dataset("folder")
class ImageFolder(Dataset):
    """Images in a folder.

    Layouts (chosen automatically)::

        root/                      flat: label = None, class_names = None
            a.jpg
            b.png
        root/                      class folders (torchvision ImageFolder order):
            cat/x.jpg              label = index of the sub-folder in the sorted list of sub-folder names
            dog/more/y.png         (images are found recursively inside a class folder)

    A folder that holds image files directly is read as flat (its sub-folders are then ignored); otherwise every
    non-hidden sub-folder that contains at least one image is a class, in sorted name order (``class_names`` are the
    folder names). Image files are recognised by suffix (:data:`~engine.data.base.IMAGE_EXTENSIONS`); an unreadable
    file raises :class:`~engine.errors.ImageDecodeError` from :meth:`Sample.image`, not at construction.

    Metadata: ``class_name`` (class layout only). There are no splits and no masks.
    """

    name = "folder"

    def __init__(self, root: str | os.PathLike, **kwargs) -> None:
        """Scan the folder.

        Args:
            root: the folder.
            **kwargs: ``limit``, ``subset``, ``seed`` (see :class:`~engine.data.base.Dataset`).
        """
        super().__init__(root, **kwargs)
        flat = list_images(self.root)
        records: list[_Record] = []
        if flat:
            records = [_Record(p, None, {}) for p in flat]
        else:
            classes = []
            for sub in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                images = list_images(sub, recursive=True)
                if images:
                    classes.append((sub.name, images))
            if classes:
                self.class_names = [name for name, _ in classes]
                for label, (name, images) in enumerate(classes):
                    records.extend(_Record(p, label, {"class_name": name}) for p in images)
        if not records:
            others = sum(1 for p in self.root.rglob("*") if p.is_file() and not is_image_file(p))
            hint = f" ({others} non-image files were found)" if others else ""
            raise DatasetError(
                f"No images in {self.root}{hint}. Put image files in the folder itself (unlabelled) or in one "
                "sub-folder per class (root/<class>/<image>)."
            )
        self._finish(records)
