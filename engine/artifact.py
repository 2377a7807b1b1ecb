"""Artifact folders: ``manifest.json`` + ``weights.safetensors`` (+ ``model.onnx``, ``model.xml``/``.bin``, ...).

The manifest records the method and backbone configs, the preprocessing, the class names, the graph's inputs and
outputs, the precision, a sha256 per file and the versions of the libraries that made it. :func:`load_artifact`
verifies hashes and versions and refuses a mismatch with a message that says how to re-create or re-export.
Weights are safetensors: no file handed in by a user is ever unpickled.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import BackboneConfig, ExplainerConfig, PreprocessConfig
from .errors import ArtifactError, RandomWeightsWarning
from .fileio import apply_umask, replace_folder
from .fileio import current_umask as current_umask  # re-exported: tests and engine.triton read it here

FORMAT = "xai-engine-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
# The explainer's own parameters only (a trained head such as T-TAME's), for artifacts whose backbone weights come
# from elsewhere (backbone.weights = package / pretrained / external): a few MB instead of the whole classifier.
HEAD_WEIGHTS = "explainer.safetensors"
ONNX = "model.onnx"
OPENVINO_XML = "model.xml"
OPENVINO_BIN = "model.bin"
INPUT_NAMES = ("image", "target")
OUTPUT_NAMES = ("logits", "saliency")
# distribution names whose versions an artifact records, by the role they play
_DISTRIBUTIONS = {
    "torch": "torch",
    "timm": "timm",
    "open_clip": "open_clip_torch",
    "torchvision": "torchvision",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
}


def installed_version(component: str) -> str | None:
    """Installed version of a component (``torch``, ``timm``, ``open_clip``, ``onnxruntime``, ...) or None."""
    dist = _DISTRIBUTIONS.get(component, component)
    for name in (dist, "onnxruntime-gpu") if component == "onnxruntime" else (dist,):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return None


def engine_version() -> str:
    try:
        return importlib.metadata.version("xai-engine")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


@dataclass
class Artifact:
    """A loaded (verified) artifact. ``path`` is None for an in-memory artifact that has not been saved."""

    manifest: dict[str, Any]
    path: Path | None = None
    extra_files: dict[str, Path] = field(default_factory=dict)  # not yet saved: name -> source path

    @property
    def backbone(self) -> BackboneConfig:
        return BackboneConfig.from_dict(self.manifest["backbone"])

    @property
    def explainer(self) -> ExplainerConfig:
        return ExplainerConfig.from_dict(self.manifest["explainer"])

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("class_names") or [f"class_{i}" for i in range(self.backbone.num_classes)])

    @property
    def weights_source(self) -> str | None:
        """Where the classifier's weights came from when the artifact was made (manifest key ``weights_source``):
        ``pretrained``, ``package``, ``file`` or ``random``; None for an artifact that does not record it."""
        return self.manifest.get("weights_source")

    @property
    def random_weights(self) -> bool:
        """Whether the classifier's weights are random (``source="random"``): classes and scores mean nothing."""
        return self.weights_source == "random"

    @property
    def precision(self) -> str:
        """The precision the artifact's graph was exported for (``fp32`` unless an export says otherwise); the
        default precision of :meth:`engine.Engine.load`."""
        return str(self.manifest.get("precision") or "fp32")

    @property
    def method(self) -> str:
        return self.manifest["explainer"]["method"]

    @property
    def name(self) -> str:
        return self.manifest.get("name") or f"{self.method}:{self.backbone.spec}"

    def has(self, name: str) -> bool:
        return name in self.manifest.get("files", {}) or name in self.extra_files

    def file(self, name: str) -> Path:
        """Path of a file the artifact lists (already verified by :func:`load_artifact`)."""
        if name in self.extra_files:
            return self.extra_files[name]
        if self.path is None or name not in self.manifest.get("files", {}):
            raise ArtifactError(f"artifact {self.name!r} has no {name}. {_export_hint(name, self)}")
        return self.path / name

    def check_versions(self, components: list[str], allow_mismatch: bool = False) -> None:
        """Refuse when a component's installed major.minor differs from the one that made the artifact.

        Raises:
            ArtifactError: names each mismatch and how to re-create or re-export.
        """
        recorded = self.manifest.get("versions", {})
        problems = []
        for comp in components:
            want = recorded.get(comp)
            have = installed_version(comp)
            if want is None:
                continue
            if have is None:
                problems.append(f"{comp} {want} was used to make it but is not installed (pip install {comp})")
            elif _major_minor(want) != _major_minor(have):
                problems.append(f"it was made with {comp} {want}, this environment has {comp} {have}")
        if problems and not allow_mismatch:
            raise ArtifactError(
                f"artifact {self.path or self.name}: version mismatch: {'; '.join(problems)}. "
                f"Re-create it here ({_create_hint(self)}) or re-export it (python export/to_onnx.py {self.path} "
                "--out NEW_DIR), install the recorded versions, or pass allow_version_mismatch=True "
                "(CLI --allow-version-mismatch) if you accept the risk."
            )


