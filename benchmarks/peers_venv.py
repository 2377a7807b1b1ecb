"""The peer virtualenv: create and check it, and run code in it through a subprocess.

openvino-xai 1.1.0 pins ``openvino-dev==2024.4`` and ``numpy==1.*``, which clash with the main environment (OpenVINO
2026.x, NumPy 2.x), so it lives in a separate virtualenv (``.venv-peers`` by default). The main interpreter drives it
through :func:`run_worker`: it writes a JSON request, starts a worker script under the venv's interpreter, and reads the
JSON result back (large arrays travel as ``.npz`` files named in the request). :func:`serve_worker` is the other end.

Only the standard library is imported: this module runs under both interpreters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO_ROOT / ".venv-peers"
REEXEC_ENV = "XAI_ENGINE_PEERS_REEXEC"

# The peer set that installs and works with Python 3.11 (checked with pip's resolver against the reachable index).
# openvino-xai itself is installed with --no-deps: its metadata asks for opencv-python (the GUI build, which drags in
# X11 libraries); opencv-python-headless provides the same ``cv2`` module. ``pip check`` therefore reports
# "openvino-xai 1.1.0 requires opencv-python, which is not installed", which is expected and harmless.
# openvino-dev is only the pinned metadata dependency (model-optimizer tools); openvino-xai imports ``openvino``.
# No torch (openvino-xai only imports it if present) and no onnx (OpenVINO reads .onnx files natively).
PEER_DEPENDENCIES: tuple[str, ...] = (
    "openvino==2024.4.0",
    "openvino-dev==2024.4.0",
    "numpy==1.26.4",
    "opencv-python-headless==4.10.0.84",
    "scipy==1.14.1",
    "matplotlib==3.9.2",
    "tqdm==4.67.1",
)
PEER_PACKAGE = "openvino-xai==1.1.0"


class PeerError(RuntimeError):
    """Raised when the peer venv is missing or the peer run fails; the message names the fix."""


# --------------------------------------------------------------------------------------------------------------------
# Paths and environment
# --------------------------------------------------------------------------------------------------------------------


def venv_dir(venv: str | os.PathLike[str]) -> Path:
    """Return the absolute venv directory; a relative path is taken relative to the repository root."""
    path = Path(venv).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path.absolute()


def venv_python(venv: str | os.PathLike[str]) -> Path:
    """Return the path of the interpreter inside ``venv``.

    Args:
        venv: The virtualenv directory; a relative path is taken relative to the repository root.

    Returns:
        ``<venv>/bin/python`` (``Scripts/python.exe`` on Windows); it may not exist.
    """
    root = venv_dir(venv)
    if os.name == "nt":
        return root / "Scripts" / "python.exe"
    return root / "bin" / "python"


def setup_hint(venv: str | os.PathLike[str]) -> str:
    """Return the command that creates ``venv``, for error messages."""
    root = venv_dir(venv)
    suffix = "" if root == DEFAULT_VENV.absolute() else f" --venv {root}"
    return f"python benchmarks/peers.py setup{suffix}"


def require_venv(venv: str | os.PathLike[str]) -> Path:
    """Return the venv's interpreter; PeerError naming the setup command when it does not exist."""
    python = venv_python(venv)
    if not python.exists():
        raise PeerError(f"openvino-xai venv missing at {venv_dir(venv)}: run {setup_hint(venv)}")
    return python


def inside_venv(venv: str | os.PathLike[str]) -> bool:
    """Tell whether the running interpreter is the one of ``venv``."""
    try:
        return Path(sys.prefix).resolve() == venv_dir(venv).resolve()
    except OSError:
        return False


