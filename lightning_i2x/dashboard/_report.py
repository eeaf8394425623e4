"""``i2x report --interactive``: the dashboard as one self-contained HTML file that opens offline.

The page's script, style and the answers of every route it would ask (the overview, the
explanation, every prototype and its sprite, the class pages and the uncertain pairs' pages, up to
``MAX_CLASS_PAGES`` each, as many probe images as fit in ``max_bytes``) are inlined; a strict
Content-Security-Policy (hashes of the inline script and style, no network) is set in a meta tag.
Probe images past the cap are left out, and the page says so where one is asked for.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from pathlib import Path
from urllib.parse import urlencode

from werkzeug.test import Client

from .._core import write_bytes
from ..store import I2XRun
from ._app import SCRIPTS, DashboardApp, static_text

__all__ = ["build_interactive_report", "write_interactive_report", "DEFAULT_MAX_BYTES"]

DEFAULT_MAX_BYTES = 48 * 2**20
MAX_CLASS_PAGES = 100  # class pages, and pair pages of the uncertain pairs, carried by the file


def _key(path: str, params: dict) -> str:
    """The key the page looks an answer up by (``keyOf`` in app.js: sorted, form-encoded)."""
    return f"{path}?{urlencode(sorted(params.items()))}"


def _sha(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _one_script() -> str:
    """The page's modules as one inline module: each in import order, its imports and exports
    dropped (the names they share are then in one scope)."""
    parts = []
    for name in SCRIPTS:
        text = re.sub(r"^import \{[^}]*\} from \"\./[a-z]+\.js\";\n", "", static_text(name), flags=re.M)
        parts.append(re.sub(r"^export ", "", text, flags=re.M))
    return "\n".join(parts)


def build_interactive_report(run: I2XRun | str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The dashboard of one run as an HTML string; data past ``max_bytes`` is left out with a note."""
    path = Path(run.path if isinstance(run, I2XRun) else run)
    I2XRun.load(path)  # fails here, with the reason, when the directory is not a readable run
    app = DashboardApp(path, read_only=True)
    client = Client(app)
    name = next(iter(app.runs()))
    responses: dict[str, object] = {}
    images: dict[str, str] = {}
    size = 0

    def get(route: str, params: dict, binary: bool = False):
        nonlocal size
        r = client.get(route, query_string={"run": name, **params})
        if r.status_code != 200:
            return None
        if binary:
            uri = "data:image/png;base64," + base64.b64encode(r.data).decode("ascii")
            images[_key(route.lstrip("/"), {"run": name, **params})] = uri
            size += len(uri)
        else:
            responses[_key(route.lstrip("/"), {"run": name, **params})] = json.loads(r.data)
            size += len(r.data)
        return r

    ov = json.loads(get("/api/overview", {}).data)
    has_images = ov["image_shape"] is not None
    wanted: list[int] = []
    if ov["has_prototypes"]:
        for k in range(ov["num_prototypes"]):
            proto = json.loads(get("/api/prototype", {"k": k}).data)
            if has_images:
                get("/api/sprite.png", {"k": k}, binary=True)
            wanted += [p["image"] for p in proto["patches"]] + [h["image"] for h in proto["holders"][:8]]
    ex = json.loads(get("/api/explanation", {}).data)["explanation"]
    for c in range(min(len(ov["class_names"]), MAX_CLASS_PAGES)):
        get("/api/class", {"c": c})
    pairs = list(dict.fromkeys(tuple(p["classes"]) for u in (ex["uncertain"] if ex else []) for p in u["pairs"]))
    for a, b in pairs[:MAX_CLASS_PAGES]:
        get("/api/pair", {"a": a, "b": b})
    for view in (ov["twin"] or {}).get("views", []):
        get("/api/twin.png", {"view": view}, binary=True)
    order = list(dict.fromkeys(wanted + list(range(ov["num_probe"]))))
    included = 0
    for i in order:
        if size >= max_bytes:
            break
        get("/api/image", {"i": i})
        if has_images:
            get("/api/image.png", {"i": i}, binary=True)
        included += 1
    data = {"static": True, "config": {"token": None, "read_only": True, "marks": ["shortcut", "fine"], "runs": [name]},
            "responses": responses, "images": images,
            "left_out": {"images": ov["num_probe"] - included, "max_bytes": max_bytes}}
    script, style = _one_script(), static_text("style.css")
    csp = (f"default-src 'none'; script-src '{_sha(script)}'; style-src '{_sha(style)}'; img-src data: blob:; "
           "connect-src 'none'; base-uri 'none'; form-action 'none'")
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    title = f"I2X dashboard: {name}"
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{html.escape(title)}</title><style>{style}</style></head>",
        '<body><div id="app"></div>',
        f'<script type="application/json" id="i2x-data">{blob}</script>',
        f'<script type="module">{script}</script>',
        "</body></html>",
    ])


def write_interactive_report(run: I2XRun | str | os.PathLike, out: str | os.PathLike, **kw) -> Path:
    """Write ``build_interactive_report(run, **kw)`` atomically to ``out``; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, build_interactive_report(run, **kw).encode("utf-8"))
    return out
