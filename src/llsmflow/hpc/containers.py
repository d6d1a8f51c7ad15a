"""Apptainer images of llsmflow: definitions, builds, the images a run uses, and the image a process runs in.

Two images are defined in ``envs/apptainer/``: ``llsmflow-cpu.def`` (NumPy/SciPy + pyFFTW) and
``llsmflow-gpu.def`` (conda-forge ``cudadecon`` + ``pycudadecon`` + CuPy on CUDA 12). Operators' guide:
``docs/containers.md``.

What is here and why it is hand-written
---------------------------------------
* Definitions are parsed, converted to Dockerfiles and built with spython (``SingularityParser``,
  ``DockerWriter``, the build command line of ``Client.build`` run by ``spython.utils.run_command``, which
  returns the exit status that ``Client.build`` discards). spython runs the executable named
  ``singularity`` whatever the host has (``spython/main/base/command.py`` ``init_command``, and
  ``spython/utils/terminal.py`` ``check_install`` / ``get_singularity_version`` in spython 0.3.14).
  Hosts that install only Apptainer (without its ``singularity`` compatibility link, e.g. unprivileged or
  relocatable installs) have no such command, so :func:`spython_runtime` puts a private directory holding
  a ``singularity`` link to ``apptainer`` first on ``PATH`` while spython runs: every spython code path
  then reaches Apptainer, without patching spython. Apptainer is preferred where both exist, as Snakemake
  does.
* :func:`resolve_images` checks that the configured images are pinned (a registry reference by
  ``@sha256:`` digest, or a local SIF file with its sha256) and picks the image of each rule: the CPU image
  for every rule, the GPU image for ``deconvolve`` when the configured backend can use a GPU. Snakemake
  records an image's URL, not its digest (field notes, "Snakemake 8/9 on SLURM"): pinning in the config is
  what makes the record exact.
* :func:`running_container` reads, inside a container, what identifies the image (for the provenance
  record): the variables Apptainer sets, the ones the definitions set, and the labels file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llsmflow.errors import LlsmflowError

FLAVOURS = ("cpu", "gpu")
"""Image flavours; ``envs/apptainer/llsmflow-<flavour>.def`` defines each."""

REQUIRED_MODULES = (
    "numpy",
    "scipy",
    "skimage",
    "tifffile",
    "zarr",
    "dask",
    "pandas",
    "pyarrow",
    "trackpy",
    "ome_zarr",
    "matplotlib",
    "yaml",
    "jsonschema",
    "rocrate",
    "pyfftw",
)
"""Modules the workflow's steps import (directly or lazily inside functions): every image must have them."""

GPU_MODULES = ("cupy", "pycudadecon")

BUILDERS = ("auto", "fakeroot", "sudo", "root")
"""How :func:`build_image` gets root inside the build (``auto`` picks one of the others)."""

PROVENANCE_VARIABLES = (
    "LLSMFLOW_CONTAINER_IMAGE",
    "LLSMFLOW_CONTAINER_FLAVOUR",
    "LLSMFLOW_CONTAINER_VERSION",
    "APPTAINER_CONTAINER",
    "SINGULARITY_CONTAINER",
    "APPTAINER_NAME",
    "SINGULARITY_NAME",
)
"""Environment variables that identify the image a process runs in (see :func:`running_container`).

``LLSMFLOW_CONTAINER_*`` are set by the definitions' ``%environment`` (the version at build time);
``APPTAINER_CONTAINER`` / ``SINGULARITY_CONTAINER`` (the image file's path on the host) and
``APPTAINER_NAME`` / ``SINGULARITY_NAME`` (its file name) are set by the runtime in every container.
"""

LABELS_FILE = Path("/.singularity.d/labels.json")
"""Where Apptainer and Singularity store an image's labels inside it."""

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


# ------------------------------------------------------------------------------------------ definitions


def repository_root(explicit: str | Path | None = None) -> Path:
    """The llsmflow checkout holding ``envs/apptainer/``: explicit, the current directory, or the source tree.

    Raises
    ------
    LlsmflowError
        None of the candidates holds the definitions.
    """
    from llsmflow.run.config import SOURCE_TREE

    candidates = [Path(explicit)] if explicit else [Path.cwd(), SOURCE_TREE]
    for candidate in candidates:
        if (candidate / "envs" / "apptainer" / "llsmflow-cpu.def").is_file():
            return candidate.resolve()
    raise LlsmflowError(
        "no envs/apptainer/llsmflow-cpu.def found; expected --workflow-dir pointing at an llsmflow checkout",
        candidates[0],
    )


