"""``llsmflow export {bia,omero} RESULTS_DIR``: hand a finished run's results to the BioImage Archive or OMERO.

Parsing and printing only; the work is :mod:`llsmflow.fair` (``bia.export_bia``, ``omero.omero_plan`` and
``omero.omero_import``). Both read the dataset's REMBI YAML (``--rembi``, else the config's ``rembi`` key) and
the run's config (``--configfile``, else the copy the run recorded in ``RESULTS_DIR/provenance/config.yaml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

BIA_EPILOG = """\
example:
  llsmflow export bia results/cells -o cells-bia --rembi rembi.yaml
  then upload cells-bia/ as described in docs/fair.md ("BioImage Archive").

The folder holds the OME-Zarr (volumes in µm, time in s), the tracks tables (µm, s), the QC report and the
provenance, a file list (filelist.tsv) with each item's size in bytes and sha256, files.sha256 (sha256sum -c),
the REMBI metadata (rembi.json) and ro-crate-metadata.json in the BioImage Archive's RO-Crate form.
"""

OMERO_EPILOG = """\
example:
  llsmflow export omero results/cells --dry-run          # print what would be imported and annotated
  OMERO_USER=me OMERO_PASS=... llsmflow export omero results/cells

Server, group and target dataset come from the config's omero: section (config/README.md); the user and
password from the environment variables it names (default OMERO_USER, OMERO_PASS) or omero.login_file,
never from the command line. The import needs `pip install 'llsmflow[omero]'` (omero-py, ezomero; docs/fair.md).
"""


def _config(args) -> tuple[dict, Path]:
    """The run's config (``--configfile`` or the recorded one), validated, schema defaults filled in."""
    from llsmflow.errors import LlsmflowError
    from llsmflow.run.config import (
        fill_defaults,
        find_workflow_root,
        load_schema,
        load_yaml_file,
        validate_config,
    )

    path = Path(args.configfile) if args.configfile else Path(args.results_dir) / "provenance" / "config.yaml"
    if not path.is_file():
        raise LlsmflowError(
            "no config; expected --configfile CONFIG or the run's provenance/config.yaml", path
        )
    config = load_yaml_file(path)
    if not isinstance(config, dict):
        raise LlsmflowError("is not a mapping; expected a workflow config", path)
    schema = load_schema(find_workflow_root(args.workflow_dir))
    validate_config(config, schema, path, ignore_required=True)
    return fill_defaults(config, schema), path


def _rembi_path(args, config: dict, required: bool) -> Path | None:
    from llsmflow.errors import LlsmflowError

    if args.rembi:
        return Path(args.rembi)
    if config.get("rembi"):
        return Path(config["rembi"])
    if required:
        raise LlsmflowError(
            "no REMBI file given; expected --rembi FILE or config key rembi (the YAML `llsmflow init` writes)",
            args.results_dir,
        )
    return None


def cmd_export_bia(args) -> int:
    from llsmflow.fair.bia import export_bia

    config, _ = _config(args)
    result = export_bia(
        args.results_dir, args.output, _rembi_path(args, config, True), link=args.link, include_raw=args.raw
    )
    placed = ", ".join(f"{n} {how}" for how, n in sorted(result["placed"].items()))
    print(
        f"wrote {result['out_dir']}: {len(result['items'])} items, {result['files']} files, "
        f"{result['bytes'] / 1e6:.1f} MB ({placed}); file list filelist.tsv, checksums files.sha256"
    )
    print(f"check: cd {result['out_dir']} && sha256sum -c --quiet files.sha256; upload as in docs/fair.md")
    return 0


def cmd_export_omero(args) -> int:
    import json

    from llsmflow.fair.omero import credentials, omero_import, omero_plan, omero_settings, plan_lines
    from llsmflow.fair.rembi import load_rembi

    config, source = _config(args)
    settings = omero_settings(config, source)
    rembi = _rembi_path(args, config, False)
    plan = omero_plan(args.results_dir, settings, load_rembi(rembi) if rembi else None)
    if args.dry_run:
        print(json.dumps(plan, indent=2, ensure_ascii=False) if args.json else "\n".join(plan_lines(plan)))
        return 0
    user, password = credentials(settings, source)
    done = omero_import(plan, user, password, timeout_s=args.timeout)
    for name, ids in done["images"].items():
        print(f"imported {name}: OMERO image id(s) {', '.join(map(str, ids))}")
    print(
        f"attached {len(done['file_annotations'])} file(s) and {len(done['map_annotations'])} map annotation(s)"
    )
    return 0


WORKFLOWHUB_EPILOG = """\
example:
  llsmflow export workflowhub results/cells -o cells.crate.zip --author "Ada Lovelace" --orcid 0000-0002-1825-0097
  then upload cells.crate.zip at https://workflowhub.eu ("Contribute" > "Upload/Import Workflow RO-Crate").

The zip holds the run's crate (results/<dataset>/provenance: metadata, README, workflow snapshot, config, run
record), not the data: raw inputs and results are named #raw/... and #results/... with their sha256.
Without --author the crate's authors (from the REMBI YAML of config key rembi) are kept.
"""


