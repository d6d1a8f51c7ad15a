"""``llsmflow export omero``: what to import into an OMERO server and annotate, as data; then the import.

:func:`omero_plan` builds the plan from a run's results, its config's ``omero:`` section and the dataset's
REMBI: the OME-Zarr image(s) to import into the target dataset, the tracks tables and the QC report to attach
as file annotations, the REMBI key–value pairs as a map annotation, and a link to the raw data (a map
annotation whose value is the raw data's location and the sha256 manifest that identifies them). ``--dry-run``
prints it; nothing here needs a server.

:func:`omero_import` carries a plan out through ``ezomero`` (``ezomero.connect``, ``ezomero.ezimport``,
``ezomero.post_file_annotation``, ``ezomero.post_map_annotation``; their documented API) on top of
``omero-py``. Both are optional (``pip install 'llsmflow[omero]'``) and imported only here, when a plan is
carried out: ``omero-py`` needs ZeroC Ice, whose 3.6 wheels are not on PyPI for Python 3.11 and whose source
build fails against Python 3.11's headers, so it does not install on this project's CI (docs/fair.md).
``ezomero.ezimport`` runs the ``omero import`` command line, which needs Java on the machine. Before any of
that, :func:`check_reachable` opens a TCP connection to the server so that a wrong host or a closed port is
one line, not an Ice traceback. **The import itself has not been run against an OMERO server here.**

Credentials never come from the command line or the config: the user name and password are read from the
environment variables the config names (``omero.user_env``, ``omero.pass_env``), or from
``omero.login_file`` (YAML with ``user`` and ``password``; refused when others may read it).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from llsmflow.errors import LlsmflowError

#: Namespaces of llsmflow's annotations on OMERO objects.
NS_REMBI = "org.llsmflow/rembi"
NS_RAW = "org.llsmflow/raw-data"
NS_TRACKS = "org.llsmflow/tracks"
NS_QC = "org.llsmflow/qc"

MIMETYPES = {".csv": "text/csv", ".html": "text/html", ".png": "image/png", ".json": "application/json"}


def omero_settings(config: dict, source: str | Path) -> dict:
    """The config's ``omero:`` section (schema defaults filled in), checked for what an import needs."""
    settings = dict((config or {}).get("omero") or {})
    if not settings.get("host"):
        raise LlsmflowError(
            "config key omero.host is not set; expected the OMERO server's host name (config/README.md, omero)",
            source,
        )
    if not settings.get("dataset_id"):
        raise LlsmflowError(
            "config key omero.dataset_id is not set; expected the id of the OMERO dataset to import into",
            source,
        )
    return settings


def credentials(settings: dict, source: str | Path) -> tuple[str, str]:
    """(user, password) from ``settings["login_file"]`` or the environment variables it names."""
    path = settings.get("login_file")
    if path:
        from llsmflow.run.config import load_yaml_file

        path = Path(path).expanduser()
        if not path.is_file():
            raise LlsmflowError("no credentials file; expected YAML with user and password (mode 600)", path)
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise LlsmflowError(
                f"mode {stat.S_IMODE(path.stat().st_mode):03o} lets others read it; expected chmod 600", path
            )
        data = load_yaml_file(path, what="credentials file")
        if not isinstance(data, dict) or not data.get("user") or not data.get("password"):
            raise LlsmflowError("has no user and password; expected YAML keys user and password", path)
        return str(data["user"]), str(data["password"])
    user_env, pass_env = settings["user_env"], settings["pass_env"]
    user, password = os.environ.get(user_env), os.environ.get(pass_env)
    if not user or not password:
        raise LlsmflowError(
            f"environment variables {user_env} and {pass_env} are not both set; expected the OMERO user "
            "and password there, or omero.login_file (never on the command line)",
            source,
        )
    return user, password


