"""A picture to compare methods: one row per photo, one column per artifact and resize mode (overlay + predicted
class).

    python benchmarks/overlays.py --artifact reciprocam-efficientnet_lite0 --artifact tame-efficientnet_lite0 \
        --images examples/ --out docs/tame_vs_reciprocam.jpg
    python benchmarks/overlays.py --artifact default --resize-mode crop --resize-mode letterbox \
        --images examples/ --out docs/examples_overlay.jpg

:func:`map_sheet` draws the same kind of sheet from maps already computed (e.g. the quality benchmark's cached maps,
baselines included), over the network inputs they were computed on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine import Engine
from engine.errors import EngineError
from engine.explanation import colormap_lut
from engine.fileio import atomic_write
from engine.preprocess.decode import list_image_files

LABEL_H = 18


def collect(paths: list[str]) -> list[Path]:
    """Image files given directly or found (non-recursively, not hidden) in the given folders, sorted per folder."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += list_image_files(p)
        elif p.is_file():
            out.append(p)
        else:
            raise EngineError(f"{p} is neither an image file nor a folder.")
    if not out:
        raise EngineError(f"no images in {paths}.")
    return out


def grid(
    artifacts: list[str],
    images: list[Path],
    tile: int = 224,
    backend: str = "torch",
    modes: tuple[str, ...] = ("letterbox",),
) -> Image.Image:
    """Overlays of every image (rows) by every artifact and resize mode (columns), each tile captioned with method
    (and mode, when there are several) and class; photos keep their aspect ratio inside the tile."""
    label_h = LABEL_H
    columns = [(name, mode) for name in artifacts for mode in modes]
    sheet = Image.new("RGB", (tile * len(columns), (tile + label_h) * len(images)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, (name, mode) in enumerate(columns):
        engine = Engine.load(name, backend=backend, resize_mode=mode)
        for row, exp in enumerate(engine.explain(images)):
            ov = exp.overlay()
            ov.thumbnail((tile, tile), Image.Resampling.BILINEAR)
            x, y = col * tile, row * (tile + label_h)
            sheet.paste(ov, (x + (tile - ov.width) // 2, y + label_h + (tile - ov.height) // 2))
            caption = f"{exp.method}{f' ({mode})' if len(modes) > 1 else ''}: {exp.class_name} {exp.score:.2f}"
            draw.text((x + 3, y + 3), caption[: int(tile / 5.6)], fill="black")
    return sheet


def map_sheet(
    images: Sequence[Image.Image],
    maps: Mapping[str, np.ndarray],
    row_labels: Sequence[str] | None = None,
    tile: int = 160,
    alpha: float = 0.5,
    colormap: str = "jet",
    upper_percentile: float | None = None,
) -> Image.Image:
    """Overlays of precomputed maps: one row per image, a first column with the image itself (captioned with its
    row label), then one column per method, each tile captioned with the method.

    Args:
        images: the images the maps belong to (e.g. the network inputs), any size; each is resized to the tile.
        maps: method -> maps (N, h, w), one per image, any range: each map is min-max scaled (a constant map shows
            as 0) and resized bilinearly to the tile, then coloured and blended as ``Explanation.overlay`` does.
        row_labels: a caption per row (e.g. the true class), shown on the image column.
        tile: tile side in pixels.
        alpha: the heat map's weight.
        colormap: ``"jet"`` or ``"turbo"``.
        upper_percentile: for display only, scale each map to this percentile of its values instead of its maximum
            (values above show as the maximum), so that a few extreme pixels (LRP) do not leave the rest dark.
    """
    lut = colormap_lut(colormap)
    methods = list(maps)
    sheet = Image.new("RGB", (tile * (1 + len(methods)), (tile + LABEL_H) * len(images)), "white")
    draw = ImageDraw.Draw(sheet)
    chars = int(tile / 5.6)
    for row, image in enumerate(images):
        base = image.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)
        y = row * (tile + LABEL_H)
        sheet.paste(base, (0, y + LABEL_H))
        draw.text((3, y + 3), (row_labels[row] if row_labels else "")[:chars], fill="black")
        for col, method in enumerate(methods, start=1):
            m = np.asarray(maps[method][row], dtype=np.float32)
            top = float(m.max() if upper_percentile is None else np.percentile(m, upper_percentile))
            span = top - float(m.min())
            m = np.clip((m - m.min()) / span, 0.0, 1.0) if span > 0 else np.zeros_like(m)
            small = Image.fromarray(m).resize((tile, tile), Image.Resampling.BILINEAR)
            index = np.rint(np.clip(np.asarray(small), 0.0, 1.0) * 255.0).astype(np.intp)
            heat = Image.fromarray(np.ascontiguousarray(lut[index]))
            sheet.paste(Image.blend(base, heat, float(alpha)), (col * tile, y + LABEL_H))
            draw.text((col * tile + 3, y + 3), method[:chars], fill="black")
    return sheet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="overlays.py", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", action="append", required=True, help="artifact folder or built-in name (repeatable)")
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--tile", type=int, default=224, help="tile side in pixels")
    p.add_argument("--backend", default="torch")
    p.add_argument(
        "--resize-mode",
        action="append",
        choices=["letterbox", "squash", "crop", "artifact"],
        help="how photos become network inputs (repeatable: one column each; default letterbox)",
    )
    p.add_argument("--out", required=True, help="output image (.jpg or .png)")
    args = p.parse_args(argv)
    try:
        modes = tuple(args.resize_mode or ["letterbox"])
        sheet = grid(args.artifact, collect(args.images), args.tile, args.backend, modes)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    jpeg = out.suffix.lower() in (".jpg", ".jpeg")
    atomic_write(out, lambda fh: sheet.save(fh, format="JPEG", quality=88) if jpeg else sheet.save(fh, format="PNG"))
    print(f"wrote {out} ({sheet.size[0]}x{sheet.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