def definition_path(flavour: str, root: str | Path | None = None) -> Path:
    """Path of the definition file of an image flavour (``'cpu'`` or ``'gpu'``)."""
    if flavour not in FLAVOURS:
        raise LlsmflowError(f"image flavour {flavour!r} is unknown; expected one of {', '.join(FLAVOURS)}")
    return repository_root(root) / "envs" / "apptainer" / f"llsmflow-{flavour}.def"


def parse_definition(path: str | Path):
    """Parse an Apptainer definition file with spython.

    Returns
    -------
    spython.main.parse.recipe.Recipe
        The recipe of the (single) build stage: ``fromHeader``, ``files``, ``environ``, ``labels``,
        ``install`` (the ``%post`` lines, then the ``%test`` script written out by ``echo`` lines),
        ``test``, ``cmd`` (the ``%runscript``).

    Raises
    ------
    LlsmflowError
        The file is missing, has no ``Bootstrap:``/``From:`` header, or has more than one stage.
    """
    from spython.main.parse.parsers import SingularityParser

    path = Path(path)
    if not path.is_file():
        raise LlsmflowError("definition file not found", path)
    text = path.read_text(encoding="utf-8")
    if not re.search(r"^\s*Bootstrap:\s*\S+", text, flags=re.MULTILINE | re.IGNORECASE):
        raise LlsmflowError("no 'Bootstrap:' header; expected an Apptainer definition file", path)
    stages = SingularityParser(str(path)).recipe
    if len(stages) != 1:
        raise LlsmflowError(f"{len(stages)} build stages; expected one", path)
    recipe = next(iter(stages.values()))
    if not recipe.fromHeader:
        raise LlsmflowError("no 'From:' header; expected the base image", path)
    return recipe


def render_definition(path: str | Path, fmt: str = "def") -> str:
    """The definition as text: as written (``'def'``, after checking that spython parses it) or converted to
    a Dockerfile (``'docker'``, spython's ``DockerWriter``).

    The Dockerfile is for reading and porting, not for building: spython turns each ``%post`` line into its
    own ``RUN`` (shell variables and line continuations do not carry over) and ``%test`` into a
    ``HEALTHCHECK`` script. spython's own ``SingularityWriter`` (0.3.14) splits every ``%files`` and
    ``%labels`` entry into single characters, so a spython round trip is not offered; ``'def'`` prints the
    file itself.
    """
    from spython.main.parse.writers import DockerWriter

    recipe = parse_definition(path)
    if fmt == "def":
        return Path(path).read_text(encoding="utf-8")
    if fmt == "docker":
        return DockerWriter({"spython-base": recipe}).convert()
    raise LlsmflowError(f"recipe format {fmt!r} is unknown; expected def or docker")


# ------------------------------------------------------------------------------------------ builds


def container_runtime() -> tuple[str, str]:
    """The container command here: ``('apptainer', path)`` if present, else ``('singularity', path)``.

    Raises
    ------
    LlsmflowError
        Neither command is on ``PATH``.
    """
    for name in ("apptainer", "singularity"):
        found = shutil.which(name)
        if found:
            return name, found
    raise LlsmflowError(
        "neither apptainer nor singularity is on PATH; expected Apptainer >= 1.1 "
        "(https://apptainer.org/docs/admin/main/installation.html), or build on a machine that has it"
    )


