"""PASCAL VOC 2012 segmentation: the standard VOCdevkit layout and the compact ``voc2012-14`` layout."""

from __future__ import annotations

import csv
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .base import Dataset, DatasetError, Sample, _Record, index_mask, is_image_file, read_table, register_dataset

__all__ = ["VOC_CLASSES", "VOC_IGNORE", "VOCSegmentation"]

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
"""The 21 VOC segmentation labels; the index is the pixel value in the index PNGs (0 = background)."""
VOC_IGNORE = 255
"""Pixel value of object borders and difficult regions ("void"), left out of evaluation."""

_LAYOUT = """\
    VOCdevkit layout (root = VOCdevkit/VOC2012, VOCdevkit, or the folder holding VOCdevkit):
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png           index PNG: 0 = background, 1..20 = classes, 255 = ignore
        ImageSets/Segmentation/{train,val,trainval}.txt   one <id> per line
    compact layout (../shared/data/voc2012-14; val images only):
        images/<file>
        masks/<file stem>.png                index PNG as above
        labels.csv                           columns: file, voc_class_ids ("2;5"), ... (optional)"""


@register_dataset("voc", default_folder="voc2012-14")
class VOCSegmentation(Dataset):
    """PASCAL VOC 2012 segmentation images with their class masks.

    Layouts::

    {layout}

    Splits: ``"train"``, ``"val"``, ``"trainval"`` from ``ImageSets/Segmentation`` (``None`` = ``trainval.txt`` when
    present, else every PNG in ``SegmentationClass``); the compact layout holds only ``"val"``.

    **Labels** are the VOC indices 1..20 (``class_names = VOC_CLASSES``, whose entry 0 is ``"background"``; a
    20-way classifier's index is ``label - 1``). VOC is multi-label: ``meta["classes"]`` lists the class ids present
    in the mask (sorted). By default there is one sample per image whose ``label`` is the present class with the
    most pixels (ties: the lower id; ``None`` for an image without objects). With ``per_class=True`` there is one
    sample per (image, present class), ``label`` = that class; the classes are then read at construction (from
    ``labels.csv`` in the compact layout, otherwise by decoding every mask once).

    **Masks.** ``mask = (index == label)``, ``meta["ignore"] = (index == 255)``. The index PNG is decoded when the
    sample is fetched (``dataset[i]``); :meth:`index_map` returns the raw index array, to build any class's mask.
    Metadata: ``classes``, ``class_name``, ``ignore``, ``mask_path``, ``split``, ``image_id``.
    """

    name = "voc"
    splits = ("train", "val", "trainval")

    def __init__(self, root: str | os.PathLike, *, per_class: bool = False, **kwargs: Any) -> None:
        """Find the layout and list the images.

        Args:
            root: the dataset folder (see the layouts).
            per_class: one sample per (image, present class) instead of one per image.
            **kwargs: ``split``, ``limit``, ``subset``, ``seed`` (see :class:`~engine.data.base.Dataset`).
        """
        root_path = Path(os.fspath(root))
        for candidate in (root_path / "VOC2012", root_path / "VOCdevkit" / "VOC2012"):
            if not (root_path / "JPEGImages").is_dir() and (candidate / "JPEGImages").is_dir():
                root_path = candidate
        super().__init__(root_path, **kwargs)
        self.class_names = list(VOC_CLASSES)
        self.per_class = per_class
        if (self.root / "JPEGImages").is_dir():
            self.layout = "devkit"
            entries = self._scan_devkit()
        elif (self.root / "images").is_dir() and (self.root / "masks").is_dir():
            self.layout = "compact"
            entries = self._scan_compact()
        else:
            raise DatasetError(f"{self.root} is not a VOC folder. Expected one of these layouts:\n{_LAYOUT}")
        records = []
        for path, mask_path, meta, classes in entries:
            meta["mask_path"] = mask_path
            if not per_class:
                records.append(_Record(path, None, meta, lambda: None))
                continue
            if classes is None:
                index = index_mask(mask_path, path)
                classes = [int(c) for c in np.unique(index) if 0 < c < len(VOC_CLASSES)]
            records.extend(_Record(path, c, dict(meta), lambda: None) for c in classes)
        self._finish(records)

    # -------------------------------------------------------------------------------------------------------- layouts

    def _scan_devkit(self) -> list[tuple[Path, Path, dict[str, Any], list[int] | None]]:
        sets = self.root / "ImageSets" / "Segmentation"
        seg = self.root / "SegmentationClass"
        if self.split is not None:
            list_file = sets / f"{self.split}.txt"
            if not list_file.is_file():
                raise DatasetError(f"Missing split file {list_file}. Expected layout:\n{_LAYOUT}")
        elif (sets / "trainval.txt").is_file():
            list_file = sets / "trainval.txt"
        else:
            list_file = None
        if list_file is not None:
            ids = [fields[0] for fields in read_table(list_file, 1)]
        elif seg.is_dir():
            ids = sorted(p.stem for p in seg.glob("*.png"))
        else:
            raise DatasetError(f"Missing {seg} (and {sets}). Expected layout:\n{_LAYOUT}")
        split = self.split or (list_file.stem if list_file is not None else None)
        out = []
        for image_id in ids:
            meta: dict[str, Any] = {"image_id": image_id}
            if split is not None:
                meta["split"] = split
            out.append((self.root / "JPEGImages" / f"{image_id}.jpg", seg / f"{image_id}.png", meta, None))
        return out

    def _scan_compact(self) -> list[tuple[Path, Path, dict[str, Any], list[int] | None]]:
        if self.split not in (None, "val"):
            raise DatasetError(
                f"The compact VOC layout at {self.root} holds only val images; pass split='val' or None."
            )
        known: dict[str, list[int]] = {}
        labels = self.root / "labels.csv"
        if labels.is_file():
            with labels.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    if row.get("file") and row.get("voc_class_ids") is not None:
                        known[row["file"]] = sorted(int(v) for v in row["voc_class_ids"].split(";") if v.strip())
        images = sorted((p for p in (self.root / "images").iterdir() if p.is_file() and is_image_file(p)), key=_key)
        return [
            (p, self.root / "masks" / f"{p.stem}.png", {"image_id": p.stem, "split": "val"}, known.get(p.name))
            for p in images
        ]

    # -------------------------------------------------------------------------------------------------------- samples

    def index_map(self, i: int) -> np.ndarray:
        """The raw ``(H, W)`` uint8 index map of sample ``i`` (0 background, 1..20 classes, 255 ignore)."""
        record = self._records[i]
        return index_mask(record.meta["mask_path"], record.path)

    def _sample(self, record: _Record) -> Sample:
        meta = dict(record.meta)
        index = index_mask(meta["mask_path"], record.path)
        classes = [int(c) for c in np.unique(index) if 0 < c < len(VOC_CLASSES)]
        label = record.label
        if label is None and classes:
            counts = np.bincount(index.ravel(), minlength=256)
            label = max(classes, key=lambda c: (int(counts[c]), -c))
        meta["classes"] = classes
        meta["ignore"] = index == VOC_IGNORE
        if label is not None:
            meta["class_name"] = VOC_CLASSES[label]
        mask = index == label if label is not None else np.zeros(index.shape, dtype=bool)
        return Sample(record.path, label, meta, lambda: mask)


def _key(path: Path) -> tuple[int, str]:
    """Numeric file names (``8.png`` before ``20.png``) in numeric order, then the rest by name."""
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.name)


VOCSegmentation.__doc__ = (VOCSegmentation.__doc__ or "").replace("    {layout}", textwrap.indent(_LAYOUT, "    "))
