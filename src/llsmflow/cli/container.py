"""``llsmflow container recipe|build|pin|info``: the Apptainer images (docs/containers.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llsmflow.hpc.containers import BUILDERS, FLAVOURS


def cmd_container_recipe(args) -> int:
    from llsmflow.hpc.containers import definition_path, render_definition

    path = Path(args.image) if args.image not in FLAVOURS else definition_path(args.image, args.workflow_dir)
    sys.stdout.write(render_definition(path, args.format))
    return 0


def cmd_container_build(args) -> int:
    from llsmflow.hpc.containers import build_image, pin_lines

    result = build_image(args.image, args.output, args.workflow_dir, args.builder, args.force)
    print(f"built {result['path']} with {result['runtime']}")
    print(f"sha256 {result['sha256']}")
    print("pin it in the workflow config (config/config.yaml):")
    print(pin_lines(args.image, result["path"], result["sha256"]))
    return 0


def cmd_container_pin(args) -> int:
    from llsmflow.errors import LlsmflowError
    from llsmflow.hpc.containers import pin_lines
    from llsmflow.io import sha256_file

    path = Path(args.sif)
    if not path.is_file():
        raise LlsmflowError("image file not found; expected a SIF file", path)
    print(pin_lines(args.image, str(path.resolve()), sha256_file(path)))
    return 0


def cmd_container_info(args) -> int:
    from llsmflow.hpc.containers import running_container

    print(json.dumps(running_container(), indent=2))
    return 0


def register_container_commands(subparsers) -> None:
    """Add ``llsmflow container recipe|build|pin|info``."""
    from llsmflow.cli.help_format import add_workflow_dir_argument, example

    p = subparsers.add_parser(
        "container",
        help="Apptainer images: recipe, build, pin, info (docs/containers.md)",
        description="The workflow's Apptainer images (docs/containers.md): print a definition, build an\n"
        "image, pin a built image by its sha256, or say which image this process runs in.",
        epilog=example(
            "llsmflow container recipe cpu",
            "llsmflow container build cpu --output llsmflow-cpu.sif",
            "llsmflow container pin cpu llsmflow-cpu.sif",
        ),
    )
    sub = p.add_subparsers(dest="container_command", required=True, metavar="ACTION")

    q = sub.add_parser(
        "recipe",
        help="print an image definition (parsed with spython)",
        epilog=example("llsmflow container recipe cpu", "llsmflow container recipe gpu --format docker"),
    )
    q.add_argument("image", help="cpu, gpu, or a definition file (.def)")
    q.add_argument(
        "--format",
        choices=("def", "docker"),
        default="def",
        help="def: the definition as written (default); docker: spython's Dockerfile conversion (to read)",
    )
    add_workflow_dir_argument(q, holding="envs/apptainer/")
    q.set_defaults(func=cmd_container_recipe)

    q = sub.add_parser(
        "build",
        help="build an image with spython (needs apptainer or singularity)",
        epilog=example("llsmflow container build cpu --output llsmflow-cpu-0.1.0.sif"),
    )
    q.add_argument("image", choices=FLAVOURS, help="which image: cpu or gpu (CUDA deconvolution)")
    q.add_argument("--output", required=True, help="SIF file to write, e.g. llsmflow-cpu-0.1.0.sif")
    q.add_argument(
        "--builder",
        choices=BUILDERS,
        default=BUILDERS[0],
        help="how the build gets root: auto (root if root, else --fakeroot), fakeroot, sudo, root",
    )
    q.add_argument("--force", action="store_true", help="replace an existing output")
    add_workflow_dir_argument(q, holding="envs/apptainer/")
    q.set_defaults(func=cmd_container_build)

    q = sub.add_parser(
        "pin",
        help="print the config lines that pin a local SIF by its sha256",
        epilog=example("llsmflow container pin cpu llsmflow-cpu-0.1.0.sif >> config.yaml"),
    )
    q.add_argument("image", choices=FLAVOURS, help="which image the SIF is: cpu or gpu")
    q.add_argument("sif", help="the SIF file (built, or pulled with apptainer pull)")
    q.set_defaults(func=cmd_container_pin)

    q = sub.add_parser(
        "info",
        help="print the image this process runs in (JSON; null outside one)",
        epilog=example("apptainer exec llsmflow-cpu.sif llsmflow container info"),
    )
    q.set_defaults(func=cmd_container_info)
