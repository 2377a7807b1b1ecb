"""The pieces every dataset reader shares: :class:`Sample`, :class:`Dataset`, the registry and the mask helpers.

A reader scans its layout once, when it is built, into a list of lightweight records (path, label, metadata, how to
load the mask). Nothing is decoded then: ``dataset[i]`` returns a new :class:`Sample`, whose image is decoded by
:meth:`Sample.image` and whose mask is decoded on the first access to :attr:`Sample.mask` (and then cached on that
sample only, so iterating a large dataset does not keep every mask in memory).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, overload

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import EngineError
from ..preprocess import DEFAULT_MAX_PIXELS, load_image
from ..preprocess.decode import IMAGE_SUFFIXES, list_image_files
from ..preprocess.decode import is_image_file as is_image_file  # re-exported: the readers (folder, voc) use it

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "DatasetError",
    "Sample",
    "available_datasets",
    "default_root",
    "open_dataset",
    "register_dataset",
]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES
"""File suffixes (compared in lower case) that the readers treat as images (the same object as
:data:`engine.preprocess.decode.IMAGE_SUFFIXES`)."""

DATA_ENV_VAR = "XAI_ENGINE_DATA"
"""Environment variable naming a folder that holds the datasets' folders; checked before ``../shared/data``."""

_UNSET: Any = object()


class DatasetError(EngineError, ValueError):
    """A dataset folder is missing, empty, incomplete or inconsistent (e.g. a mask of the wrong size)."""