def _create_hint(art: Artifact) -> str:
    bb = art.manifest.get("backbone", {})
    return f"xai-engine create --method {art.manifest.get('explainer', {}).get('method')} --backbone " + (
        f"{bb.get('library')}/{bb.get('name')} --out DIR"
    )


def _export_hint(name: str, art: Artifact) -> str:
    from .backends.registry import spec_writing  # the registry knows which export writes which file

    where = art.path or "ARTIFACT"
    spec = spec_writing(name)
    if spec is not None and spec.script:
        return f"Export it with: python {spec.script} {where} --out NEW_DIR"
    if name == WEIGHTS:
        return f"Re-create the artifact with: {_create_hint(art)}"
    return ""


def path_from(folder: str | os.PathLike, target: str | os.PathLike) -> str:
    """``target`` as a manifest names a file outside the artifact: relative to the artifact ``folder`` (both
    resolved), or absolute where no relative path exists (another drive on Windows)."""
    target = Path(target).expanduser().resolve()
    try:
        return os.path.relpath(target, Path(folder).expanduser().resolve())
    except ValueError:
        return str(target)


def load_artifact(path: str | os.PathLike, *, verify: bool = True) -> Artifact:
    """Read and verify an artifact folder (format version, required keys, file hashes).

    ``path`` may also be ``"default"`` or a built-in artifact's name (:func:`builtin_names`).

    Raises:
        ArtifactError: the folder, manifest or a file is missing, unreadable, tampered with or of another format.
    """
    root = resolve_artifact_path(path)
    if not root.is_dir():
        raise ArtifactError(
            f"artifact folder {root} does not exist (or is not a folder). Pass a folder, 'default' or a built-in "
            f"artifact ({', '.join(builtin_names())}), or make one with "
            "`xai-engine create --method vit-reciprocam --backbone timm/vit_base_patch16_224 --out DIR`."
        )
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST}: it is not an xai-engine artifact. Re-create it.")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(
            f"{mpath} is not valid JSON ({e}); the artifact is damaged: re-create or re-export it."
        ) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not an xai-engine manifest (format must be {FORMAT!r}).")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{root} uses artifact format {version!r}, this xai-engine reads format {FORMAT_VERSION}: "
            "upgrade xai-engine (pip install -U xai-engine) or re-export with this version."
        )
    for key in ("backbone", "explainer", "preprocess", "files"):
        if key not in manifest:
            raise ArtifactError(f"{mpath} lacks the key {key!r}; the artifact is damaged: re-create it.")
    art = Artifact(manifest=manifest, path=root)
    try:
        art.backbone, art.explainer, art.preprocess  # noqa: B018  (validates the configs)
    except Exception as e:  # noqa: BLE001
        raise ArtifactError(f"{mpath} holds an invalid config: {e}") from e
    from .backends.registry import all_precisions

    if art.precision not in all_precisions():
        raise ArtifactError(
            f"{mpath} says precision {art.precision!r}; this xai-engine runs {', '.join(all_precisions())}. "
            "Re-export the artifact, or upgrade xai-engine."
        )
    if verify:
        for name, digest in manifest["files"].items():
            fpath = root / name
            if Path(name).name != name:
                raise ArtifactError(f"{mpath} lists {name!r}: artifact files must sit in the folder itself.")
            if not fpath.is_file():
                raise ArtifactError(f"{root} lacks {name}, which its manifest lists. {_export_hint(name, art)}")
            actual = sha256_file(fpath)
            if actual != digest:
                raise ArtifactError(
                    f"{fpath} does not match its sha256 in the manifest (expected {digest[:12]}..., got "
                    f"{actual[:12]}...): the file was changed or damaged after export. Re-export the artifact, "
                    "or restore the original file."
                )
    if art.random_weights:
        warn_random_weights(art)
    return art