def check_reachable(host: str, port: int, timeout_s: float = 5.0) -> None:
    """Open (and close) a TCP connection to ``host:port``; one clear line when no server answers."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LlsmflowError(
            f"cannot reach the OMERO server at {host}:{port} ({reason}); expected a running server "
            "(check omero.host and omero.port, and the network)"
        ) from None


def omero_plan(
    results_dir: str | Path, settings: dict, rembi_study=None, raw_location: str | None = None
) -> dict:
    """The import plan of a run's results, as JSON-ready data.

    Parameters
    ----------
    results_dir : path
        A finished run's ``results_dir/<dataset>``.
    settings : dict
        The ``omero:`` config section (:func:`omero_settings`).
    rembi_study : rembi_mifa.rembi.RembiStudy, optional
        The validated REMBI (:func:`llsmflow.fair.rembi.load_rembi`); None: no REMBI map annotation.
    raw_location : str, optional
        Where the raw data live (URL or path); default ``omero.raw_data_url``, else the run's ``raw_dir``.

    Returns
    -------
    dict
        ``server`` (host, port, group, secure), ``target`` (project_id, dataset_id), ``images`` (path, name,
        format), ``file_annotations`` (path, mimetype, namespace, description, attach_to),
        ``map_annotations`` (namespace, attach_to, pairs).
    """
    from llsmflow.fair.rembi import key_values
    from llsmflow.fair.results import results_inventory

    inventory = results_inventory(results_dir)
    root = inventory["results_dir"].resolve()
    images = [
        {"path": str(root / item.path), "name": item.path, "format": item.format}
        for item in inventory["items"]
        if item.kind == "image"
    ]
    first = images[0]["name"]
    attachments = []
    for item in inventory["items"]:
        if item.kind in ("tracks table", "QC report"):
            suffix = Path(item.path).suffix
            attachments.append(
                {
                    "path": str(root / item.path),
                    "mimetype": MIMETYPES.get(suffix, "application/octet-stream"),
                    "namespace": NS_TRACKS if item.kind == "tracks table" else NS_QC,
                    "description": item.description,
                    "attach_to": {"image": first},
                }
            )
    record = inventory["record"]
    raw = raw_location or settings.get("raw_data_url") or (record.get("config") or {}).get("raw_dir") or ""
    raw_pairs = [["raw data", str(raw)], ["dataset", inventory["dataset"]]]
    archive = inventory["archive"]
    if (archive / "checksums.sha256").is_file():
        raw_pairs.append(["raw checksums", f"{archive.name}/checksums.sha256 (lines raw/…)"])
    maps = [{"namespace": NS_RAW, "attach_to": {"image": first}, "pairs": raw_pairs}]
    if rembi_study is not None:
        maps.append(
            {
                "namespace": NS_REMBI,
                "attach_to": {"image": first},
                "pairs": [[k, v] for k, v in key_values(rembi_study)],
            }
        )
    return {
        "server": {
            "host": settings.get("host"),
            "port": settings.get("port"),
            "group": settings.get("group"),
            "secure": settings.get("secure"),
        },
        "target": {"project_id": settings.get("project_id"), "dataset_id": settings.get("dataset_id")},
        "images": images,
        "file_annotations": attachments,
        "map_annotations": maps,
    }


def plan_lines(plan: dict) -> list[str]:
    """The plan as the lines ``--dry-run`` prints."""
    server, target = plan["server"], plan["target"]
    lines = [
        f"OMERO server {server['host']}:{server['port']} group {server['group'] or '(default)'}; "
        f"dataset {target['dataset_id']}"
        + (f" in project {target['project_id']}" if target["project_id"] else ""),
    ]
    lines += [f"import image {i['name']} ({i['format']}): {i['path']}" for i in plan["images"]]
    lines += [
        f"attach file {Path(a['path']).name} ({a['mimetype']}, {a['namespace']}) to image {a['attach_to']['image']}"
        for a in plan["file_annotations"]
    ]
    for m in plan["map_annotations"]:
        lines.append(
            f"map annotation {m['namespace']} on image {m['attach_to']['image']}: {len(m['pairs'])} pairs"
        )
        lines += [f"  {k} = {v}" for k, v in m["pairs"][:8]]
        if len(m["pairs"]) > 8:
            lines.append(f"  … {len(m['pairs']) - 8} more")
    return lines


def omero_import(plan: dict, user: str, password: str, timeout_s: float = 10.0) -> dict:
    """Carry out ``plan`` on its server (unverified here: no OMERO server runs on this project's machines).

    Returns
    -------
    dict
        ``images`` ({name: [OMERO image ids]}), ``file_annotations`` and ``map_annotations`` (ids).
    """
    server, target = plan["server"], plan["target"]
    check_reachable(server["host"], server["port"], timeout_s)
    try:
        import ezomero
    except ImportError as exc:
        raise LlsmflowError(
            f"the OMERO import needs ezomero and omero-py ({exc}); expected `pip install 'llsmflow[omero]'` "
            "(omero-py needs ZeroC Ice: docs/fair.md)"
        ) from None
    conn = ezomero.connect(
        user=user,
        password=password,
        group=server["group"] or None,
        host=server["host"],
        port=int(server["port"]),
        secure=bool(server["secure"]),
    )
    if conn is None:
        raise LlsmflowError(
            f"the OMERO server at {server['host']}:{server['port']} refused the login of {user!r}; expected a "
            "valid user, password and group"
        )
    done = {"images": {}, "file_annotations": [], "map_annotations": []}
    try:
        for image in plan["images"]:
            ids = ezomero.ezimport(
                conn, image["path"], project=target["project_id"], dataset=target["dataset_id"]
            )
            if not ids:
                raise LlsmflowError(f"OMERO imported nothing from {image['path']}; expected image ids")
            done["images"][image["name"]] = list(ids)
        for annotation in plan["file_annotations"]:
            image_id = done["images"][annotation["attach_to"]["image"]][0]
            done["file_annotations"].append(
                ezomero.post_file_annotation(
                    conn,
                    annotation["path"],
                    ns=annotation["namespace"],
                    object_type="Image",
                    object_id=image_id,
                    description=annotation["description"],
                    mimetype=annotation["mimetype"],
                )
            )
        for annotation in plan["map_annotations"]:
            image_id = done["images"][annotation["attach_to"]["image"]][0]
            done["map_annotations"].append(
                ezomero.post_map_annotation(
                    conn, "Image", image_id, dict(annotation["pairs"]), ns=annotation["namespace"]
                )
            )
    finally:
        conn.close()
    return done
