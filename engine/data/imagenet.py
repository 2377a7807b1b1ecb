"""ImageNet-1k validation images with their labels, and the one-photo-per-class ``imagenet-sample`` folder.

Label order
-----------
``label_order="torchvision"`` (the default) gives the 0-based index of the class in the **sorted list of the 1000
WordNet IDs** (``n01440764`` tench = 0, ..., ``n15075141`` toilet tissue = 999): the order of torchvision's
``ImageNet``, of timm and of practically every pretrained ImageNet classifier. The official devkit numbers classes by
their ``ILSVRC2012_ID`` (1..1000, a different order); ``label_order="ilsvrc"`` gives ``ILSVRC2012_ID - 1`` instead,
which is only possible with the devkit's ground-truth file.
"""

from __future__ import annotations

import csv
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Literal

from .base import Dataset, DatasetError, _Record, list_images, read_table, register_dataset

__all__ = ["ImageNetSample", "ImageNetVal", "read_class_table"]

_WNID = re.compile(r"^n\d{8}$")
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.", re.IGNORECASE)
_LABEL_FILES = (
    "labels.csv",
    "val.txt",
    "ILSVRC2012_validation_ground_truth.txt",
    "data/ILSVRC2012_validation_ground_truth.txt",
    "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
)
_LAYOUT = """\
    root/
        images/ILSVRC2012_val_00000001.JPEG ...   (or the images directly in root/, or images_dir=...)
        and one labels file (or labels_file=...):
        labels.csv   header with `file` and `imagenet_class_index` (0-based torchvision order) or `label`, or `wnid`
                     (then mapping_file= is needed); optional `class_name`
        val.txt      lines "ILSVRC2012_val_00000001.JPEG 65" (0-based torchvision order)
        ILSVRC2012_validation_ground_truth.txt   (devkit data/) one 1-based ILSVRC2012_ID per line, line i for
                     ILSVRC2012_val_<i>.JPEG; needs mapping_file= (devkit meta.mat or "ILSVRC2012_ID wnid [name]"
                     lines) for torchvision order, or label_order="ilsvrc\""""


