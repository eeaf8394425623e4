"""The dashboard's WSGI application (werkzeug): the page, its scripts and the JSON/PNG routes.

Every URL the page uses is relative, so the same application serves ``i2x serve`` at ``/`` and the
TensorBoard tab under ``data/plugin/i2x/``. Safety: only the runs found under the served directory,
only the files a run's manifest lists (resolved inside the run directory), a Content-Type and
``X-Content-Type-Options: nosniff`` on every response and a strict Content-Security-Policy on HTML,
writes (the marks) only with the server's token and never with ``read_only``.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import os
import secrets
import threading
import time
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ..errors import I2XRunError
from ..store import MARK_VALUES
from . import _compare, _data, _figures
from ._runs import RunCache, find_runs

__all__ = ["DashboardApp", "CSP", "STATIC_FILES", "SCRIPTS"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'")
STATIC_FILES = {"app.js": "text/javascript", "draw.js": "text/javascript", "pages.js": "text/javascript", "style.css": "text/css",
                "tb.js": "text/javascript"}
SCRIPTS = ("draw.js", "pages.js", "app.js")  # the page's modules, each after those it imports
TOKEN_HEADER = "X-I2X-Token"
# the routes, the same for every app (compiled once: a fresh app answers its first view sooner)
URL_MAP = Map([
    Rule("/", endpoint="index"),
    Rule("/index.html", endpoint="index"),
    Rule("/index.js", endpoint="tb_entry"),
    Rule("/static/<name>", endpoint="static"),
    Rule("/api/config", endpoint="config"),
    Rule("/api/runs", endpoint="runs"),
    Rule("/api/overview", endpoint="overview"),
    Rule("/api/explanation", endpoint="explanation"),
    Rule("/api/prototype", endpoint="prototype"),
    Rule("/api/class", endpoint="class_page"),
    Rule("/api/pair", endpoint="pair_page"),
    Rule("/api/compare", endpoint="compare"),
    Rule("/api/sprite.png", endpoint="sprite"),
    Rule("/api/image", endpoint="image"),
    Rule("/api/image.png", endpoint="image_png"),
    Rule("/api/twin.png", endpoint="twin_png"),
    Rule("/api/marks", endpoint="marks", methods=["GET", "POST"]),
    Rule("/api/file", endpoint="file"),
], strict_slashes=False)


def static_text(name: str) -> str:
    """A file of the page (``index.html``, ``app.js``, ``style.css``, ``tb.js``), from the package data."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


