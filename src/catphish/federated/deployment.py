"""Flower's deployment engine: the same ServerApp/ClientApp across machines, with a SuperLink at the hub and one
SuperNode per site (docs/federated.md shows the commands and the TLS certificate set-up).

The hub runs ``flower-superlink``; each site runs ``python -m catphish.federated.node`` (a checked wrapper around
``flower-supernode`` that names the site's prepared data); ``catphish train --mode federated --set
federated.engine=deployment`` then writes the run setup and submits the app to the SuperLink with ``flwr run``.
The ServerApp runs in the SuperLink's process tree on the hub and writes the run folder there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from catphish.artifacts import atomic_write_text, read_json
from catphish.errors import CatphishError
from catphish.federated.node import check_reachable, flower_env, flower_executable
from catphish.runtime import log

APP_NAME = "catphish-federated"
CONNECTION_NAME = "catphish"
FAILURE_NAME = "failure.json"
SUMMARY_NAME = "summary.json"
_APP_PYPROJECT = """\
# Written by catphish: the Flower App that `flwr run` submits to the SuperLink. Both components live in the
# installed catphish package, which every SuperNode and the SuperLink host must have installed.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "catphish federated baseline: the downstream classifier trained across sites"
license = "Apache-2.0"
dependencies = ["catphish"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "catphish"

[tool.flwr.app.components]
serverapp = "catphish.federated.server_app:app"
clientapp = "{clientapp}"

[tool.flwr.app.config]
setup-file = ""
"""


def write_flower_app(folder: Path, secure: bool = False) -> Path:
    """The Flower App folder (a pyproject.toml whose components point into the installed catphish)."""
    clientapp = "catphish.federated.secagg:secure_app" if secure else "catphish.federated.client_app:app"
    atomic_write_text(folder / "pyproject.toml", _APP_PYPROJECT.format(name=APP_NAME, clientapp=clientapp))
    return folder


def write_connection(flwr_home: Path, address: str, root_certificates: str = "") -> Path:
    """The Flower CLI's ``config.toml`` with one SuperLink connection named ``catphish``."""
    lines = ["[superlink]", f'default = "{CONNECTION_NAME}"', "", f"[superlink.{CONNECTION_NAME}]",
             f'address = "{address}"']
    if root_certificates:
        certificate = Path(root_certificates).expanduser().resolve()
        if not certificate.is_file():
            raise CatphishError(f"{root_certificates}: CA certificate file does not exist")
        lines.append(f'root-certificates = "{certificate}"')
    else:
        lines.append("insecure = true")
    return atomic_write_text(flwr_home / "config.toml", "\n".join(lines) + "\n")


def run_deployed(setup: Any, out: Path) -> dict[str, Any]:
    """Submit the run to the SuperLink named by ``federated.superlink`` and wait for the ServerApp to finish."""
    federated = setup.federated_config
    check_reachable(federated.superlink)
    flwr_home = (out / ".flwr").resolve()
    app_dir = write_flower_app(flwr_home / "app", secure=federated.secure_aggregation)
    write_connection(flwr_home, federated.superlink, federated.root_certificates)
    setup_file = (out / "setup.json").resolve()
    for stale in (FAILURE_NAME, SUMMARY_NAME):
        (out / stale).unlink(missing_ok=True)
    command = [flower_executable("flwr"), "run", str(app_dir), CONNECTION_NAME, "--run-config",
               f"setup-file='{setup_file}'", "--stream"]
    log.info("submitting the federated run to the SuperLink at %s", federated.superlink)
    completed = subprocess.run(command, env=flower_env(flwr_home), cwd=app_dir, check=False, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    (flwr_home / "flwr_run.log").write_text(completed.stdout or "")
    if (out / FAILURE_NAME).exists():
        raise CatphishError(str(read_json(out / FAILURE_NAME).get("error", "the federated run failed")))
    summary_path = out / SUMMARY_NAME
    if completed.returncode != 0 or not summary_path.exists():
        tail = "\n".join((completed.stdout or "").strip().splitlines()[-5:])
        raise CatphishError(f"the federated run on {federated.superlink} did not finish (flwr run exit code "
                            f"{completed.returncode}); last output:\n{tail}")
    return read_json(summary_path)