def child_env() -> dict[str, str]:
    """Environment for the peer interpreter: the main env's PYTHONPATH/PYTHONHOME must not leak NumPy 2 into it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def peer_available(venv: str | os.PathLike[str] = DEFAULT_VENV) -> bool:
    """Tell whether the peer venv exists and its interpreter can import openvino-xai.

    Args:
        venv: The peer virtualenv directory.

    Returns:
        True when ``<venv>/bin/python -c "import openvino_xai"`` succeeds.
    """
    python = venv_python(venv)
    if not python.exists():
        return False
    try:
        proc = subprocess.run(
            [str(python), "-c", "import openvino, openvino_xai"],
            env=child_env(),
            capture_output=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


# --------------------------------------------------------------------------------------------------------------------
# setup
# --------------------------------------------------------------------------------------------------------------------


def setup_venv(venv: str | os.PathLike[str] = DEFAULT_VENV, force: bool = False) -> Path:
    """Create the peer virtualenv and install the pinned openvino-xai set into it.

    Idempotent: when the venv already imports openvino_xai nothing is installed (unless ``force``).

    Args:
        venv: The virtualenv directory to create or reuse.
        force: Reinstall the pinned packages even if the venv already works.

    Returns:
        The venv's interpreter path.

    Raises:
        PeerError: When the interpreter is not Python 3.10-3.12 (no OpenVINO 2024.4 wheels) or pip fails.
    """
    root = venv_dir(venv)
    python = venv_python(root)
    if not force and peer_available(root):
        print(f"[peers] {root} already imports openvino_xai; nothing to do (use --force to reinstall)", flush=True)
        _print_versions(python)
        return python
    if not (3, 10) <= sys.version_info[:2] <= (3, 12):
        raise PeerError(
            f"openvino 2024.4 has wheels for CPython 3.8-3.12 only, this is {sys.version.split()[0]}: "
            "run the setup with a Python 3.10-3.12 interpreter"
        )
    if not python.exists():
        print(f"[peers] creating venv {root} with {sys.executable}", flush=True)
        _run([sys.executable, "-m", "venv", str(root)], "python -m venv")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    print(f"[peers] installing {' '.join(PEER_DEPENDENCIES)}", flush=True)
    _run([*pip, *PEER_DEPENDENCIES], "pip install of the openvino-xai dependencies")
    print(f"[peers] installing {PEER_PACKAGE} (--no-deps: opencv-python-headless replaces opencv-python)", flush=True)
    _run([*pip, "--no-deps", PEER_PACKAGE], f"pip install {PEER_PACKAGE}")
    if not peer_available(root):
        raise PeerError(
            f"{root} still cannot import openvino_xai after installation; delete it and rerun {setup_hint(root)}"
        )
    _print_versions(python)
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze"], env=child_env(), capture_output=True, text=True, check=False
    )
    (root / "peers-freeze.txt").write_text(freeze.stdout)
    print(f"[peers] ready; installed set written to {root / 'peers-freeze.txt'}", flush=True)
    return python


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, env=child_env(), check=False)
    if proc.returncode != 0:
        raise PeerError(f"{what} failed (exit {proc.returncode}); see pip's output above. Command: {' '.join(cmd)}")


def _print_versions(python: Path) -> None:
    code = (
        "import importlib.metadata as m, sys\n"
        "for d in ('openvino', 'openvino-dev', 'openvino-xai', 'numpy', 'opencv-python-headless'):\n"
        "    try: print(f'[peers]   {d}=={m.version(d)}')\n"
        "    except m.PackageNotFoundError: print(f'[peers]   {d}: not installed')\n"
        "print(f'[peers]   python {sys.version.split()[0]}')\n"
    )
    subprocess.run([str(python), "-c", code], env=child_env(), check=False)


# --------------------------------------------------------------------------------------------------------------------
# Running code in the venv
# --------------------------------------------------------------------------------------------------------------------


def run_worker(
    python: Path,
    script: Path,
    worker: str,
    kwargs: Mapping[str, Any],
    workdir: Path,
    *,
    timeout: float | None,
    verbose: bool,
    what: str,
    knob: str,
) -> Any:
    """Call ``worker(**kwargs)`` in ``script`` under the peer interpreter ``python`` and return its JSON result.

    The request (``{"worker", "kwargs", "result"}``) is written to ``workdir/request.json``; the child, ``python script
    workdir/request.json``, hands it to :func:`serve_worker`, which writes the worker's return value to
    ``workdir/result.json``.

    Args:
        python: The peer interpreter (see :func:`require_venv`).
        script: The worker script; it calls :func:`serve_worker` when run as ``__main__``.
        worker: The worker's name in that script.
        kwargs: The worker's keyword arguments (JSON-serialisable).
        workdir: An existing folder for the request and the result.
        timeout: Seconds before the child is killed; None waits forever.
        verbose: Stream the child's stderr (its progress) to this process's stderr instead of capturing it.
        what: What runs, for error messages (``"openvino-xai run"``).
        knob: The argument that makes the run shorter, named when it times out.

    Returns:
        The worker's return value, decoded from JSON.

    Raises:
        PeerError: When the child times out, fails or writes no result (the message carries the end of its output).
    """
    request, result = workdir / "request.json", workdir / "result.json"
    request.write_text(json.dumps({"worker": worker, "kwargs": dict(kwargs), "result": str(result)}))
    try:
        proc = subprocess.run(
            [str(python), str(script), str(request)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{what} timed out after {timeout} s; raise timeout= or lower {knob}") from exc
    if proc.returncode != 0 or not result.exists():
        tail = ((proc.stdout or "") + (proc.stderr or "see the peer's output above"))[-4000:]
        raise PeerError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(result.read_text())


def serve_worker(argv: Sequence[str], workers: Mapping[str, Callable[..., Any]]) -> int:
    """The child's side of :func:`run_worker`: run the requested worker and write its result.

    Args:
        argv: The script's arguments: one request file.
        workers: The script's workers by name.

    Returns:
        The exit status (2 on a malformed call; a failing worker raises, and the traceback reaches the parent).
    """
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print(f"usage: {Path(sys.argv[0]).name} REQUEST.json (written by peers_venv.run_worker)", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    if request.get("worker") not in workers:
        print(f"unknown worker {request.get('worker')!r}; choose from {sorted(workers)}", file=sys.stderr)
        return 2
    result = workers[request["worker"]](**request["kwargs"])
    Path(request["result"]).write_text(json.dumps(result, indent=2))
    return 0


def reexec_in_venv(venv: str | os.PathLike[str], script: Path, argv: Sequence[str]) -> None:
    """Replace this process by ``script argv`` under the peer venv's interpreter.

    Raises:
        PeerError: When the venv is missing, or this process was already re-executed and still is not inside it.
    """
    python = require_venv(venv)
    if os.environ.get(REEXEC_ENV):
        raise PeerError(
            f"re-executed with {python} but sys.prefix is {sys.prefix}; the venv looks broken: delete it and run "
            f"{setup_hint(venv)}"
        )
    env = child_env()
    env[REEXEC_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(str(python), [str(python), str(script), *argv], env)