def read_class_table(path: str | os.PathLike) -> dict[str, Any]:
    """Read a table of ImageNet classes in any of the usual formats.

    Formats (by suffix and content):

    * ``meta.mat`` of the ILSVRC2012 devkit (needs scipy): ``ILSVRC2012_ID``, ``WNID``, ``words`` of the 1000
      leaf synsets.
    * ``.json`` like ``imagenet_class_index.json``: ``{"0": ["n01440764", "tench"], ...}`` (torchvision order).
    * ``.csv`` with columns ``wnid`` and ``imagenet_class_index`` (optionally ``class_name``), like
      ``imagenet-sample/labels.csv``.
    * text lines ``ILSVRC2012_ID wnid [name ...]`` (devkit order), or ``wnid [name ...]`` (``synset_words.txt``,
      ``LOC_synset_mapping.txt``; the line order is taken as the torchvision order).

    Args:
        path: the file.

    Returns:
        ``{"index": {wnid: torchvision index}, "names": {wnid: name}, "ilsvrc": {ILSVRC2012_ID: wnid}}``; the
        torchvision index of an ILSVRC-ID table is the rank of the wnid among all its wnids, sorted.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise DatasetError(f"Class table {path} does not exist. Pass the path of an existing mapping file.")
    names: dict[str, str] = {}
    index: dict[str, int] = {}
    ilsvrc: dict[int, str] = {}
    suffix = path.suffix.lower()
    if suffix == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError as exc:
            raise DatasetError(
                f"Reading {path} needs scipy (pip install scipy), or convert it to 'ILSVRC2012_ID wnid name' lines."
            ) from exc
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        for entry in synsets:
            sid, wnid, words = int(entry["ILSVRC2012_ID"]), str(entry["WNID"]), str(entry["words"])
            if sid <= 1000:
                ilsvrc[sid] = wnid
                names[wnid] = words.split(",")[0].strip()
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        for key, value in data.items():
            index[value[0]] = int(key)
            names[value[0]] = str(value[1])
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"wnid", "imagenet_class_index"} <= set(reader.fieldnames or ()):
                raise DatasetError(f"{path} needs the columns 'wnid' and 'imagenet_class_index'.")
            for row in reader:
                index[row["wnid"]] = int(row["imagenet_class_index"])
                if row.get("class_name"):
                    names[row["wnid"]] = row["class_name"]
    else:
        rows = read_table(path, 1)
        for number, fields in enumerate(rows):
            if fields[0].isdigit() and len(fields) >= 2 and _WNID.match(fields[1]):
                ilsvrc[int(fields[0])] = fields[1]
                rest = " ".join(fields[2:])
                wnid = fields[1]
            elif _WNID.match(fields[0]):
                wnid, rest = fields[0], " ".join(fields[1:])
                index[wnid] = number
            else:
                raise DatasetError(
                    f"{path}: cannot read line {' '.join(fields)!r}. Expected 'ILSVRC2012_ID wnid [name]' or "
                    "'wnid [name]' lines."
                )
            if rest:
                names[wnid] = rest.split(",")[0].strip()
    if ilsvrc and not index:
        index = {wnid: i for i, wnid in enumerate(sorted(ilsvrc.values()))}
    if not index:
        raise DatasetError(f"No classes found in {path}. Pass a non-empty mapping file.")
    return {"index": index, "names": names, "ilsvrc": ilsvrc}


def _names_list(names_by_label: dict[int, str]) -> list[str] | None:
    """``class_names`` when the labels seen cover ``0..n-1`` without gaps, else ``None``."""
    if names_by_label and sorted(names_by_label) == list(range(len(names_by_label))):
        return [names_by_label[i] for i in range(len(names_by_label))]
    return None


@register_dataset("imagenet-val", default_folder="imagenet-val-11")
class ImageNetVal(Dataset):
    """ILSVRC2012 validation images and a labels file.

    Layout::

    {layout}

    Labels are 0-based in **torchvision order** (sorted wnids) unless ``label_order="ilsvrc"`` (see the module
    docstring). With the devkit ground-truth file the images are those present in the images folder (any subset of
    the 50,000), matched by the number in their name; with a CSV / ``val.txt`` they are the rows of the file, in file
    order, and a row whose image is missing is an error. ``class_names`` is the full list when it is known (a mapping
    file with names, or a CSV whose labels cover ``0..n-1``), else ``None``; each sample's ``meta`` has
    ``class_name`` when known, ``wnid`` when known, and ``split = "val"``. There are no masks.
    """

    name = "imagenet-val"
    splits = ("val",)

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        labels_file: str | os.PathLike | None = None,
        mapping_file: str | os.PathLike | None = None,
        label_order: Literal["torchvision", "ilsvrc"] = "torchvision",
        images_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        """Read the labels file.

        Args:
            root: the dataset folder.
            labels_file: the labels file; by default the first of ``labels.csv``, ``val.txt``,
                ``ILSVRC2012_validation_ground_truth.txt`` (also under ``data/``) found in ``root``.
            mapping_file: a class table (see :func:`read_class_table`): needed for the devkit ground truth in
                torchvision order and for a CSV with only ``wnid``; also supplies class names.
            label_order: ``"torchvision"`` or ``"ilsvrc"`` (devkit ground truth only).
            images_dir: the image folder; by default ``root/images`` if it exists, else ``root``.
            **kwargs: ``split``, ``limit``, ``subset``, ``seed`` (see :class:`~engine.data.base.Dataset`).
        """
        super().__init__(root, **kwargs)
        if label_order not in ("torchvision", "ilsvrc"):
            raise DatasetError(f"label_order must be 'torchvision' or 'ilsvrc', got {label_order!r}.")
        self.label_order = label_order
        if images_dir is not None:
            self.images_dir = Path(os.fspath(images_dir))
        else:
            self.images_dir = self.root / "images" if (self.root / "images").is_dir() else self.root
        if not self.images_dir.is_dir():
            raise DatasetError(f"Image folder {self.images_dir} does not exist. Expected layout:\n{_LAYOUT}")
        self.labels_file = self._find_labels(labels_file)
        self._table = read_class_table(mapping_file) if mapping_file is not None else None
        if self.labels_file.suffix.lower() == ".csv":
            records = self._from_csv()
        else:
            rows = read_table(self.labels_file, 1)
            if rows and len(rows[0]) >= 2:
                records = self._from_pairs(rows)
            else:
                records = self._from_ground_truth(rows)
        self._finish(records)

    # ------------------------------------------------------------------------------------------------------- parsing

    def _find_labels(self, labels_file: str | os.PathLike | None) -> Path:
        if labels_file is not None:
            path = Path(os.fspath(labels_file))
            if not path.is_file():
                raise DatasetError(f"Labels file {path} does not exist. Expected layout:\n{_LAYOUT}")
            return path
        for name in _LABEL_FILES:
            if (self.root / name).is_file():
                return self.root / name
        raise DatasetError(
            f"No labels file found in {self.root} (looked for {', '.join(_LABEL_FILES)}). Pass labels_file=... or "
            f"use this layout:\n{_LAYOUT}"
        )

    def _check_torchvision(self, what: str) -> None:
        if self.label_order != "torchvision":
            raise DatasetError(
                f"label_order='ilsvrc' needs the devkit ground-truth file; {self.labels_file} has {what} (torchvision "
                "order). Use label_order='torchvision'."
            )

    def _image(self, name: str, line: int) -> Path:
        path = self.images_dir / name
        if not path.is_file():
            raise DatasetError(
                f"{self.labels_file}, line {line}: the image {path} does not exist. Check images_dir= (now "
                f"{self.images_dir}) or remove the row."
            )
        return path

    def _base_meta(self) -> dict[str, Any]:
        return {"split": "val"} if self.splits else {}

    def _table_names(self) -> dict[int, str]:
        if self._table is None:
            return {}
        return {self._table["index"][w]: n for w, n in self._table["names"].items() if w in self._table["index"]}

    def _from_csv(self) -> list[_Record]:
        self._check_torchvision("0-based labels")
        with self.labels_file.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or ())
            rows = list(reader)
        column = next((c for c in ("imagenet_class_index", "label") if c in fields), None)
        if "file" not in fields or (column is None and "wnid" not in fields):
            raise DatasetError(
                f"{self.labels_file} needs a 'file' column and one of 'imagenet_class_index', 'label' or 'wnid' "
                f"(found {sorted(fields)}). Expected layout:\n{_LAYOUT}"
            )
        if column is None and self._table is None:
            raise DatasetError(
                f"{self.labels_file} gives classes as wnids only; pass mapping_file= (e.g. imagenet_class_index.json "
                "or LOC_synset_mapping.txt) to turn them into torchvision indices."
            )
        names = self._table_names()
        records = []
        for line, row in enumerate(rows, 2):
            meta: dict[str, Any] = self._base_meta()
            wnid = row.get("wnid") or None
            if column is not None:
                try:
                    label = int(row[column])
                except ValueError:
                    raise DatasetError(
                        f"{self.labels_file}, line {line}: {column} must be an integer, got {row[column]!r}."
                    ) from None
            else:
                label = self._wnid_index(wnid, line)
            if wnid:
                meta["wnid"] = wnid
            name = row.get("class_name") or names.get(label)
            if name:
                meta["class_name"] = name
                names.setdefault(label, name)
            records.append(_Record(self._image(row["file"], line), label, meta))
        self.class_names = _names_list(names)
        return records

    def _wnid_index(self, wnid: str | None, line: int) -> int:
        assert self._table is not None
        if wnid not in self._table["index"]:
            raise DatasetError(f"{self.labels_file}, line {line}: wnid {wnid!r} is not in the mapping file.")
        return self._table["index"][wnid]

    def _from_pairs(self, rows: list[list[str]]) -> list[_Record]:
        self._check_torchvision("'file label' pairs")
        names = self._table_names()
        records = []
        for line, fields in enumerate(rows, 1):
            try:
                label = int(fields[1])
            except ValueError:
                raise DatasetError(
                    f"{self.labels_file}, line {line}: expected 'filename label' with an integer label, got "
                    f"{' '.join(fields)!r}."
                ) from None
            meta: dict[str, Any] = self._base_meta()
            if label in names:
                meta["class_name"] = names[label]
            records.append(_Record(self._image(fields[0], line), label, meta))
        self.class_names = _names_list(names)
        return records

    def _from_ground_truth(self, rows: list[list[str]]) -> list[_Record]:
        try:
            ids = [int(fields[0]) for fields in rows]
        except ValueError:
            raise DatasetError(
                f"{self.labels_file} is neither a CSV, nor 'filename label' lines, nor the devkit ground truth (one "
                f"integer per line). Expected layout:\n{_LAYOUT}"
            ) from None
        table = self._table
        if self.label_order == "torchvision":
            if table is None or not table["ilsvrc"]:
                raise DatasetError(
                    f"{self.labels_file} holds ILSVRC2012_IDs (devkit order, not torchvision order). Pass "
                    "mapping_file= with the devkit's data/meta.mat or 'ILSVRC2012_ID wnid [name]' lines to get "
                    "torchvision labels, or label_order='ilsvrc' to get ILSVRC2012_ID - 1."
                )
            if len(table["ilsvrc"]) != 1000:
                raise DatasetError(
                    f"The mapping file lists {len(table['ilsvrc'])} ILSVRC2012_IDs; torchvision order is the rank of "
                    "the wnid among all 1000, so the mapping must list all 1000 classes."
                )
        records = []
        for path in list_images(self.images_dir):
            match = _VAL_NAME.match(path.name)
            if match is None:
                continue
            number = int(match.group(1))
            if not 1 <= number <= len(ids):
                raise DatasetError(
                    f"{path.name} is image {number}, but {self.labels_file} has only {len(ids)} labels. Pass the full "
                    "ground-truth file."
                )
            sid = ids[number - 1]
            meta: dict[str, Any] = {**self._base_meta(), "ilsvrc2012_id": sid}
            wnid = table["ilsvrc"].get(sid) if table is not None else None
            if wnid is not None:
                meta["wnid"] = wnid
                if wnid in table["names"]:
                    meta["class_name"] = table["names"][wnid]
            if self.label_order == "ilsvrc":
                label = sid - 1
            else:
                if wnid is None:
                    raise DatasetError(f"ILSVRC2012_ID {sid} (for {path.name}) is not in the mapping file.")
                label = table["index"][wnid]
            records.append(_Record(path, label, meta))
        if table is not None:
            if self.label_order == "ilsvrc":
                names = {sid - 1: table["names"][w] for sid, w in table["ilsvrc"].items() if w in table["names"]}
            else:
                names = self._table_names()
            self.class_names = _names_list(names)
        return records


ImageNetVal.__doc__ = (ImageNetVal.__doc__ or "").replace("    {layout}", textwrap.indent(_LAYOUT, "    "))


@register_dataset("imagenet-sample", default_folder="imagenet-sample")
class ImageNetSample(ImageNetVal):
    """One ImageNet photo per class (``../shared/data/imagenet-sample``).

    Layout::

        root/
            images/<file>
            labels.csv    columns: file, wnid, imagenet_class_index (0-based torchvision order), class_name

    Labels are in torchvision order; with all 1000 classes present ``class_names`` is the full 1000-name list.
    There are no splits (``split`` must be ``None``) and no masks. Metadata: ``wnid``, ``class_name``.
    """

    name = "imagenet-sample"
    splits = ()

    def __init__(self, root: str | os.PathLike, **kwargs: Any) -> None:
        """Read ``labels.csv``.

        Args:
            root: the folder with ``images/`` and ``labels.csv``.
            **kwargs: ``limit``, ``subset``, ``seed`` (see :class:`~engine.data.base.Dataset`).
        """
        root_path = Path(os.fspath(root))
        if root_path.is_dir() and not (root_path / "labels.csv").is_file():
            raise DatasetError(
                f"Missing labels file: {root_path / 'labels.csv'} does not exist. Expected layout:\n"
                "    root/\n        images/<file>\n        labels.csv    columns: file, wnid, imagenet_class_index, "
                "class_name"
            )
        kwargs.setdefault("labels_file", root_path / "labels.csv")
        super().__init__(root, **kwargs)
