"""``i2x serve``: the dashboard on a local werkzeug server."""

from __future__ import annotations

import ipaddress
import os
import sys

from ._app import DashboardApp
from ._runs import find_runs

__all__ = ["serve", "is_loopback", "LOOPBACK_NAMES"]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(directory: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 6007, read_only: bool = False,
          ready=None) -> None:
    """Serve the dashboard of every run under ``directory`` until interrupted (Ctrl-C).

    Binds ``127.0.0.1`` unless told otherwise, and then says so: every run under the directory is
    readable by anyone who can reach the address. ``port`` 0 picks a free port. ``ready(url)`` is
    called once the server listens (default: print the address)."""
    from werkzeug.serving import make_server

    runs = find_runs(directory)
    local = is_loopback(host)
    if not local:
        print(f"i2x serve: listening on {host}, not only on this machine: anyone who can reach it reads every run under "
              f"{directory}{' (read-only)' if read_only else ' and can mark prototypes (use --read-only to refuse)'}", file=sys.stderr)
    hosts = {*LOOPBACK_NAMES, host.strip("[]")} if local else None
    app = DashboardApp(directory, read_only=read_only, allowed_hosts=hosts)
    server = make_server(host, port, app, threaded=True)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/"
    if ready is None:
        print(f"i2x dashboard: {url}  ({len(runs)} run{'s' if len(runs) != 1 else ''} under {directory}"
              f"{', read-only' if read_only else ''}; Ctrl-C stops it)", flush=True)
    else:
        ready(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