def cmd_export_workflowhub(args) -> int:
    from llsmflow.errors import LlsmflowError
    from llsmflow.fair.workflowhub import export_workflowhub

    if len(args.orcid) > len(args.author):
        raise LlsmflowError(f"{len(args.orcid)} --orcid for {len(args.author)} --author; expected one per author")
    authors = [
        {"name": name, "orcid": (args.orcid[i] if i < len(args.orcid) else None),
         "affiliation": args.affiliation if i == 0 else None,
         "affiliation_url": args.affiliation_url if i == 0 else None}
        for i, name in enumerate(args.author)
    ]
    result = export_workflowhub(args.results_dir, args.output, authors)
    print(f"wrote {result['output']}: {result['files']} files, {result['bytes'] / 1e3:.1f} kB")
    return 0


def cmd_export_validator_cache(args) -> int:
    import os

    from llsmflow.fair.workflowhub import seed_validator_cache

    home = args.cache_home or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    seed_validator_cache(home)
    print(f"stored the RO-Crate 1.1 context in {home}/rocrate-validator; rocrate-validator --offline now runs here")
    return 0


def register_export_commands(subparsers) -> None:
    """Add ``llsmflow export bia``, ``omero``, ``workflowhub`` and ``validator-cache``."""
    from llsmflow.cli.help_format import add_workflow_dir_argument, example

    p = subparsers.add_parser(
        "export",
        help="hand results to the BioImage Archive, an OMERO server or WorkflowHub",
        epilog=example(
            "llsmflow export bia results/cells -o cells-bia",
            "llsmflow export omero results/cells --dry-run",
            "llsmflow export workflowhub results/cells -o cells.crate.zip --author 'Ada Lovelace'",
        ),
    )
    sub = p.add_subparsers(dest="target", required=True, metavar="TARGET")

    def common(q) -> None:
        q.add_argument("results_dir", help="results/<dataset> of a finished `llsmflow run`")
        q.add_argument("--rembi", default=None, help="the dataset's REMBI YAML (default: config key rembi)")
        q.add_argument(
            "--configfile",
            default=None,
            help="workflow config with the rembi/omero keys (default: RESULTS_DIR/provenance/config.yaml)",
        )
        add_workflow_dir_argument(q, holding="the Snakefile and config schema")

    bia = sub.add_parser(
        "bia",
        help="write a BioImage Archive submission folder (files, file list with sha256, REMBI)",
        epilog=BIA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(bia)
    bia.add_argument("-o", "--output", required=True, help="the submission folder to create (must not exist)")
    bia.add_argument(
        "--link",
        choices=("hardlink", "reflink", "copy"),
        default="hardlink",
        help="how files are placed: hard links (no copy; a copy where the file system cannot), copy-on-write "
        "clones, or copies (default hardlink)",
    )
    bia.add_argument(
        "--raw",
        action="store_true",
        help="also deposit the raw inputs (raw/<name>), each checked against the sha256 the run recorded",
    )
    bia.set_defaults(func=cmd_export_bia)

    omero = sub.add_parser(
        "omero",
        help="import the archive into OMERO with the tracks, QC report and REMBI as annotations",
        epilog=OMERO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(omero)
    omero.add_argument("--dry-run", action="store_true", help="print the import plan; contact no server")
    omero.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    omero.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the server to answer (default 10 s)"
    )
    omero.set_defaults(func=cmd_export_omero)

    whub = sub.add_parser(
        "workflowhub",
        help="write the run's Workflow RO-Crate as the .crate.zip WorkflowHub accepts",
        epilog=WORKFLOWHUB_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    whub.add_argument("results_dir", help="results/<dataset> of a finished `llsmflow run`")
    whub.add_argument("-o", "--output", required=True, help="the zip to write, NAME.crate.zip")
    whub.add_argument(
        "--author", action="append", default=[], help="an author's name; repeat for several (default: the crate's)"
    )
    whub.add_argument(
        "--orcid", action="append", default=[], help="the ORCID of each --author, in order (default: none)"
    )
    whub.add_argument(
        "--affiliation", default=None, help="the first author's institute, the crate's publisher (default: none)"
    )
    whub.add_argument(
        "--affiliation-url", default=None, help="the web address of --affiliation (default: none)"
    )
    whub.set_defaults(func=cmd_export_workflowhub)

    cache = sub.add_parser(
        "validator-cache",
        help="let `rocrate-validator --offline` run without network (stores the RO-Crate context it needs)",
        epilog=example(
            "llsmflow export validator-cache",
            "rocrate-validator validate --offline -p provenance-run-crate-0.5 results/cells/provenance",
        ),
    )
    cache.add_argument(
        "cache_home",
        nargs="?",
        default=None,
        help="the cache directory the validator reads (default: $XDG_CACHE_HOME, else ~/.cache)",
    )
    cache.set_defaults(func=cmd_export_validator_cache)
