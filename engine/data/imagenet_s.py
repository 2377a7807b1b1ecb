"""ImageNet-S (ImageNetS919 / ImageNetS300 / ImageNetS50): ImageNet images with semantic segmentation masks."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    Dataset,
    DatasetError,
    Sample,
    _Record,
    check_mask_size,
    list_images,
    open_mask_image,
    read_table,
    register_dataset,
)

__all__ = ["IGNORE_ID", "OTHER_ID", "ImageNetS", "decode_segmentation"]

OTHER_ID = 0
"""Segmentation id of pixels of no ImageNet-S category (background / "others")."""
IGNORE_ID = 1000
"""Segmentation id of pixels left out of the evaluation ("ignored part")."""

_WNID = re.compile(r"^n\d{8}$")
_VARIANTS = ("919", "300", "50")
_SPLIT_DIRS = {"val": ("validation", "validation-segmentation"), "train": ("train-semi", "train-semi-segmentation")}
_LAYOUT = """\
    imagenet-s/                                  (root; or root = one ImageNetS<N> folder)
        ImageNetS919/ (or ImageNetS300/, ImageNetS50/)
            validation/<wnid>/<name>.JPEG
            validation-segmentation/<wnid>/<name>.png      RGB, class id = R + 256 * G
            train-semi/<wnid>/<name>.JPEG                  (optional, split="train")
            train-semi-segmentation/<wnid>/<name>.png"""


def decode_segmentation(mask_path: Path, image_path: Path | None = None) -> np.ndarray:
    """Decode an ImageNet-S segmentation PNG to class ids: ``R + 256 * G`` (an ``(H, W)`` int32 array).

    Id ``0`` (:data:`OTHER_ID`) is "others" (no ImageNet-S category, i.e. background), ``1000`` (:data:`IGNORE_ID`)
    is the ignored part, ``1..N`` are the categories. A single-channel PNG (``L`` / ``P``) is read as the ids
    themselves.

    Args:
        mask_path: the PNG.
        image_path: its image; when given, the sizes must match.
    """
    img = open_mask_image(mask_path)
    if img.mode in ("L", "P"):
        ids = np.asarray(img, dtype=np.int32)
    else:
        rgb = np.asarray(img.convert("RGB"), dtype=np.int32)
        ids = rgb[..., 0] + 256 * rgb[..., 1]
    return ids if image_path is None else check_mask_size(ids, mask_path, image_path)


@register_dataset("imagenet-s", default_folder="ImageNet-S")
class ImageNetS(Dataset):
    """ImageNet-S validation (and train-semi) images with their segmentations.

    Layout::

    {layout}

    Splits: ``"val"`` = ``validation/``, ``"train"`` = ``train-semi/`` (the annotated training images; the full
    ``train/`` folder has no masks: read it with the ``folder`` reader); ``None`` = both, where present.

    **Labels.** With ``class_index_file`` (ImageNet-S's ``ImageNetS_categories_im919.txt`` / ``_im300`` / ``_im50``:
    one wnid per line, line ``i`` (1-based) = segmentation id ``i``, the convention mmsegmentation follows too),
    ``label = line index - 1`` and the segmentation id of the image's class is ``label + 1``. Without it, ``label``
    is the 0-based index of the image's wnid in the **sorted list of the wnid folders present** (over both splits,
    so train and val agree), and the segmentation id of the image's class is read from its mask: the most frequent
    id other than 0 and 1000 (``meta["mask_class_id"]``). These labels are not ImageNet-1k (torchvision) indices.

    **Masks.** ``mask = (id == the image's class id)``; ``meta["ignore"]`` is ``id == 1000``. The PNG is decoded
    when the sample is fetched (``dataset[i]``); use :attr:`labels` to read labels without decoding. ``class_names``
    are the wnids (ImageNet-S ships no names). Metadata: ``wnid``, ``split``, ``mask_path``, ``mask_class_id``,
    ``ignore``, ``segment_ids`` (ids present, without 0 and 1000).
    """

    name = "imagenet-s"
    splits = ("val", "train")

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        variant: str | int | None = None,
        class_index_file: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        """Scan the class folders.

        Args:
            root: the folder holding ``ImageNetS919`` (etc.) or one such folder.
            variant: ``"919"``, ``"300"`` or ``"50"``; needed only when root holds several.
            class_index_file: ImageNet-S's category list (one wnid per line, in segmentation-id order).
            **kwargs: ``split``, ``limit``, ``subset``, ``seed``, ``with_masks_only`` (see
                :class:`~engine.data.base.Dataset`).
        """
        super().__init__(root, **kwargs)
        self.dataset_dir = self._find_variant(variant)
        wnid_dirs: dict[str, dict[str, Path]] = {}
        for split, (image_dir, _) in _SPLIT_DIRS.items():
            folder = self.dataset_dir / image_dir
            if folder.is_dir():
                wnid_dirs[split] = {p.name: p for p in folder.iterdir() if p.is_dir() and _WNID.match(p.name)}
        if not wnid_dirs:
            raise DatasetError(
                f"{self.dataset_dir} has neither validation/ nor train-semi/. Expected layout:\n{_LAYOUT}"
            )
        self._index_order = class_index_file is not None
        if class_index_file is not None:
            path = Path(os.fspath(class_index_file))
            if not path.is_file():
                raise DatasetError(f"class_index_file {path} does not exist. Pass ImageNetS_categories_im<N>.txt.")
            order = [fields[0] for fields in read_table(path, 1)]
        else:
            order = sorted({w for dirs in wnid_dirs.values() for w in dirs})
        self.class_names = order
        index = {w: i for i, w in enumerate(order)}

        records = []
        for split, (_, seg_dir) in _SPLIT_DIRS.items():
            if split not in wnid_dirs or (self.split is not None and split != self.split):
                continue
            for wnid in sorted(wnid_dirs[split]):
                if wnid not in index:
                    raise DatasetError(
                        f"Class folder {wnid_dirs[split][wnid]} is not in the class_index_file. Pass the category "
                        "list of this variant."
                    )
                for path in list_images(wnid_dirs[split][wnid]):
                    mask_path = self.dataset_dir / seg_dir / wnid / (path.stem + ".png")
                    meta: dict[str, Any] = {"wnid": wnid, "split": split}
                    has_mask = mask_path.is_file()
                    if has_mask:
                        meta["mask_path"] = mask_path
                    records.append(_Record(path, index[wnid], meta, (lambda: None) if has_mask else None))
        self._finish(records)

    def _find_variant(self, variant: str | int | None) -> Path:
        if any((self.root / d).is_dir() for d, _ in _SPLIT_DIRS.values()):
            return self.root
        if variant is not None:
            if str(variant) not in _VARIANTS:
                raise DatasetError(f"variant must be one of {list(_VARIANTS)}, got {variant!r}.")
            path = self.root / f"ImageNetS{variant}"
            if not path.is_dir():
                raise DatasetError(f"{path} does not exist. Expected layout:\n{_LAYOUT}")
            return path
        present = [self.root / f"ImageNetS{v}" for v in _VARIANTS if (self.root / f"ImageNetS{v}").is_dir()]
        if len(present) == 1:
            return present[0]
        if not present:
            raise DatasetError(f"No ImageNetS919/300/50 folder in {self.root}. Expected layout:\n{_LAYOUT}")
        raise DatasetError(
            f"{self.root} holds {', '.join(p.name for p in present)}; pass variant='919', '300' or '50' to pick one."
        )

    def _sample(self, record: _Record) -> Sample:
        meta = dict(record.meta)
        if record.mask_loader is None:
            return Sample(record.path, record.label, meta)
        ids = decode_segmentation(meta["mask_path"], record.path)
        present = np.unique(ids)
        segments = [int(v) for v in present if v not in (OTHER_ID, IGNORE_ID)]
        if self._index_order:
            class_id = int(record.label) + 1
        elif segments:
            counts = {v: int(np.count_nonzero(ids == v)) for v in segments}
            class_id = max(segments, key=lambda v: (counts[v], -v))
        else:
            class_id = -1
        mask = ids == class_id
        meta.update(mask_class_id=class_id, segment_ids=segments, ignore=ids == IGNORE_ID)
        return Sample(record.path, record.label, meta, lambda: mask)


ImageNetS.__doc__ = (ImageNetS.__doc__ or "").replace("    {layout}", textwrap.indent(_LAYOUT, "    "))