def warn_random_weights(art: Artifact, stacklevel: int = 3) -> None:
    """Warn (:class:`~engine.errors.RandomWeightsWarning`) that ``art``'s classifier has random weights."""
    warnings.warn(
        f"artifact {art.path or art.name} has random weights (made with --source random / source='random'): its "
        "classes and scores are meaningless, fit for smoke tests only. Re-create it with real weights "
        "(--source pretrained or package, or --weights FILE) to explain real images.",
        RandomWeightsWarning,
        stacklevel=stacklevel,
    )


def new_manifest(
    backbone: BackboneConfig,
    explainer: ExplainerConfig,
    preprocess: PreprocessConfig,
    class_names: list[str] | None,
    *,
    name: str | None = None,
    weights_source: str | None = None,
) -> dict[str, Any]:
    """A manifest with no files yet; :func:`write_artifact` fills in files, io and versions.

    ``weights_source`` records where the classifier's weights came from (``pretrained``, ``package``, ``file`` or
    ``random``); :func:`load_artifact` warns on every load of a ``random`` one.
    """
    extra = {"weights_source": weights_source} if weights_source else {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or f"{explainer.method}:{backbone.spec}",
        "backbone": backbone.to_dict(),
        "explainer": explainer.to_dict(),
        "preprocess": preprocess.to_dict(),
        "class_names": class_names,
        "precision": "fp32",
        "files": {},
        "versions": {},
        **extra,
    }


def write_artifact(manifest: dict[str, Any], out_dir: str | os.PathLike, files: dict[str, Path]) -> Artifact:
    """Write an artifact atomically: everything goes to a temporary sibling folder that is renamed at the end.

    The folder gets mode ``0o777 & ~umask`` and its files ``0o666 & ~umask`` (not the temporary folder's 0o700).

    Args:
        manifest: the manifest; ``files`` and ``versions`` are (re)computed here.
        out_dir: target folder; must not exist or be an empty folder or an earlier artifact (then it is replaced).
        files: file name in the artifact -> current path (copied, or moved when it already sits in a temp dir).
    """
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).is_file())):
        raise ArtifactError(f"{out} exists and is not an artifact folder; choose a new --out folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = json.loads(json.dumps(manifest))  # deep copy, and proof that it is JSON
        manifest["files"] = {}
        for name, src in files.items():
            dst = tmp / name
            shutil.copyfile(src, dst)
            manifest["files"][name] = sha256_file(dst)
        from .backends.registry import BACKENDS  # which files record which library versions

        versions = {"xai_engine": engine_version()}
        for comp in ("torch", manifest["backbone"]["library"]):
            versions[comp] = installed_version(comp)
        for spec in BACKENDS.values():
            if any(name in files for name in spec.writes):
                versions.update({comp: installed_version(comp) for comp in spec.versions})
        manifest["versions"] = {k: v for k, v in versions.items() if v}
        manifest["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        apply_umask(tmp)  # mkdtemp made it 0o700; the artifact gets the modes of any other output
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_artifact(out)


BUILTIN_DIR = Path(__file__).parent / "builtin"
# the artifact that "default" (and Engine.load() without an artifact) opens; see the README's Evaluation section
DEFAULT_BUILTIN = "reciprocam-efficientnet_lite0"
# the same graph exported to ONNX (`xai-engine export default --format onnx --out engine/builtin/<this>`): what
# "default" opens in an install without torch (the edge install), on ONNX Runtime or OpenVINO
DEFAULT_EXPORTED_BUILTIN = "reciprocam-efficientnet_lite0-onnx"


def builtin_names() -> list[str]:
    """Names of the artifacts shipped inside the package (``engine/builtin/<name>``)."""
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / MANIFEST).is_file()) if BUILTIN_DIR.is_dir() else []


def default_artifact_path() -> Path:
    """The embedded default artifact shipped inside the package: :data:`DEFAULT_BUILTIN` where torch is installed,
    else its ONNX export :data:`DEFAULT_EXPORTED_BUILTIN` (which runs without torch)."""
    from .requires import torch_available

    exported = BUILTIN_DIR / DEFAULT_EXPORTED_BUILTIN
    if not torch_available() and (exported / MANIFEST).is_file():
        return exported
    return BUILTIN_DIR / DEFAULT_BUILTIN


def resolve_artifact_path(path: str | os.PathLike) -> Path:
    """An artifact folder, ``"default"``, or the name of a built-in artifact -> its folder.

    An existing folder wins over a built-in name.
    """
    p = Path(path)
    if p.is_dir():
        return p
    if str(path) == "default":
        return default_artifact_path()
    if str(path) in builtin_names():
        return BUILTIN_DIR / str(path)
    return p
