"""``llsmflow export omero``: the import plan of a real run (the session's ``tiny_run``) and everything up to the
server call. No OMERO server runs here: the call itself is tested only for its failure against a closed port
and, where ezomero is not installed, for the line that says so once a server answers.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
import yaml

from llsmflow.cli import main
from llsmflow.errors import LlsmflowError
from llsmflow.fair.omero import NS_QC, NS_RAW, NS_REMBI, NS_TRACKS, credentials, omero_import, omero_plan
from llsmflow.fair.rembi import key_values, load_rembi
from tests.test_fair_bia import rembi  # noqa: F401  (the filled-in REMBI fixture)

pytest.importorskip("rembi_mifa")


def closed_port() -> int:
    """A localhost port on which nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config(tiny_run, rembi, tmp_path):  # noqa: F811
    """The run's own config with an omero: section and the rembi key, as a user would add them."""
    data = yaml.safe_load(tiny_run.config_path.read_text(encoding="utf-8"))
    data["omero"] = {
        "host": "127.0.0.1",
        "port": closed_port(),
        "group": "lab",
        "project_id": 3,
        "dataset_id": 51,
    }
    data["rembi"] = str(rembi)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, data


def test_plan_lists_the_archive_tables_report_and_rembi(tiny_run, config, rembi, capsys):  # noqa: F811
    results = tiny_run.run_dir / "results" / "tiny"
    path, data = config
    assert main(["export", "omero", str(results), "--configfile", str(path), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    settings = {
        **data["omero"],
        "secure": True,
        "user_env": "OMERO_USER",
        "pass_env": "OMERO_PASS",
        "login_file": None,
        "raw_data_url": None,
    }
    assert plan == omero_plan(results, settings, load_rembi(rembi))
    assert plan["target"] == {"project_id": 3, "dataset_id": 51}
    assert plan["server"] == {
        "host": "127.0.0.1",
        "port": data["omero"]["port"],
        "group": "lab",
        "secure": True,
    }
    assert plan["images"] == [
        {
            "path": str((results / "tiny.ome.zarr").resolve()),
            "name": "tiny.ome.zarr",
            "format": "OME-Zarr 0.5",
        }
    ]
    attached = {
        Path(a["path"]).relative_to(results.resolve()).as_posix(): a for a in plan["file_annotations"]
    }
    expected = {f"tracks/{p.name}" for p in (results / "tracks").glob("*.csv")} | {"qc/report.html"}
    assert set(attached) == expected and len(expected) >= 4
    assert all(a["namespace"] == (NS_QC if k.endswith(".html") else NS_TRACKS) for k, a in attached.items())
    assert attached["qc/report.html"]["mimetype"] == "text/html"
    maps = {m["namespace"]: m for m in plan["map_annotations"]}
    assert dict(maps[NS_RAW]["pairs"])["raw data"] == tiny_run.config["raw_dir"]
    assert maps[NS_REMBI]["pairs"] == [list(p) for p in key_values(load_rembi(rembi))]
    assert ["study.title", "Particle dynamics in a synthetic lattice light-sheet time-lapse"] in maps[
        NS_REMBI
    ]["pairs"]
    # the printed form names every import and attachment
    assert main(["export", "omero", str(results), "--configfile", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert (
        "import image tiny.ome.zarr (OME-Zarr 0.5)" in text and "attach file report.html (text/html" in text
    )


def test_closed_port_is_one_clear_line(tiny_run, config, capsys, monkeypatch):
    path, data = config
    monkeypatch.setenv("OMERO_USER", "facility")
    monkeypatch.setenv("OMERO_PASS", "not-a-real-password")
    results = tiny_run.run_dir / "results" / "tiny"
    assert main(["export", "omero", str(results), "--configfile", str(path)]) == 2
    port = data["omero"]["port"]
    assert capsys.readouterr().err == (
        f"llsmflow export: error: cannot reach the OMERO server at 127.0.0.1:{port} (Connection refused); "
        "expected a running server (check omero.host and omero.port, and the network)\n"
    )


def test_credentials_come_from_the_environment_or_a_private_file(tmp_path, monkeypatch):
    settings = {
        "user_env": "LLSMFLOW_TEST_OMERO_USER",
        "pass_env": "LLSMFLOW_TEST_OMERO_PASS",
        "login_file": None,
    }
    monkeypatch.delenv("LLSMFLOW_TEST_OMERO_USER", raising=False)
    with pytest.raises(
        LlsmflowError, match="LLSMFLOW_TEST_OMERO_USER and LLSMFLOW_TEST_OMERO_PASS are not both set"
    ):
        credentials(settings, "config.yaml")
    monkeypatch.setenv("LLSMFLOW_TEST_OMERO_USER", "u")
    monkeypatch.setenv("LLSMFLOW_TEST_OMERO_PASS", "p")
    assert credentials(settings, "config.yaml") == ("u", "p")
    login = tmp_path / "omero-login.yaml"
    login.write_text("user: facility\npassword: s3cret\n", encoding="utf-8")
    os.chmod(login, 0o644)
    with pytest.raises(LlsmflowError, match=r"mode 644 lets others read it; expected chmod 600"):
        credentials({**settings, "login_file": str(login)}, "config.yaml")
    os.chmod(login, 0o600)
    assert credentials({**settings, "login_file": str(login)}, "config.yaml") == ("facility", "s3cret")


def test_missing_host_is_one_line(tiny_run, tmp_path, capsys):
    results = tiny_run.run_dir / "results" / "tiny"
    assert main(["export", "omero", str(results), "--dry-run"]) == 2  # the recorded config has no omero.host
    assert capsys.readouterr().err == (
        f"llsmflow export: error: {results / 'provenance' / 'config.yaml'}: config key omero.host is not set; "
        "expected the OMERO server's host name (config/README.md, omero)\n"
    )


def test_a_listening_server_without_ezomero_says_what_to_install(tiny_run, config, rembi):  # noqa: F811
    """Up to the server call: the TCP check passes against a real listener, then the import needs ezomero."""
    try:
        import ezomero  # noqa: F401

        pytest.skip("ezomero is installed: the next step would talk to a real OMERO server")
    except ImportError:
        pass
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
    accepted.start()
    path, data = config
    data["omero"]["port"] = server.getsockname()[1]
    settings = {**data["omero"], "secure": True}
    plan = omero_plan(tiny_run.run_dir / "results" / "tiny", settings, load_rembi(rembi))
    with pytest.raises(LlsmflowError) as error:
        omero_import(plan, "u", "p", timeout_s=5)
    assert str(error.value).startswith("the OMERO import needs ezomero and omero-py")
    assert "pip install 'llsmflow[omero]'" in str(error.value)
    accepted.join(5)
    server.close()


@pytest.mark.parametrize("target", ["bia", "omero"])
def test_export_help_has_units_and_an_example(target):
    import subprocess
    import sys

    llsmflow = Path(sys.executable).parent / "llsmflow"
    result = subprocess.run(
        [str(llsmflow), "export", target, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "usage: llsmflow export" in result.stdout
    assert "example:" in result.stdout and f"llsmflow export {target} results/cells" in result.stdout
