"""CUB-200-2011 (Caltech-UCSD Birds): 200 classes, official train/test split, boxes and segmentations."""

from __future__ import annotations

import functools
import os
import re
import textwrap
from pathlib import Path
from typing import Any

from .base import Dataset, DatasetError, _Record, binary_mask, read_table, register_dataset, require_file

__all__ = ["CUB200"]

_LAYOUT = """\
    CUB_200_2011/                      (root; or its parent folder)
        images.txt                     "<image_id> <class_dir>/<file>.jpg"
        image_class_labels.txt         "<image_id> <class_id>"   (class_id 1..200)
        train_test_split.txt           "<image_id> <is_training_image>"   (1 = train, 0 = test)
        classes.txt                    "<class_id> <class_dir>"   e.g. "1 001.Black_footed_Albatross"
        bounding_boxes.txt             "<image_id> <x> <y> <width> <height>"   (optional)
        images/<class_dir>/<file>.jpg
    segmentations/<class_dir>/<file>.png   (the separate segmentations archive: inside root, beside root, or
                                            segmentations_root=...)"""
_PREFIX = re.compile(r"^\d+\.")


@register_dataset("cub", default_folder="CUB_200_2011")
class CUB200(Dataset):
    """CUB-200-2011.

    Layout::

    {layout}

    ``label`` is ``class_id - 1`` (0-based, in the order of ``classes.txt``); ``class_names`` are the class folder
    names without their number prefix (``"Black_footed_Albatross"``). ``split="train"`` / ``"test"`` follow
    ``train_test_split.txt``. The segmentation PNGs are soft greyscale (annotators' agreement, 0..255); the mask is
    ``value >= mask_threshold`` (default 128, i.e. at least half of the annotators). Images without a segmentation
    file (or every image, when the archive is absent) have ``mask = None``.

    Metadata: ``image_id``, ``class_name``, ``split``, ``bbox`` (``(x, y, width, height)`` in pixels, when
    ``bounding_boxes.txt`` exists), ``mask_path`` (when the segmentation exists).
    """

    name = "cub"
    splits = ("train", "test")

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        segmentations_root: str | os.PathLike | None = None,
        mask_threshold: int = 128,
        **kwargs: Any,
    ) -> None:
        """Read the index files.

        Args:
            root: the ``CUB_200_2011`` folder (or the folder that contains it).
            segmentations_root: the ``segmentations`` folder; by default ``root/segmentations`` or
                ``root/../segmentations``, whichever exists (none: no masks).
            mask_threshold: greyscale level (0..255) from which a segmentation pixel is ``True``.
            **kwargs: ``split``, ``limit``, ``subset``, ``seed``, ``with_masks_only`` (see
                :class:`~engine.data.base.Dataset`).
        """
        root_path = Path(os.fspath(root))
        if not (root_path / "images.txt").is_file() and (root_path / "CUB_200_2011" / "images.txt").is_file():
            root_path = root_path / "CUB_200_2011"
        super().__init__(root_path, **kwargs)
        self.segmentations_root = self._find_segmentations(segmentations_root)

        def table(name: str, fields: int) -> list[list[str]]:
            return read_table(require_file(self.root / name, f"CUB-200-2011 file {name}", _LAYOUT), fields)

        images = {int(r[0]): " ".join(r[1:]) for r in table("images.txt", 2)}
        classes = {int(r[0]): " ".join(r[1:]) for r in table("classes.txt", 2)}
        labels = {int(r[0]): int(r[1]) for r in table("image_class_labels.txt", 2)}
        is_train = {int(r[0]): r[1] == "1" for r in table("train_test_split.txt", 2)}
        boxes: dict[int, tuple[float, ...]] = {}
        if (self.root / "bounding_boxes.txt").is_file():
            boxes = {int(r[0]): tuple(float(v) for v in r[1:5]) for r in table("bounding_boxes.txt", 5)}
        if sorted(classes) != list(range(1, len(classes) + 1)):
            raise DatasetError(f"{self.root / 'classes.txt'} must number its classes 1..N without gaps.")
        self.class_names = [_PREFIX.sub("", classes[i]) for i in range(1, len(classes) + 1)]

        records = []
        for image_id, rel in sorted(images.items()):
            for name, mapping in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
                if image_id not in mapping:
                    raise DatasetError(f"Image id {image_id} ({rel}) is missing from {self.root / name}.")
            split = "train" if is_train[image_id] else "test"
            if self.split is not None and split != self.split:
                continue
            label = labels[image_id] - 1
            if not 0 <= label < len(self.class_names):
                raise DatasetError(
                    f"{self.root / 'image_class_labels.txt'}: image {image_id} has class {label + 1}, not in "
                    f"classes.txt (1..{len(self.class_names)})."
                )
            path = self.root / "images" / rel
            meta: dict[str, Any] = {"image_id": image_id, "class_name": self.class_names[label], "split": split}
            if image_id in boxes:
                meta["bbox"] = boxes[image_id]
            loader = None
            if self.segmentations_root is not None:
                mask_path = (self.segmentations_root / rel).with_suffix(".png")
                if mask_path.is_file():
                    meta["mask_path"] = mask_path
                    loader = functools.partial(binary_mask, mask_path, path, threshold=mask_threshold)
            records.append(_Record(path, label, meta, loader))
        self._finish(records)

    def _find_segmentations(self, given: str | os.PathLike | None) -> Path | None:
        if given is not None:
            path = Path(os.fspath(given))
            if not path.is_dir():
                raise DatasetError(
                    f"segmentations_root {path} is not a folder. Pass the folder extracted from segmentations.tgz "
                    "(it holds one sub-folder per class)."
                )
            return path
        for candidate in (self.root / "segmentations", self.root.parent / "segmentations"):
            if candidate.is_dir():
                return candidate
        return None


CUB200.__doc__ = (CUB200.__doc__ or "").replace("    {layout}", textwrap.indent(_LAYOUT, "    "))