class DashboardApp:
    """The dashboard over every run under ``root`` (a run directory or a log directory).

    read_only: refuse every write (the marks). token: the secret a write must send in the
    ``X-I2X-Token`` header (default: a fresh random one; the page reads it from ``api/config``).
    allowed_hosts: the host names a request's ``Host`` may name (``i2x serve`` on a loopback
    address allows only loopback names, which stops DNS rebinding); None: any.
    rescan_s: how long the list of runs is reused before the directory is walked again.
    """

    def __init__(self, root: str | os.PathLike, *, read_only: bool = False, token: str | None = None,
                 allowed_hosts: Iterable[str] | None = None, rescan_s: float = 5.0):
        self.root = Path(root)
        self.read_only = bool(read_only)
        self.token = token or secrets.token_urlsafe(24)
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.rescan_s = rescan_s
        self._runs: dict[str, Path] = {}
        self._scanned = -float("inf")
        self._scan_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.cache = RunCache()
        self.url_map = URL_MAP

    # -- WSGI ------------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        return self.wsgi_app(environ, start_response)

    @Request.application
    def wsgi_app(self, request: Request) -> Response:
        try:
            self._check_host(request)
            endpoint, args = self.url_map.bind_to_environ(request.environ).match()
            if request.method not in ("GET", "HEAD") and endpoint != "marks":
                raise MethodNotAllowed(["GET"])
            response = getattr(self, f"on_{endpoint}")(request, **args)
        except HTTPException as e:
            response = self._json({"error": e.description or e.name}, e.code)
        except LookupError as e:
            response = self._json({"error": str(e.args[0] if e.args else e)}, 404)
        except I2XRunError as e:
            response = self._json({"error": str(e)}, 503)
        return self._secure(response)

    def _check_host(self, request: Request) -> None:
        if self.allowed_hosts is None:
            return
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        host = host.strip("[]").lower()
        if host not in self.allowed_hosts:
            raise BadRequest(f"host {request.host!r} is not served here (i2x serve answers loopback names only)")

    @staticmethod
    def _secure(response: Response) -> Response:
        h = response.headers
        if "Content-Type" not in h:
            h["Content-Type"] = "application/octet-stream"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        h.setdefault("Cache-Control", "no-store")
        if response.mimetype == "text/html":
            h["Content-Security-Policy"] = CSP
            h["X-Frame-Options"] = "SAMEORIGIN"
        return response

    @staticmethod
    def _json(obj, status: int = 200) -> Response:
        return Response(json.dumps(obj, allow_nan=False, separators=(",", ":")), status=status, mimetype="application/json")

    # -- runs ------------------------------------------------------------------------------------
    def runs(self) -> dict[str, Path]:
        """{name: directory} of the runs under the root (walked again after ``rescan_s``)."""
        with self._scan_lock:
            if time.monotonic() - self._scanned > self.rescan_s:
                self._runs = find_runs(self.root)
                self._scanned = time.monotonic()
            return dict(self._runs)

    def _snapshot(self, request: Request, key: str = "run"):
        name = request.args.get(key)
        runs = self.runs()
        if name is None and len(runs) == 1:
            name = next(iter(runs))
        if name not in runs:
            raise NotFound(f"no run {name!r} here; the runs are {sorted(runs)}")
        return name, self.cache.get(runs[name])

    @staticmethod
    def _int(request: Request, key: str) -> int:
        value = request.args.get(key, "")
        if not value.isdigit() or len(value) > 9:
            raise BadRequest(f"{key} must be a non-negative integer, got {value!r}")
        return int(value)

    # -- routes ----------------------------------------------------------------------------------
    def on_index(self, request: Request) -> Response:
        return Response(static_text("index.html"), mimetype="text/html")

    def on_tb_entry(self, request: Request) -> Response:
        return Response(static_text("tb.js"), mimetype="text/javascript")

    def on_static(self, request: Request, name: str) -> Response:
        if name not in STATIC_FILES:
            raise NotFound(f"no static file {name!r}")
        return Response(static_text(name), mimetype=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    def on_config(self, request: Request) -> Response:
        return self._json({"token": None if self.read_only else self.token, "read_only": self.read_only, "marks": list(MARK_VALUES),
                           "runs": sorted(self.runs())})

    def on_runs(self, request: Request) -> Response:
        return self._json({"runs": sorted(self.runs())})

    def on_overview(self, request: Request) -> Response:
        name, snap = self._snapshot(request)
        return self._json(_data.overview(snap, name))

    def on_explanation(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        return self._json(_data.explanation(snap))

    def on_prototype(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        return self._json(_data.prototype(snap, self._int(request, "k")))

    def on_class_page(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        return self._json(_figures.class_page(snap, self._int(request, "c")))

    def on_pair_page(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        return self._json(_figures.pair_page(snap, self._int(request, "a"), self._int(request, "b")))

    def on_compare(self, request: Request) -> Response:
        """Run ``run`` at checkpoint ``t`` next to run ``other`` (default: the same run) at ``u``."""
        _, a = self._snapshot(request)
        _, b = self._snapshot(request, "other") if "other" in request.args else (None, a)
        why = _compare.probe_mismatch(a, b)
        if why is not None:
            raise BadRequest(f"cannot set these runs side by side: {why}")
        return self._json(_compare.compare(a, self._int(request, "t"), b, self._int(request, "u")))

    def on_sprite(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        return Response(_data.sprite_png(snap, self._int(request, "k")), mimetype="image/png")

    def on_image(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        return self._json(_data.image(snap, self._int(request, "i")))

    def on_image_png(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        return Response(_data.image_png(snap, self._int(request, "i")), mimetype="image/png")

    def on_twin_png(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        return Response(_data.twin_png(snap, request.args.get("view", "")), mimetype="image/png")

    def on_marks(self, request: Request) -> Response:
        _, snap = self._snapshot(request)
        if request.method == "GET":
            return self._json({"marks": _data.marks(snap)})
        if self.read_only:
            raise Forbidden("this dashboard is read-only (--read-only): marks are not written")
        sent = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(sent.encode(), self.token.encode()):
            raise Forbidden(f"a write needs this server's token in the {TOKEN_HEADER} header")
        if request.mimetype != "application/json":
            raise BadRequest("send the mark as application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("prototype"), int) or isinstance(body.get("prototype"), bool):
            raise BadRequest('expected {"prototype": id, "mark": "shortcut" | "fine" | null}')
        mark = body.get("mark")
        if mark is not None and mark not in MARK_VALUES:
            raise BadRequest(f"a mark is one of {list(MARK_VALUES)} or null, got {mark!r}")
        if snap.run.prototypes is None or not 0 <= body["prototype"] < snap.run.num_prototypes:
            raise NotFound(f"no prototype {body['prototype']} in this run")
        with self._write_lock:
            marks = snap.run.set_mark(body["prototype"], mark)
        return self._json({"marks": {str(k): v for k, v in marks.items()}})

    def on_file(self, request: Request) -> Response:
        """A file of the run, only one its manifest lists (or the manifest and probe), and only
        when it resolves to a regular file inside the run directory."""
        _, snap = self._snapshot(request)
        rel = request.args.get("path", "")
        if rel not in _data.served_files(snap):
            raise NotFound(f"{rel!r} is not a file of this run")
        base = snap.run.path.resolve()
        target = (snap.run.path / rel).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            raise NotFound(f"{rel!r} is not a file of this run")
        mime = "application/json" if target.suffix == ".json" else (mimetypes.guess_type(target.name)[0] or "application/octet-stream")
        return Response(target.read_bytes(), mimetype=mime,
                        headers={"Content-Disposition": f'attachment; filename="{target.name}"'})