# --------------------------------------------------------------------------------------------------------------------
# Sample
# --------------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Sample:
    """One image of a dataset, with its label, its ground-truth mask (if any) and its metadata.

    Attributes:
        path: the image file.
        label: the class index (each reader documents its order), or ``None`` for unlabelled images.
        meta: reader-specific metadata, e.g. ``class_name``, ``wnid``, ``bbox``, ``split``, ``classes``.
        mask_loader: a callable returning the ground-truth mask, or ``None`` when the image has no mask. Readers set
            it; to wrap an array you already hold, pass ``lambda: array``.

    The mask (:attr:`mask`) is an ``(H, W)`` boolean array at the size of the image as :meth:`image` returns it
    (``True`` = the object / the explanation's ground truth). It is loaded on first access and cached.
    """

    path: Path
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    mask_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _mask: Any = field(default=_UNSET, init=False, repr=False)

    def __repr__(self) -> str:
        meta = {k: _short(v) for k, v in self.meta.items()}
        return f"Sample(path={str(self.path)!r}, label={self.label!r}, has_mask={self.has_mask}, meta={meta!r})"

    @property
    def has_mask(self) -> bool:
        """Whether this sample has a ground-truth mask (known without decoding it)."""
        return self.mask_loader is not None

    @property
    def mask(self) -> np.ndarray | None:
        """The ``(H, W)`` bool ground-truth mask at the image's size, or ``None``; decoded on first access.

        Raises:
            DatasetError: the mask file is missing or unreadable, or its size differs from the image's.
        """
        if self._mask is _UNSET:
            self._mask = None if self.mask_loader is None else self.mask_loader()
        return self._mask

    def image(self, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
        """Decode the image with :func:`engine.preprocess.load_image` (RGB, EXIF orientation applied).

        Args:
            max_pixels: passed to :func:`~engine.preprocess.load_image`.

        Returns:
            A new RGB image.

        Raises:
            ImageDecodeError: the file is missing, empty, truncated or not an image (from ``load_image``).
        """
        return load_image(self.path, max_pixels=max_pixels)


def _short(value: Any) -> Any:
    """Arrays as ``<dtype array WxH>`` in reprs (a VOC ``ignore`` mask would print 513 lines)."""
    if isinstance(value, np.ndarray):
        return f"<{value.dtype} array {'x'.join(str(n) for n in value.shape[::-1])}>"
    return value


@dataclass
class _Record:
    """What a reader keeps per image; turned into a new :class:`Sample` by ``Dataset.__getitem__``."""

    path: Path
    label: int | None
    meta: dict[str, Any]
    mask_loader: Callable[[], np.ndarray] | None = None


# --------------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------------


class Dataset(Sequence[Sample]):
    """Base class of the readers: a read-only sequence of :class:`Sample`.

    Subclasses set :attr:`name` and :attr:`splits`, implement :meth:`_scan` and call :meth:`_finish` at the end of
    ``__init__`` (after their own attributes, e.g. :attr:`class_names`, are set).

    Attributes:
        name: the registry name (``open_dataset(name, ...)``).
        splits: the split names this layout knows (empty: the dataset has no splits).
        root: the dataset folder.
        split: the split that was selected, or ``None`` for all.
        class_names: ``class_names[label]`` is the name of a class, or ``None`` when the reader cannot know the full
            list of classes.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str | None = None,
        limit: int | None = None,
        subset: int | None = None,
        seed: int = 0,
        with_masks_only: bool = False,
    ) -> None:
        """Check the common arguments; the subclass scans its layout and then calls :meth:`_finish`.

        Args:
            root: the dataset folder.
            split: one of :attr:`splits`, or ``None`` for every image.
            limit: keep only the first ``limit`` images (after the split and mask filters).
            subset: keep a random subset of this many images, drawn with ``seed``, in dataset order.
            seed: the seed of ``subset``.
            with_masks_only: keep only the images that have a ground-truth mask.
        """
        self.root = Path(os.fspath(root)).expanduser()
        if not self.root.is_dir():
            what = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise DatasetError(
                f"The {self.name or type(self).__name__} dataset root {self.root} {what}. Pass the folder that holds "
                f"the dataset (see the docstring of {type(self).__name__} for the expected layout)."
            )
        if split is not None and split not in self.splits:
            known = f"one of {list(self.splits)} or None" if self.splits else "None (this dataset has no splits)"
            raise DatasetError(f"Unknown split {split!r} for the {self.name} dataset at {self.root}. Pass {known}.")
        for arg, value in (("limit", limit), ("subset", subset)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DatasetError(f"{arg} must be a positive int or None, got {value!r}.")
        if limit is not None and subset is not None:
            raise DatasetError("Pass either limit= (the first N images) or subset= (N random images), not both.")
        self.split = split
        self.class_names: list[str] | None = None
        self._limit = limit
        self._subset = subset
        self._seed = seed
        self._with_masks_only = with_masks_only
        self._records: list[_Record] = []

    def _finish(self, records: list[_Record]) -> None:
        """Apply ``with_masks_only``, ``subset`` / ``limit``, and refuse an empty result."""
        if not records:
            split = f" in split {self.split!r}" if self.split is not None else ""
            raise DatasetError(
                f"The {self.name} dataset at {self.root} has no images{split}. Check the path and the layout "
                f"(see the docstring of {type(self).__name__})."
            )
        if self._with_masks_only:
            records = [r for r in records if r.mask_loader is not None]
            if not records:
                raise DatasetError(
                    f"No image of the {self.name} dataset at {self.root} has a ground-truth mask, so "
                    "with_masks_only=True leaves nothing. Check that the mask folder is present, or pass "
                    "with_masks_only=False."
                )
        if self._subset is not None and self._subset < len(records):
            keep = sorted(random.Random(self._seed).sample(range(len(records)), self._subset))
            records = [records[i] for i in keep]
        elif self._limit is not None:
            records = records[: self._limit]
        self._records = records

    # ---------------------------------------------------------------------------------------------- sequence protocol

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self._sample(r) for r in self._records[index]]
        return self._sample(self._records[index])

    def __iter__(self) -> Iterator[Sample]:
        for record in self._records:
            yield self._sample(record)

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split is not None else ""
        return f"{type(self).__name__}(root={str(self.root)!r}{split}, len={len(self)})"

    def _sample(self, record: _Record) -> Sample:
        """Build a fresh sample (readers that decode at fetch time override this)."""
        return Sample(record.path, record.label, dict(record.meta), record.mask_loader)

    @property
    def labels(self) -> list[int | None]:
        """The label of every sample, without decoding anything."""
        return [r.label for r in self._records]

    @property
    def paths(self) -> list[Path]:
        """The image path of every sample."""
        return [r.path for r in self._records]


# --------------------------------------------------------------------------------------------------------------------
# helpers for the readers
# --------------------------------------------------------------------------------------------------------------------


def image_name(path: Path, root: Path) -> str:
    """How an image is named in split lists such as an artifact's ``heldout.json``: its POSIX path relative to the
    dataset root, or the full path for an image outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder``, sorted by their path (recursively when asked)."""
    return list_image_files(folder, recursive=recursive)


def require_file(path: Path, what: str, layout: str) -> Path:
    """Return ``path`` if it is a file, else raise a :class:`DatasetError` naming it and the expected layout."""
    if not path.is_file():
        raise DatasetError(f"Missing {what}: {path} does not exist. Expected layout:\n{layout}")
    return path


def image_size(path: Path) -> tuple[int, int]:
    """The ``(width, height)`` :func:`~engine.preprocess.load_image` gives for ``path``, read from the header.

    The EXIF orientation is honoured (a 90-degree rotation swaps the sides), as ``load_image`` applies it.

    Raises:
        ImageDecodeError: the file cannot be opened as an image.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return load_image(path).size  # raises the ImageDecodeError that says what is wrong
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_mask_size(mask: np.ndarray, mask_path: Path, image_path: Path) -> np.ndarray:
    """Return ``mask`` if its ``(H, W)`` matches the image's size, else raise a :class:`DatasetError`."""
    width, height = image_size(image_path)
    if mask.shape[:2] != (height, width):
        raise DatasetError(
            f"The mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
            f"{width}x{height}. The mask must have the image's size: check that the mask belongs to this image, or "
            "resize it with nearest-neighbour interpolation."
        )
    return mask


def open_mask_image(mask_path: Path) -> Image.Image:
    """Open and fully decode a mask file, turning any failure into a :class:`DatasetError` naming the file."""
    if not mask_path.is_file():
        raise DatasetError(f"Mask file not found: {mask_path}. Check that the dataset's mask folder is complete.")
    try:
        with Image.open(mask_path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"Cannot read mask file {mask_path}: {exc}. Re-extract or re-download it.") from exc


def binary_mask(mask_path: Path, image_path: Path, *, threshold: int = 128) -> np.ndarray:
    """Read a binary (or soft greyscale) mask as bool: 1-bit images as they are, others as ``L >= threshold``.

    Args:
        mask_path: the mask file.
        image_path: the image it belongs to (its size is checked).
        threshold: the greyscale level (0..255) from which a pixel counts as ``True``.

    Returns:
        An ``(H, W)`` bool array.
    """
    img = open_mask_image(mask_path)
    mask = np.array(img, dtype=bool) if img.mode == "1" else np.asarray(img.convert("L")) >= threshold
    return check_mask_size(mask, mask_path, image_path)


def index_mask(mask_path: Path, image_path: Path) -> np.ndarray:
    """Read a single-channel index PNG (mode ``P`` or ``L``: the pixel values, not the palette colours) as uint8."""
    img = open_mask_image(mask_path)
    if img.mode not in ("P", "L"):
        raise DatasetError(
            f"The mask {mask_path} has mode {img.mode!r}; an index PNG (mode 'P' or 'L', one class id per pixel) was "
            "expected. Use the SegmentationClass PNGs (or masks/), not the colour renderings."
        )
    return check_mask_size(np.array(img, dtype=np.uint8), mask_path, image_path)


_WS = re.compile(r"\s+")


def read_table(path: Path, min_fields: int) -> list[list[str]]:
    """Read a whitespace-separated text table, skipping blank lines and ``#`` comments.

    Raises:
        DatasetError: a line has fewer than ``min_fields`` fields (the message names the file and the line).
    """
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = _WS.split(line)
        if len(fields) < min_fields:
            raise DatasetError(
                f"{path}, line {number}: expected at least {min_fields} whitespace-separated fields, got {line!r}."
            )
        rows.append(fields)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Dataset]] = {}
