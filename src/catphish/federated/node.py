"""Start a site's Flower SuperNode for a deployed federated study: ``python -m catphish.federated.node``.

A checked wrapper around ``flower-supernode``: it refuses a missing data folder or site, and a SuperLink it cannot
reach (one clear line, exit code 2) before Flower starts; then it runs the SuperNode with bounded reconnection
(``--max-retries``/``--max-wait-time``) so a lost hub ends the node instead of retrying for ever. It imports no
torch, so it answers at once; the ClientApp processes the SuperNode starts import the full catphish.

    python -m catphish.federated.node --superlink hub.example.org:8000 --data /data/prepared --site TCGA \\
        --root-certificates certificates/ca.crt
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path

from catphish.errors import CatphishError


def flower_executable(name: str) -> str:
    """A Flower console script from this Python's environment (PATH may not include the venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise CatphishError(f"'{name}' is not installed; install Flower with pip install 'flwr[simulation]'")
    return found


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment for Flower processes: venv scripts on PATH, offline, no runtime dependency installation."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CatphishError(f"SuperLink address '{address}' must be host:port (e.g. 10.0.0.5:8000)")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout_s: float = 5.0, what: str = "SuperLink") -> None:
    """A plain TCP connect, so an unreachable SuperLink is one clear message instead of endless retries."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CatphishError(f"cannot reach the {what} at {address} ({reason}); is it running, is the address right, "
                            "and is the port open in the firewall?") from None


def supernode_command(superlink: str, data_dir: Path, site: str | None, *, root_certificates: str | None,
                      port: int, max_retries: int, max_wait_s: float, name: str | None = None,
                      trainer: str | None = None) -> list[str]:
    """The ``flower-supernode`` command line for one site (node config names the site's data)."""
    node_config = [f"data-dir='{data_dir.resolve()}'"]
    if site:
        node_config.append(f"site='{site}'")
    if name:
        node_config.append(f"name='{name}'")
    if trainer:
        node_config.append(f"trainer='{trainer}'")
    command = [flower_executable("flower-supernode"), "--superlink", superlink, "--port", str(port),
               "--max-retries", str(max_retries), "--max-wait-time", str(max_wait_s),
               "--node-config", " ".join(node_config)]
    if root_certificates:
        if not Path(root_certificates).is_file():
            raise CatphishError(f"{root_certificates}: CA certificate file does not exist")
        command += ["--root-certificates", str(Path(root_certificates).resolve())]
    else:
        command.append("--insecure")
    return command


def check_site_data(data_dir: Path, site: str | None) -> None:
    if not data_dir.is_dir():
        raise CatphishError(f"{data_dir}: prepared data folder does not exist (run `catphish data prepare` first)")
    if site and not (data_dir / site).is_dir():
        present = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
        raise CatphishError(f"{data_dir}: has no site '{site}' (present: {', '.join(present) or 'none'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catphish.federated.node", description=__doc__.splitlines()[0])
    parser.add_argument("--superlink", required=True, help="the hub's SuperLink address, host:port")
    parser.add_argument("--data", required=True, type=Path, help="this site's prepared data folder")
    parser.add_argument("--site", help="the site's folder inside --data (default: every subject in --data)")
    parser.add_argument("--name", help="the client's name in the run (default: the site)")
    parser.add_argument("--root-certificates", help="CA certificate (PEM) that signed the SuperLink's certificate")
    parser.add_argument("--insecure", action="store_true", help="no TLS (testing on one machine only)")
    parser.add_argument("--port", type=int, default=9094, help="local port of the SuperNode's ClientApp API")
    parser.add_argument("--max-retries", type=int, default=10)
    parser.add_argument("--max-wait-time", type=float, default=120.0)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if not args.insecure and not args.root_certificates:
            raise CatphishError("give --root-certificates ca.crt (TLS) or, for a test on one machine, --insecure")
        check_site_data(args.data, args.site)
        check_reachable(args.superlink)
        command = supernode_command(args.superlink, args.data, args.site, root_certificates=args.root_certificates,
                                    port=args.port, max_retries=args.max_retries, max_wait_s=args.max_wait_time,
                                    name=args.name, trainer=args.trainer)
    except CatphishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.execve(command[0], command, flower_env())  # the SuperNode replaces this process (signals reach it directly)
    return 0


if __name__ == "__main__":
    sys.exit(main())
