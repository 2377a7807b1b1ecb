"""Tests of engine.data: the dataset readers on tiny fixtures that mimic each on-disk layout, and on ../shared/data."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import (
    CUB200,
    VOC_CLASSES,
    DatasetError,
    ImageFolder,
    ImageNetS,
    ImageNetVal,
    Kahikatea,
    Sample,
    VOCSegmentation,
    available_datasets,
    default_root,
    open_dataset,
    read_class_table,
)
from engine.errors import ImageDecodeError

# ---------------------------------------------------------------------------------------------------------- helpers


def _image(path: Path, size: tuple[int, int] = (8, 6), value: int = 90) -> Path:
    """Write a small RGB image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 30)).save(path)
    return path


def _gray(path: Path, array: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").convert(mode).save(path)
    return path


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _wnids(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct fake wnids in a shuffled (non-sorted) order."""
    wnids = [f"n{1000000 + 37 * i:08d}" for i in range(n)]
    random.Random(seed).shuffle(wnids)
    return wnids


# ----------------------------------------------------------------------------------------------------- image folder


def test_folder_flat(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "c.JPEG"):
        _image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = open_dataset("folder", tmp_path)
    assert isinstance(ds, ImageFolder) and ds.name == "folder"
    assert [p.name for p in ds.paths] == ["a.jpg", "b.png", "c.JPEG"]
    assert ds.labels == [None, None, None] and ds.class_names is None
    sample = ds[1]
    assert isinstance(sample, Sample) and sample.mask is None and not sample.has_mask
    img = sample.image()
    assert img.mode == "RGB" and img.size == (8, 6)


def test_folder_classes(tmp_path: Path) -> None:
    _image(tmp_path / "dog" / "1.png")
    _image(tmp_path / "dog" / "sub" / "2.png")
    _image(tmp_path / "cat" / "1.jpg")
    (tmp_path / "empty").mkdir()
    ds = ImageFolder(tmp_path)
    assert ds.class_names == ["cat", "dog"]
    assert ds.labels == [0, 1, 1]
    assert [s.meta["class_name"] for s in ds] == ["cat", "dog", "dog"]
    assert len(list(iter(ds))) == 3 and len(ds[0:2]) == 2 and ds[-1].path.name == "2.png"


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match=str(tmp_path)):
        ImageFolder(tmp_path)
    with pytest.raises(DatasetError, match="no splits"):
        ImageFolder(tmp_path, split="train")


def test_unreadable_image_raises_decode_error_at_access(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    ds = ImageFolder(tmp_path)  # construction does not decode
    with pytest.raises(ImageDecodeError):
        ds[0].image()


def test_limit_and_subset(tmp_path: Path) -> None:
    for i in range(20):
        _image(tmp_path / f"{i:02d}.png", size=(2, 2))
    assert [p.name for p in ImageFolder(tmp_path, limit=3).paths] == ["00.png", "01.png", "02.png"]
    assert len(ImageFolder(tmp_path, limit=100)) == 20
    a = ImageFolder(tmp_path, subset=5, seed=1).paths
    b = ImageFolder(tmp_path, subset=5, seed=1).paths
    c = ImageFolder(tmp_path, subset=5, seed=2).paths
    assert a == b and a != c and len(a) == 5 and a == sorted(a)
    with pytest.raises(DatasetError, match="not both"):
        ImageFolder(tmp_path, limit=2, subset=2)
    with pytest.raises(DatasetError, match="positive int"):
        ImageFolder(tmp_path, limit=0)


def test_registry() -> None:
    assert set(available_datasets()) >= {
        "folder",
        "imagenet-val",
        "imagenet-sample",
        "cub",
        "imagenet-s",
        "kahikatea",
        "voc",
    }
    with pytest.raises(DatasetError, match="Unknown dataset"):
        open_dataset("mnist", ".")
    assert default_root("folder") is None


# ------------------------------------------------------------------------------------------------------ ImageNet val


@pytest.fixture
def imagenet_val(tmp_path: Path) -> tuple[Path, list[str]]:
    """Three val images (numbers 1, 2, 4), a 5-line devkit ground truth and a 1000-class ILSVRC_ID mapping."""
    wnids = _wnids(1000)  # wnids[k] has ILSVRC2012_ID k + 1; shuffled, so ILSVRC order != sorted (torchvision) order
    root = tmp_path / "val"
    for number in (1, 2, 4):
        _image(root / f"ILSVRC2012_val_{number:08d}.JPEG")
    _write(root / "ILSVRC2012_validation_ground_truth.txt", ["490", "361", "171", "822", "297"])
    _write(tmp_path / "mapping.txt", [f"{k + 1} {w} name {k + 1}, other words" for k, w in enumerate(wnids)])
    return root, wnids


def test_imagenet_val_ground_truth_torchvision_order(imagenet_val: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, wnids = imagenet_val
    ds = ImageNetVal(root, mapping_file=tmp_path / "mapping.txt")
    rank = {w: i for i, w in enumerate(sorted(wnids))}
    assert [p.name for p in ds.paths] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in (1, 2, 4)]
    assert ds.labels == [rank[wnids[489]], rank[wnids[360]], rank[wnids[821]]]
    assert ds.labels != [489, 360, 821]  # the orders really differ
    first = ds[0]
    assert first.meta["ilsvrc2012_id"] == 490 and first.meta["wnid"] == wnids[489]
    assert first.meta["class_name"] == "name 490" and first.meta["split"] == "val"
    assert ds.class_names is not None and len(ds.class_names) == 1000
    assert ds.class_names[first.label] == "name 490"
    ilsvrc = ImageNetVal(root, mapping_file=tmp_path / "mapping.txt", label_order="ilsvrc")
    assert ilsvrc.labels == [489, 360, 821] and ilsvrc.class_names[489] == "name 490"
    assert ImageNetVal(root, label_order="ilsvrc").labels == [489, 360, 821]  # no mapping needed


def test_imagenet_val_ground_truth_needs_mapping(imagenet_val: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, wnids = imagenet_val
    with pytest.raises(DatasetError, match="mapping_file"):
        ImageNetVal(root)
    _write(tmp_path / "short.txt", [f"{k + 1} {w}" for k, w in enumerate(wnids[:10])])
    with pytest.raises(DatasetError, match="all 1000"):
        ImageNetVal(root, mapping_file=tmp_path / "short.txt")
    _write(root / "ILSVRC2012_validation_ground_truth.txt", ["1", "2"])
    with pytest.raises(DatasetError, match="only 2 labels"):
        ImageNetVal(root, label_order="ilsvrc")


def test_imagenet_val_pairs_and_csv(tmp_path: Path) -> None:
    for n in (1, 2):
        _image(tmp_path / "images" / f"ILSVRC2012_val_{n:08d}.JPEG")
    _write(tmp_path / "val.txt", ["ILSVRC2012_val_00000002.JPEG 7", "ILSVRC2012_val_00000001.JPEG 0"])
    ds = open_dataset("imagenet-val", tmp_path)
    assert ds.labels == [7, 0] and ds.paths[0].name.endswith("02.JPEG")
    with pytest.raises(DatasetError, match="label_order='ilsvrc' needs the devkit"):
        ImageNetVal(tmp_path, label_order="ilsvrc")
    with (tmp_path / "labels.csv").open("w", newline="") as fh:  # labels.csv wins over val.txt
        w = csv.writer(fh)
        w.writerow(["file", "wnid", "imagenet_class_index", "class_name"])
        w.writerow(["ILSVRC2012_val_00000001.JPEG", "n01440764", "0", "tench"])
        w.writerow(["ILSVRC2012_val_00000002.JPEG", "n01443537", "1", "goldfish"])
    ds = ImageNetVal(tmp_path, limit=2)
    assert ds.labels == [0, 1] and ds.class_names == ["tench", "goldfish"]
    assert ds[1].meta == {"split": "val", "wnid": "n01443537", "class_name": "goldfish"}
    with (tmp_path / "labels.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(["ILSVRC2012_val_00000009.JPEG", "n01440764", "0", "tench"])
    with pytest.raises(DatasetError, match="ILSVRC2012_val_00000009.JPEG does not exist"):
        ImageNetVal(tmp_path)


def test_imagenet_val_missing_labels(tmp_path: Path) -> None:
    _image(tmp_path / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(
        DatasetError,
        match=r"(?s)No labels file found in .*labels.csv.*Pass labels_file=.*ILSVRC2012_validation_ground_truth",
    ):
        ImageNetVal(tmp_path)
    with pytest.raises(DatasetError, match="missing.txt does not exist"):
        ImageNetVal(tmp_path, labels_file=tmp_path / "missing.txt")
    with pytest.raises(DatasetError, match="Missing labels file.*labels.csv"):
        open_dataset("imagenet-sample", tmp_path)


def test_read_class_table_formats(tmp_path: Path) -> None:
    json_file = tmp_path / "imagenet_class_index.json"
    json_file.write_text('{"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}')
    assert read_class_table(json_file)["index"] == {"n01440764": 0, "n01443537": 1}
    words = _write(tmp_path / "synset_words.txt", ["n01440764 tench, Tinca tinca", "n01443537 goldfish"])
    table = read_class_table(words)
    assert table["index"]["n01443537"] == 1 and table["names"]["n01440764"] == "tench"


# ------------------------------------------------------------------------------------------------------------- CUB

_CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]


@pytest.fixture
def cub(tmp_path: Path) -> Path:
    """CUB_200_2011 with 2 classes x 2 images, and the segmentations archive extracted beside it."""
    root = tmp_path / "CUB_200_2011"
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for class_id, class_dir in enumerate(_CUB_CLASSES, 1):
        for k in range(2):
            image_id += 1
            rel = f"{class_dir}/{class_dir.split('.')[1]}_{k:04d}_{image_id}.jpg"
            _image(root / "images" / rel, size=(10, 8))
            seg = np.zeros((8, 10), dtype=np.uint8)
            seg[2:6, 3:7] = 255  # full agreement
            seg[0, 0] = 127  # just below the threshold
            seg[7, 9] = 128  # just at it
            _gray((tmp_path / "segmentations" / rel).with_suffix(".png"), seg)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {1 if k == 0 else 0}")
            boxes.append(f"{image_id} 3.0 2.0 4.0 4.0")
    _write(root / "images.txt", images)
    _write(root / "image_class_labels.txt", labels)
    _write(root / "train_test_split.txt", split)
    _write(root / "classes.txt", [f"{i} {c}" for i, c in enumerate(_CUB_CLASSES, 1)])
    _write(root / "bounding_boxes.txt", boxes)
    return root


def test_cub_labels_splits_masks(cub: Path) -> None:
    ds = open_dataset("cub", cub)
    assert isinstance(ds, CUB200) and len(ds) == 4
    assert ds.class_names == ["Black_footed_Albatross", "Laysan_Albatross"]
    assert ds.labels == [0, 0, 1, 1]
    assert [s.meta["split"] for s in ds] == ["train", "test", "train", "test"]
    sample = ds[2]
    assert sample.meta["bbox"] == (3.0, 2.0, 4.0, 4.0) and sample.meta["class_name"] == "Laysan_Albatross"
    assert sample.meta["image_id"] == 3
    mask = sample.mask
    assert mask.dtype == bool and mask.shape == (8, 10)  # (H, W) of the 10x8 image
    assert mask[2:6, 3:7].all() and not mask[0, 0] and mask[7, 9] and mask.sum() == 17
    assert sample.mask is mask  # cached
    assert CUB200(cub, split="train").labels == [0, 1]
    assert [s.meta["image_id"] for s in CUB200(cub, split="test")] == [2, 4]
    assert CUB200(cub.parent).root == cub  # the parent folder works too
    strict = CUB200(cub, mask_threshold=200)
    assert strict[0].mask.sum() == 16


def test_cub_segmentations_root_and_missing(cub: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "segs"
    moved.parent.mkdir()
    (tmp_path / "segmentations").rename(moved)
    ds = CUB200(cub)
    assert not any(s.has_mask for s in ds) and ds[0].mask is None
    with pytest.raises(DatasetError, match="with_masks_only"):
        CUB200(cub, with_masks_only=True)
    assert CUB200(cub, segmentations_root=moved)[0].mask.shape == (8, 10)
    with pytest.raises(DatasetError, match="segmentations_root"):
        CUB200(cub, segmentations_root=tmp_path / "nothing")


def test_cub_bad_inputs(cub: Path, tmp_path: Path) -> None:
    # a segmentation whose size differs from its image
    ds = CUB200(cub)
    _gray(ds[0].meta["mask_path"], np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"5x5.*10x8"):
        _ = CUB200(cub)[0].mask
    (cub / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match=r"(?s)train_test_split.txt does not exist.*Expected layout.*images.txt"):
        CUB200(cub)
    with pytest.raises(DatasetError, match="Unknown split 'val'"):
        CUB200(cub, split="val")


# ------------------------------------------------------------------------------------------------------- ImageNet-S


def _seg_png(path: Path, ids: np.ndarray) -> Path:
    """An ImageNet-S segmentation PNG: class id = R + 256 * G."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = ids // 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path)
    return path


@pytest.fixture
def imagenet_s(tmp_path: Path) -> tuple[Path, list[str]]:
    """ImageNetS919 with 2 wnids in validation (one image each) and one in train-semi; ids 300 and 5."""
    order = ["n09999999", "n01000001"]  # the category file's order: seg id 1 = n09999999, 2 = n01000001 ...
    category_ids = {"n09999999": 300, "n01000001": 5}  # ... but make the ids > 255 too, to test the G channel
    base = tmp_path / "imagenet-s" / "ImageNetS919"
    for split_dir, seg_dir in (("validation", "validation-segmentation"), ("train-semi", "train-semi-segmentation")):
        for wnid in order if split_dir == "validation" else order[:1]:
            name = f"ILSVRC2012_val_{category_ids[wnid]:08d}" if split_dir == "validation" else f"{wnid}_1"
            _image(base / split_dir / wnid / f"{name}.JPEG", size=(6, 4))
            ids = np.zeros((4, 6), dtype=np.int64)
            ids[1:3, 1:4] = category_ids[wnid]
            ids[0, 5] = 1000
            ids[3, 0] = 7  # another category, smaller
            _seg_png(base / seg_dir / wnid / f"{name}.png", ids)
    return tmp_path / "imagenet-s", order


def test_imagenet_s_masks_inferred_class_id(imagenet_s: tuple[Path, list[str]]) -> None:
    root, _ = imagenet_s
    ds = open_dataset("imagenet-s", root, split="val")
    assert isinstance(ds, ImageNetS) and len(ds) == 2
    assert ds.class_names == ["n01000001", "n09999999"]  # sorted wnids present
    assert ds.labels == [0, 1]
    s = ds[1]
    assert s.meta["wnid"] == "n09999999" and s.meta["mask_class_id"] == 300 and s.meta["segment_ids"] == [7, 300]
    assert s.mask.shape == (4, 6) and s.mask.dtype == bool
    assert s.mask.sum() == 6 and s.mask[1:3, 1:4].all()
    assert s.meta["ignore"].sum() == 1 and s.meta["ignore"][0, 5]
    assert ds[0].meta["mask_class_id"] == 5
    assert len(ImageNetS(root)) == 3 and ImageNetS(root, split="train").labels == [1]
    assert ImageNetS(root / "ImageNetS919", split="val").labels == [0, 1]


def test_imagenet_s_class_index_file(imagenet_s: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, order = imagenet_s
    index_file = _write(tmp_path / "ImageNetS_categories_im919.txt", order)
    ds = ImageNetS(root, split="val", class_index_file=index_file)
    assert ds.class_names == order
    # n01000001 is line 2 -> label 1, mask id 2: its PNG holds 5, so the mask is empty (the file decides)
    assert ds.labels == [1, 0]
    assert ds[0].meta["mask_class_id"] == 2 and not ds[0].mask.any()
    assert ds[1].meta["mask_class_id"] == 1 and not ds[1].mask.any()
    with pytest.raises(DatasetError, match="not in the class_index_file"):
        ImageNetS(root, class_index_file=_write(tmp_path / "one.txt", order[:1]))


def test_imagenet_s_errors(imagenet_s: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = imagenet_s
    (root / "ImageNetS50").mkdir()
    with pytest.raises(DatasetError, match="variant="):
        ImageNetS(root)
    assert len(ImageNetS(root, variant=919, split="val")) == 2
    with pytest.raises(DatasetError, match="No ImageNetS919"):
        ImageNetS(tmp_path / "imagenet-s" / "ImageNetS50")
    seg = next((root / "ImageNetS919" / "validation-segmentation").rglob("*.png"))
    _seg_png(seg, np.zeros((3, 3), dtype=np.int64))
    ds = ImageNetS(root, variant="919", split="val")
    with pytest.raises(DatasetError, match="3x3"):
        [s.mask for s in ds]


# ------------------------------------------------------------------------------------------------------------- VOC


def _voc_palette_png(path: Path, index: np.ndarray) -> Path:
    img = Image.fromarray(index.astype(np.uint8), mode="P")
    palette = [0] * 768
    palette[3:6] = [128, 0, 0]
    img.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def voc_devkit(tmp_path: Path) -> Path:
    """VOCdevkit/VOC2012 with 3 images: 2 in train, 1 in val; index PNGs in mode P (as the real ones)."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    layouts = {
        "2007_000032": {1: (slice(0, 2), slice(0, 2)), 15: (slice(2, 5), slice(0, 6))},  # person has more pixels
        "2007_000033": {7: (slice(0, 3), slice(0, 3))},
        "2007_000042": {5: (slice(0, 1), slice(0, 2)), 9: (slice(1, 2), slice(0, 2))},  # tie -> lower id
    }
    for image_id, regions in layouts.items():
        _image(root / "JPEGImages" / f"{image_id}.jpg", size=(6, 5))
        index = np.zeros((5, 6), dtype=np.uint8)
        for cls, (rows, cols) in regions.items():
            index[rows, cols] = cls
        index[4, 5] = 255
        _voc_palette_png(root / "SegmentationClass" / f"{image_id}.png", index)
    sets = root / "ImageSets" / "Segmentation"
    _write(sets / "train.txt", ["2007_000032", "2007_000033"])
    _write(sets / "val.txt", ["2007_000042"])
    _write(sets / "trainval.txt", ["2007_000032", "2007_000033", "2007_000042"])
    return tmp_path


def test_voc_devkit(voc_devkit: Path) -> None:
    ds = open_dataset("voc", voc_devkit)  # the folder holding VOCdevkit
    assert isinstance(ds, VOCSegmentation) and ds.layout == "devkit" and len(ds) == 3
    assert ds.class_names == VOC_CLASSES and len(VOC_CLASSES) == 21
    first = ds[0]
    assert first.label == 15 and first.meta["classes"] == [1, 15] and first.meta["class_name"] == "person"
    assert first.mask.shape == (5, 6) and first.mask.sum() == 17
    assert first.meta["ignore"].sum() == 1 and first.meta["ignore"][4, 5]
    assert not (first.mask & first.meta["ignore"]).any()
    assert ds[2].label == 5 and ds[2].meta["classes"] == [5, 9]
    assert ds.index_map(0)[0, 0] == 1
    assert VOCSegmentation(voc_devkit, split="val").paths[0].stem == "2007_000042"
    assert len(VOCSegmentation(voc_devkit / "VOCdevkit" / "VOC2012", split="train")) == 2
    per_class = VOCSegmentation(voc_devkit, per_class=True)
    assert per_class.labels == [1, 15, 7, 5, 9]
    aeroplane = per_class[0]
    assert aeroplane.mask.sum() == 4 and aeroplane.mask[:2, :2].all() and aeroplane.meta["classes"] == [1, 15]


def test_voc_errors(voc_devkit: Path, tmp_path: Path) -> None:
    root = voc_devkit / "VOCdevkit" / "VOC2012"
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetError, match=r"Missing split file .*val.txt"):
        VOCSegmentation(root, split="val")
    _voc_palette_png(root / "SegmentationClass" / "2007_000033.png", np.zeros((2, 2)))
    ds = VOCSegmentation(root)
    with pytest.raises(DatasetError, match=r"2007_000033.png is 2x2.*6x5"):
        ds[1]
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match="not a VOC folder"):
        VOCSegmentation(tmp_path / "other")


def test_voc_compact_layout(tmp_path: Path) -> None:
    for name, classes in (("8", [13]), ("20", [2, 5])):
        _image(tmp_path / "images" / f"{name}.png", size=(4, 4))
        index = np.zeros((4, 4), dtype=np.uint8)
        for k, c in enumerate(classes):
            index[k] = c
        _gray(tmp_path / "masks" / f"{name}.png", index)
    _write(tmp_path / "labels.csv", ["file,voc_classes,voc_class_ids", "8.png,horse,13", "20.png,bicycle;bottle,2;5"])
    ds = VOCSegmentation(tmp_path)
    assert ds.layout == "compact" and [p.name for p in ds.paths] == ["8.png", "20.png"]  # numeric order
    assert [s.label for s in ds] == [13, 2] and ds[1].meta["classes"] == [2, 5]
    assert VOCSegmentation(tmp_path, per_class=True).labels == [13, 2, 5]
    with pytest.raises(DatasetError, match="only val"):
        VOCSegmentation(tmp_path, split="train")


# ------------------------------------------------------------------------------------------------------- kahikatea


def test_kahikatea_fixture(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.jpg", size=(6, 4))
    _image(tmp_path / "images" / "b.jpg", size=(6, 4))
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[1:3, 2:5] = 255
    _gray(tmp_path / "masks" / "b.png", mask, mode="1")
    _write(
        tmp_path / "labels.csv",
        ["file,label_kahikatea_present,mask_file,width,height", "a.jpg,0,,6,4", "b.jpg,1,b.png,6,4"],
    )
    ds = Kahikatea(tmp_path)
    assert ds.labels == [0, 1] and ds[0].mask is None and ds.class_names == ["absent", "present"]
    assert ds[1].mask.sum() == 6 and ds[1].mask[1:3, 2:5].all()
    assert Kahikatea(tmp_path, with_masks_only=True).labels == [1]
    _gray(tmp_path / "masks" / "b.png", np.zeros((3, 3), dtype=np.uint8), mode="1")
    with pytest.raises(DatasetError, match=r"b.png is 3x3.*b.jpg is 6x4"):
        _ = Kahikatea(tmp_path)[1].mask
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(DatasetError, match="Mask file not found"):
        _ = Kahikatea(tmp_path)[1].mask
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(DatasetError, match=r"(?s)labels.csv does not exist.*label_kahikatea_present"):
        Kahikatea(tmp_path)


# -------------------------------------------------------------------------------------------- the real shared data


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_real_kahikatea(shared_data: Path) -> None:
    ds = open_dataset("kahikatea")
    assert ds.root.resolve() == (shared_data / "kahikatea").resolve() == default_root("kahikatea").resolve()
    assert len(ds) == 519 and sum(ds.labels) == 232
    positives = Kahikatea(shared_data / "kahikatea", with_masks_only=True)
    assert len(positives) == 232 and set(positives.labels) == {1}
    for sample in positives.__getitem__(slice(0, None, 29)):
        mask = sample.mask
        assert mask.dtype == bool and mask.any() and not mask.all()
        assert mask.shape[::-1] == sample.image().size == (sample.meta["width"], sample.meta["height"])
    assert all(s.mask is None for s in Kahikatea(shared_data / "kahikatea") if s.label == 0)


def test_real_voc(shared_data: Path) -> None:
    ds = open_dataset("voc")
    assert len(ds) == 14 and ds.layout == "compact"
    rows = {r["file"]: r for r in _read_csv(shared_data / "voc2012-14" / "labels.csv")}
    for sample in ds:
        assert sample.mask.shape[::-1] == sample.image().size
        assert 1 <= sample.label <= 20 and sample.mask.any()
        expected = sorted(int(v) for v in rows[sample.path.name]["voc_class_ids"].split(";"))
        assert sample.meta["classes"] == expected
        assert sample.meta["ignore"].shape == sample.mask.shape
    assert len(VOCSegmentation(shared_data / "voc2012-14", per_class=True)) == sum(
        len(r["voc_class_ids"].split(";")) for r in rows.values()
    )


def test_real_imagenet_sample(shared_data: Path) -> None:
    ds = open_dataset("imagenet-sample")
    assert len(ds) == 1000 and sorted(ds.labels) == list(range(1000))
    assert ds.class_names[0] == "tench" and len(ds.class_names) == 1000
    sub = open_dataset("imagenet-sample", subset=10, seed=3)
    assert len(sub) == 10 and sub.paths == open_dataset("imagenet-sample", subset=10, seed=3).paths
    assert sub[0].image().mode == "RGB" and sub.split is None and "split" not in sub[0].meta


def test_real_imagenet_val_11(shared_data: Path) -> None:
    ds = open_dataset("imagenet-val")
    rows = _read_csv(shared_data / "imagenet-val-11" / "labels.csv")
    assert len(ds) == 11 and ds.labels == [int(r["imagenet_class_index"]) for r in rows]
    assert all(0 <= label < 1000 for label in ds.labels)
    # the imagenet-sample labels.csv doubles as a wnid -> torchvision index table
    table = read_class_table(shared_data / "imagenet-sample" / "labels.csv")
    assert all(table["index"][s.meta["wnid"]] == s.label for s in ds)
    sample = ds[0]
    assert sample.image().size == (int(rows[0]["width"]), int(rows[0]["height"]))