_DEFAULT_FOLDERS: dict[str, str] = {}


def register_dataset(name: str, default_folder: str | None = None) -> Callable[[type[Dataset]], type[Dataset]]:
    """Class decorator: register a reader under ``name`` (and the folder :func:`default_root` looks for).

    Args:
        name: the registry name.
        default_folder: the folder name under the shared data folder, if there is a conventional one.
    """

    def wrap(cls: type[Dataset]) -> type[Dataset]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"A dataset named {name!r} is already registered ({_REGISTRY[name].__name__}).")
        _REGISTRY[name] = cls
        if default_folder is not None:
            _DEFAULT_FOLDERS[name] = default_folder
        return cls

    return wrap


def available_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)


def _repo_root() -> Path:
    """The repository root: the first ancestor of this file holding ``pyproject.toml`` (else two levels up)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "engine").is_dir():
            return parent
    return here.parents[2]


def shared_data_dir() -> Path | None:
    """The folder that holds the datasets: ``$XAI_ENGINE_DATA`` if set, else ``<repo root>/../shared/data``.

    Returns:
        The folder, or ``None`` when it does not exist.
    """
    env = os.environ.get(DATA_ENV_VAR)
    candidates = [Path(env).expanduser()] if env else []
    candidates.append(_repo_root().parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


def default_root(name: str) -> Path | None:
    """The conventional folder of dataset ``name`` under :func:`shared_data_dir`, if it exists.

    Args:
        name: a registered dataset name (e.g. ``"kahikatea"`` -> ``../shared/data/kahikatea``).

    Returns:
        The folder, or ``None`` when there is no shared data folder, no conventional folder for ``name``, or it is
        absent.
    """
    if name not in _REGISTRY:
        raise DatasetError(f"Unknown dataset {name!r}. Known: {', '.join(available_datasets())}.")
    base = shared_data_dir()
    folder = _DEFAULT_FOLDERS.get(name)
    if base is None or folder is None:
        return None
    path = base / folder
    return path if path.is_dir() else None


def open_dataset(name: str, root: str | os.PathLike | None = None, **kwargs: Any) -> Dataset:
    """Build the reader registered as ``name``.

    Args:
        name: one of :func:`available_datasets` (``folder``, ``imagenet-val``, ``imagenet-sample``, ``cub``,
            ``imagenet-s``, ``kahikatea``, ``voc``).
        root: the dataset folder; ``None`` uses :func:`default_root`.
        **kwargs: passed to the reader (``split``, ``limit``, ``subset``, ``seed``, ``with_masks_only`` and the
            reader's own arguments).

    Returns:
        The dataset.
    """
    if name not in _REGISTRY:
        raise DatasetError(f"Unknown dataset {name!r}. Known: {', '.join(available_datasets())}.")
    if root is None:
        root = default_root(name)
        if root is None:
            raise DatasetError(
                f"No root given for the {name!r} dataset and no default folder was found (looked for "
                f"{_DEFAULT_FOLDERS.get(name, '<none>')!r} under ${DATA_ENV_VAR} and ../shared/data). Pass "
                f"open_dataset({name!r}, root='path/to/the/dataset')."
            )
    return _REGISTRY[name](root, **kwargs)