@contextlib.contextmanager
def spython_runtime() -> Iterator[str]:
    """Make spython's hard-coded ``singularity`` command reach the runtime found here; yield its name.

    With Apptainer present (preferred), a temporary directory holding ``singularity -> apptainer`` goes first
    on ``PATH`` for the duration of the block: Apptainer behaves the same under either name. ``PATH`` is
    restored afterwards.
    """
    name, found = container_runtime()
    if name == "singularity":
        yield name
        return
    old_path = os.environ.get("PATH", "")
    with tempfile.TemporaryDirectory(prefix="llsmflow-apptainer-") as shim:
        os.symlink(found, Path(shim) / "singularity")
        os.environ["PATH"] = shim + os.pathsep + old_path
        try:
            yield name
        finally:
            os.environ["PATH"] = old_path


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def build_image(
    flavour: str,
    output: str | Path,
    root: str | Path | None = None,
    builder: str = "auto",
    force: bool = False,
) -> dict:
    """Build an image from its definition with spython, atomically, and return its path and sha256.

    Parameters
    ----------
    flavour : {'cpu', 'gpu'}
        Which definition (``envs/apptainer/llsmflow-<flavour>.def``).
    output : path
        The SIF file to write; written under a temporary name and renamed when the build (with its
        ``%test``) succeeded.
    root : path, optional
        The llsmflow checkout; the build runs there because the definitions' ``%files`` are relative to it.
    builder : {'auto', 'fakeroot', 'sudo', 'root'}
        How to get root inside the build: ``fakeroot`` (``--fakeroot``, unprivileged, Apptainer >= 1.1),
        ``sudo``, or ``root`` (already root). ``auto``: ``root`` when run as root, else ``fakeroot``.
    force : bool
        Replace an existing ``output``.

    Returns
    -------
    dict
        ``{"flavour", "path", "sha256", "runtime"}``.
    """
    from spython.main import Client
    from spython.utils import check_install, run_command

    from llsmflow.io import atomic_output, sha256_file

    definition = definition_path(flavour, root)
    parse_definition(definition)
    output = Path(output).resolve()
    if output.exists() and not force:
        raise LlsmflowError("image exists; expected a new path, or --force to replace it", output)
    if builder == "auto":
        builder = "root" if os.geteuid() == 0 else "fakeroot"
    if builder not in BUILDERS[1:]:
        raise LlsmflowError(f"builder {builder!r} is unknown; expected auto, fakeroot, sudo or root")
    options = ["--fakeroot"] if builder == "fakeroot" else []
    with spython_runtime() as runtime, atomic_output(output) as tmp:
        if not check_install():
            raise LlsmflowError(f"`{runtime} --version` failed; expected a working {runtime}")
        # The command line is spython's (Client.build assembles it the same way); it is run through
        # spython.utils.run_command rather than Client.build because Client.build discards the exit status.
        command = Client._init_command("build") + options + [str(tmp), str(definition)]
        with _working_directory(definition.parents[2]):
            result = run_command(command, sudo=builder == "sudo", capture=False, quiet=True)
        # stdout went to the terminal; the runtime's log (stderr) was collected: show it once
        sys.stderr.write("".join(result["message"]))
        if result["return_code"] != 0 or not tmp.is_file():
            raise LlsmflowError(
                f"{runtime} build of {definition.name} failed (exit {result['return_code']}, log above); "
                "nothing written",
                output,
            )
    return {"flavour": flavour, "path": str(output), "sha256": sha256_file(output), "runtime": runtime}


def pin_lines(flavour: str, reference: str, sha256: str | None = None) -> str:
    """The ``containers:`` lines of ``config/config.yaml`` that pin an image (local SIF or registry)."""
    lines = ["containers:", f'  {flavour}: "{reference}"']
    if sha256 is not None and not _SCHEME.match(reference):
        lines.append(f'  {flavour}_sha256: "{sha256}"')
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ configured images


def is_remote(reference: str) -> bool:
    """True for a registry reference (``docker://``, ``oras://``, ``library://`` …), False for a file."""
    return bool(_SCHEME.match(reference)) and not reference.startswith("file://")


def resolve_images(section: dict | None, backend: str = "cpu", verify_local: bool = False) -> dict:
    """Check the config's ``containers`` section and return the image of every rule.

    Parameters
    ----------
    section : dict or None
        ``config["containers"]``: ``cpu``, ``gpu`` (a registry reference or a local SIF path, or null),
        ``cpu_sha256``, ``gpu_sha256`` (the sha256 of a local SIF) and ``require_digest`` (default True).
    backend : str
        ``config["deconvolution"]["backend"]``; one of :data:`llsmflow.decon.GPU_BACKENDS` (the backends
        whose jobs request a GPU; ``auto`` requests none) runs ``deconvolve`` in the GPU image when one is
        configured.
    verify_local : bool
        Hash local SIF files and compare with the configured sha256 (seconds per GB: done once, by the
        main Snakemake process, when the run uses Apptainer).

    Returns
    -------
    dict
        ``{"cpu": ref or None, "gpu": ref or None, "deconvolve": ref or None}``; ``None`` = no container.

    Raises
    ------
    LlsmflowError
        An image that is not pinned while ``require_digest`` is true, a malformed sha256, a missing local
        image or one whose sha256 differs.
    """
    if section is not None and not isinstance(section, dict):
        raise LlsmflowError(f"config containers = {section!r} is invalid; expected a mapping (cpu, gpu, ...)")
    section = dict(section or {})
    require = section.get("require_digest", True)
    images = {}
    for flavour in FLAVOURS:
        reference = section.get(flavour) or None
        images[flavour] = reference
        if reference is None:
            continue
        key = f"containers.{flavour}"
        if is_remote(reference):
            if require and not _DIGEST.search(reference):
                raise LlsmflowError(
                    f"config {key} = {reference!r} is not pinned; expected a reference by digest, e.g. "
                    f"oras://ghcr.io/ORG/llsmflow-{flavour}@sha256:<64 hex digits> (docs/containers.md), "
                    f"or containers.require_digest: false"
                )
            continue
        expected = section.get(f"{flavour}_sha256") or None
        if expected is not None and not _SHA256.match(expected):
            raise LlsmflowError(
                f"config {key}_sha256 = {expected!r} is invalid; expected 64 lower-case hex digits"
            )
        if require and expected is None:
            raise LlsmflowError(
                f"config {key} = {reference!r} is a local image without {key}_sha256; expected its "
                f"sha256 (printed by `llsmflow container build` and `llsmflow container pin`), "
                f"or containers.require_digest: false"
            )
        if verify_local:
            _verify_local(Path(reference.removeprefix("file://")), expected, key)
    from llsmflow.decon.backends import GPU_BACKENDS

    gpu_deconvolve = images["gpu"] is not None and backend in GPU_BACKENDS
    images["deconvolve"] = images["gpu"] if gpu_deconvolve else images["cpu"]
    return images


