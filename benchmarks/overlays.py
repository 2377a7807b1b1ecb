"""A picture to compare methods: one row per photo, one column per artifact and resize mode (overlay + predicted
class).

    python benchmarks/overlays.py --artifact reciprocam-efficientnet_lite0 --artifact tame-efficientnet_lite0 \
        --images examples/ --out docs/tame_vs_reciprocam.jpg
    python benchmarks/overlays.py --artifact default --resize-mode crop --resize-mode letterbox \
        --images examples/ --out docs/examples_overlay.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from engine import Engine
from engine.errors import EngineError
from engine.fileio import atomic_write
from engine.preprocess.decode import list_image_files


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
    label_h = 18
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
