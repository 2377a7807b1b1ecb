"""teex's "kahikatea" explanation benchmark: aerial photos, label = kahikatea trees present, masks for positives."""

from __future__ import annotations

import csv
import functools
import os
import textwrap

from .base import Dataset, DatasetError, _Record, binary_mask, register_dataset, require_file

__all__ = ["Kahikatea"]

_LAYOUT = """\
    root/
        labels.csv     columns: file, label_kahikatea_present (1/0), mask_file (empty for negatives), width, height
        images/<file>
        masks/<mask_file>   1-bit PNG, white = the kahikatea trees"""


@register_dataset("kahikatea", default_folder="kahikatea")
class Kahikatea(Dataset):
    """The teex kahikatea dataset (binary classification with ground-truth explanations).

    Layout::

    {layout}

    ``label`` is 1 when kahikatea trees are present and 0 otherwise (``class_names = ["absent", "present"]``). Only
    positive images have a mask (white pixels = the trees, read as ``True``); negatives have ``mask = None``, so
    ``with_masks_only=True`` keeps the positives. The dataset has no splits. Metadata: ``class_name``,
    ``mask_path`` (positives), ``width``/``height`` from the CSV.
    """

    name = "kahikatea"

    def __init__(self, root: str | os.PathLike, *, mask_threshold: int = 128, **kwargs) -> None:
        """Read ``labels.csv``.

        Args:
            root: the folder with ``labels.csv``, ``images/`` and ``masks/``.
            mask_threshold: greyscale level from which a mask pixel is ``True`` (masks that are not 1-bit).
            **kwargs: ``limit``, ``subset``, ``seed``, ``with_masks_only`` (see :class:`~engine.data.base.Dataset`).
        """
        super().__init__(root, **kwargs)
        self.class_names = ["absent", "present"]
        labels = require_file(self.root / "labels.csv", "labels file", _LAYOUT)
        with labels.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            needed = {"file", "label_kahikatea_present"}
            if not needed <= set(reader.fieldnames or ()):
                raise DatasetError(
                    f"{labels} lacks the columns {sorted(needed - set(reader.fieldnames or ()))}. Expected layout:\n"
                    f"{_LAYOUT}"
                )
            rows = list(reader)
        records = []
        for number, row in enumerate(rows, 2):
            try:
                label = int(row["label_kahikatea_present"])
                if label not in (0, 1):
                    raise ValueError
            except ValueError:
                raise DatasetError(
                    f"{labels}, line {number}: label_kahikatea_present must be 0 or 1, got "
                    f"{row['label_kahikatea_present']!r}."
                ) from None
            path = self.root / "images" / row["file"]
            meta = {"class_name": self.class_names[label]}
            for key in ("width", "height"):
                if row.get(key):
                    meta[key] = int(row[key])
            loader = None
            if row.get("mask_file"):
                mask_path = self.root / "masks" / row["mask_file"]
                meta["mask_path"] = mask_path
                loader = functools.partial(binary_mask, mask_path, path, threshold=mask_threshold)
            records.append(_Record(path, label, meta, loader))
        self._finish(records)


Kahikatea.__doc__ = (Kahikatea.__doc__ or "").replace("    {layout}", textwrap.indent(_LAYOUT, "    "))