def _verify_local(path: Path, expected: str | None, key: str) -> None:
    from llsmflow.io import sha256_file

    if not path.is_file():
        raise LlsmflowError(f"config {key}: image file not found; expected a SIF built or pulled there", path)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise LlsmflowError(
                f"image sha256 is {actual}; config {key}_sha256 expects {expected} (rebuilt or replaced?)",
                path,
            )


# ------------------------------------------------------------------------------------------ inside a container


def running_container(environ: dict | None = None, labels_file: str | Path = LABELS_FILE) -> dict | None:
    """Identify the Apptainer/Singularity image this process runs in, for the provenance record.

    Parameters
    ----------
    environ : dict, optional
        Environment to read (default ``os.environ``).
    labels_file : path
        The image's labels (default ``/.singularity.d/labels.json``, present in every SIF).

    Returns
    -------
    dict or None
        ``None`` outside a container. Otherwise ``image`` (``LLSMFLOW_CONTAINER_IMAGE``, e.g.
        ``llsmflow-gpu``), ``flavour``, ``version`` (llsmflow's version at build time), ``path`` (the SIF
        file on the host: ``APPTAINER_CONTAINER`` or ``SINGULARITY_CONTAINER``), ``name``
        (``APPTAINER_NAME`` / ``SINGULARITY_NAME``) and ``labels`` (dict; empty when unreadable). Its digest
        is not knowable from inside (it is the hash of the file that contains it): record the configured
        ``containers`` section (pinned references) beside this.
    """
    env = os.environ if environ is None else environ
    path = env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER")
    image = env.get("LLSMFLOW_CONTAINER_IMAGE")
    if not path and not image:
        return None
    labels: dict = {}
    with contextlib.suppress(OSError, ValueError):
        labels = json.loads(Path(labels_file).read_text(encoding="utf-8"))
    return {
        "image": image,
        "flavour": env.get("LLSMFLOW_CONTAINER_FLAVOUR"),
        "version": env.get("LLSMFLOW_CONTAINER_VERSION") or labels.get("llsmflow.version"),
        "path": path,
        "name": env.get("APPTAINER_NAME") or env.get("SINGULARITY_NAME"),
        "labels": labels,
    }


def check_image(flavour: str) -> dict[str, str]:
    """Check that this Python has what the pipeline needs in an image of ``flavour``; the ``%test`` of the
    definitions runs it. Prints and returns the deconvolution backends.

    Raises
    ------
    LlsmflowError
        A required module does not import, the CPU backend is unavailable, or (``gpu``) pycudadecon or CuPy
        cannot be imported or libcudaDecon does not load. A missing GPU is not an error (builds run on
        machines without one); the backends then say so.
    """
    from llsmflow import decon

    if flavour not in FLAVOURS:
        raise LlsmflowError(f"image flavour {flavour!r} is unknown; expected one of {', '.join(FLAVOURS)}")
    missing = []
    for module in REQUIRED_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:
            missing.append(f"{module} ({type(exc).__name__}: {exc})")
    if missing:
        raise LlsmflowError(f"{flavour} image: modules do not import: {'; '.join(missing)}")
    backends = decon.available_backends()
    print(f"llsmflow {flavour} image, Python {sys.version.split()[0]}: deconvolution backends {backends}")
    if backends["cpu"] != "available":
        raise LlsmflowError(f"{flavour} image: CPU deconvolution backend unavailable: {backends['cpu']}")
    if flavour == "gpu":
        for name in GPU_MODULES:
            if "cannot be imported" in backends[name]:
                raise LlsmflowError(f"gpu image: {backends[name]}")
        if "does not load" in backends["pycudadecon"]:
            raise LlsmflowError(f"gpu image: {backends['pycudadecon']}")
    return backends
