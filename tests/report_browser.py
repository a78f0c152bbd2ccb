"""Open a Snakemake HTML report in headless Chromium and measure whether its figures load.

Snakemake 9 writes a single-file report: a React app whose results are embedded as JSON in
``<script id="results">var results = {...}</script>`` (each entry has ``mime_type`` and a
``data_uri``) and whose menu is ``var categories = {...}``. :func:`check_report_in_browser`
loads the file in headless Chromium, decodes every embedded image in the page (``new Image()``,
``img.decode()``), clicks through the app's menu to one image result so a real ``<img>`` of the
app renders, takes a screenshot and returns what it measured; the caller asserts on it.

Driver: the ``playwright`` package driving the system Chromium (``executable_path``; no
``playwright install``), or, when playwright is missing or cannot start, the Chrome DevTools
Protocol over ``--remote-debugging-port`` with a small standard-library WebSocket client.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
# Why ensure_chromium() last returned None (for the caller's pytest.skip).
unavailable_reason: str | None = None


# ------------------------------------------------------------------ chromium
def find_chromium() -> str | None:
    """The Chromium binary: $CTSEG_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    env = os.environ.get("CTSEG_CHROMIUM")
    if env and os.access(env, os.X_OK):
        return env
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(timeout: float = 1200) -> str | None:
    """Chromium's path, installing Debian's ``chromium`` with apt-get when missing and root.

    Returns None when it is missing and cannot be installed; ``unavailable_reason`` says why.
    """
    global unavailable_reason
    unavailable_reason = None
    path = find_chromium()
    if path:
        return path
    apt = shutil.which("apt-get")
    if apt is None:
        unavailable_reason = "chromium is not installed and apt-get is not available to install it"
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        unavailable_reason = "chromium is not installed and installing it with apt-get needs root"
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "chromium"]
    log = ""
    for cmds in ([install], [[apt, "update"], install]):  # retry after refreshing the lists
        for cmd in cmds:
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log = f"{' '.join(cmd)}: {exc}"
                break
            log = proc.stdout[-1500:] + proc.stderr[-1500:]
            if proc.returncode != 0:
                break
        path = find_chromium()
        if path:
            return path
    unavailable_reason = f"apt-get install chromium failed: {log.strip()[-800:]}"
    return None


def chromium_version(chromium: str) -> str:
    try:
        proc = subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip()


# ------------------------------------------------------------------ the report's embedded data
def _script_var(html_text: str, script_id: str, var: str) -> Any:
    m = re.search(rf'<script id="{script_id}">\s*var {var}\s*=\s*', html_text)
    if m is None:
        return None
    value, _ = json.JSONDecoder().raw_decode(html_text, m.end())
    return value


def embedded_results(html: Path) -> tuple[dict, dict]:
    """The report's ``results`` (path -> entry) and ``categories``, parsed from the HTML."""
    text = Path(html).read_text(encoding="utf-8", errors="replace")
    return _script_var(text, "results", "results") or {}, _script_var(
        text, "categories", "categories"
    ) or {}


def data_uri_size(data_uri: str) -> tuple[int, int] | None:
    """Pixel size (width, height) of a base64 raster data URI read with PIL; None for SVG/other."""
    head, _, payload = data_uri.partition(",")
    if not head.endswith(";base64") or "svg" in head:
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
            return im.size
    except Exception:
        return None


# ------------------------------------------------------------------ the in-page probe
# An async function run in the page: waits for the app, decodes every embedded image, then
# clicks Results menu -> category -> (subcategory) -> the eye button of an image result.
PROBE_JS = r"""
async (opts) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const waitFor = async (pred, ms) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      try { const v = pred(); if (v) return v; } catch (e) {}
      await sleep(50);
    }
    return null;
  };
  const out = { title: document.title };
  const root = document.querySelector("#app");
  out.app_rendered = !!(await waitFor(
    () => root && root.childElementCount > 0 && root.textContent.trim().length > 0, opts.timeoutMs));
  let res = null, cats = null;
  try { res = results; } catch (e) {}
  try { cats = categories; } catch (e) {}
  out.results_variable_found = !!res && typeof res === "object";
  out.categories_variable_found = !!cats && typeof cats === "object";
  res = res || {}; cats = cats || {};
  const entries = Object.entries(res);
  out.n_results = entries.length;
  const isImage = (p) => !!res[p] && String(res[p].mime_type || "").startsWith("image/");
  out.images = await Promise.all(entries.filter(([p]) => isImage(p)).map(async ([path, entry]) => {
    const rec = { path, mime_type: entry.mime_type, decoded: false, naturalWidth: 0, naturalHeight: 0, error: null };
    const img = new Image();
    try {
      img.src = entry.data_uri;
      await Promise.race([img.decode(),
        sleep(opts.timeoutMs).then(() => { throw new Error("decode timed out"); })]);
      rec.decoded = true;
    } catch (e) { rec.error = String((e && e.message) || e); }
    rec.naturalWidth = img.naturalWidth; rec.naturalHeight = img.naturalHeight;
    return rec;
  }));
  const text = root ? root.textContent : "";
  out.app_text_chars = text.length;
  out.app_text_head = root ? root.innerText.slice(0, 1500) : "";
  out.categories = Object.keys(cats);
  out.categories_in_dom = Object.fromEntries(out.categories.map((c) => [c, text.includes(c)]));
  const ls = document.querySelector("#loading-screen");
  out.loading_screen_hidden = !ls || getComputedStyle(ls).display === "none";

  const click = { category: null, subcategory: null, result_path: null, img_rendered: false,
                  naturalWidth: 0, naturalHeight: 0, displayWidth: 0, displayHeight: 0, error: null };
  out.clicked = click;
  try {
    const uriToPath = new Map(entries.filter(([p]) => isImage(p)).map(([p, e]) => [e.data_uri, p]));
    const byName = (a, b) => a.localeCompare(b);
    let target = null;
    for (const c of Object.keys(cats).sort(byName)) {
      for (const s of Object.keys(cats[c]).sort(byName)) {
        if ((cats[c][s] || []).some(isImage)) { target = [c, s]; break; }
      }
      if (target) break;
    }
    if (!target) throw new Error("no category holds an image result");
    [click.category, click.subcategory] = target;
    const link = (label) => Array.from(root.querySelectorAll("a")).find((a) => a.textContent.trim() === label);
    const catLabel = Object.keys(cats).length === 1 ? "Results" : click.category;
    const catLink = await waitFor(() => link(catLabel), opts.timeoutMs);
    if (!catLink) throw new Error(`no menu link "${catLabel}"`);
    catLink.click();
    if (Object.keys(cats[click.category]).length > 1) {
      const subLink = await waitFor(() => link(click.subcategory), opts.timeoutMs);
      if (!subLink) throw new Error(`no subcategory link "${click.subcategory}"`);
      subLink.click();
    }
    const rows = () => root.querySelectorAll("table tbody tr");
    if (!(await waitFor(() => rows().length > 0, opts.timeoutMs))) throw new Error("no results table");
    const shownImg = () => Array.from(document.querySelectorAll("img")).find((i) => uriToPath.has(i.getAttribute("src")));
    for (let i = 0; i < rows().length && !click.img_rendered; i++) {
      const eye = rows()[i].querySelector("[role=group] a");
      // images (and html/pdf) open in the app via href="#"; other results link to their data
      if (!eye || eye.getAttribute("href") !== "#") continue;
      eye.click();
      const img = await waitFor(shownImg, 3000);
      if (!img) continue;
      await waitFor(() => img.complete, opts.timeoutMs);
      try { await img.decode(); } catch (e) { click.error = "decode: " + String((e && e.message) || e); }
      click.result_path = uriToPath.get(img.getAttribute("src"));
      click.naturalWidth = img.naturalWidth; click.naturalHeight = img.naturalHeight;
      const box = img.getBoundingClientRect();
      click.displayWidth = box.width; click.displayHeight = box.height;
      click.img_rendered = img.complete && img.naturalWidth > 0;
    }
    if (!click.img_rendered && !click.error) throw new Error("no image result opened an <img> in the app");
  } catch (e) { click.error = String((e && e.message) || e); }
  return out;
}
"""


# ------------------------------------------------------------------ drivers
def _run_playwright(chromium: str, url: str, user_data: Path, shot: Path, timeout_ms: int) -> dict:
    from playwright.sync_api import sync_playwright

    page_errors: list[str] = []
    console_errors: list[str] = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(user_data),
            executable_path=chromium,
            headless=True,
            args=[f for f in CHROMIUM_FLAGS if f != "--headless"],  # playwright adds its own
            viewport=VIEWPORT,
        )
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(timeout_ms)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: console_errors.append(msg.text) if msg.type == "error" else None,
            )
            page.goto(url, wait_until="load", timeout=timeout_ms)
            probe = page.evaluate(PROBE_JS, {"timeoutMs": timeout_ms})
            page.wait_for_timeout(200)
            page.screenshot(path=str(shot))
        finally:
            ctx.close()
    probe["page_errors"] = page_errors
    probe["console_errors"] = console_errors
    return probe


class _WebSocket:
    """Just enough of RFC 6455 (client side, text frames) to talk to Chromium's DevTools."""

    def __init__(self, url: str, timeout: float):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("DevTools closed the WebSocket handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the WebSocket")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = (
            int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        ).to_bytes(n, "big")
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode("utf-8", errors="replace")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Cdp:
    def __init__(self, ws: _WebSocket, deadline: float):
        self.ws, self.deadline, self.next_id = ws, deadline, 0
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.events: list[str] = []

    def _event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        self.events.append(method)
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.page_errors.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console_errors.append(
                " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
            )

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while time.monotonic() < self.deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)
        raise TimeoutError(f"{method} timed out")

    def wait_event(self, name: str) -> None:
        while name not in self.events:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"no {name}")
            self._event(json.loads(self.ws.recv()))


def _run_cdp(chromium: str, url: str, user_data: Path, shot: Path, timeout_ms: int) -> dict:
    deadline = time.monotonic() + 3 * timeout_ms / 1000
    cmd = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={user_data}",
        "--remote-debugging-port=0",
        f"--window-size={VIEWPORT['width']},{VIEWPORT['height']}",
        "about:blank",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ws = None
    try:
        port_file = user_data / "DevToolsActivePort"
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open DevTools (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        ws = _WebSocket(page["webSocketDebuggerUrl"], timeout=timeout_ms / 1000)
        cdp = _Cdp(ws, deadline)
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        cdp.events.clear()
        cdp.call("Page.navigate", url=url)
        cdp.wait_event("Page.loadEventFired")
        res = cdp.call(
            "Runtime.evaluate",
            expression=f"({PROBE_JS})({json.dumps({'timeoutMs': timeout_ms})})",
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"probe failed: {res['exceptionDetails']}")
        probe = res["result"]["value"]
        time.sleep(0.2)
        png = cdp.call("Page.captureScreenshot", format="png")["data"]
        shot.write_bytes(base64.b64decode(png))
        probe["page_errors"] = cdp.page_errors
        probe["console_errors"] = cdp.console_errors
        return probe
    finally:
        if ws is not None:
            ws.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ the check
def check_report_in_browser(
    html: Path,
    out_dir: Path | None = None,
    chromium: str | None = None,
    driver: str = "auto",
    timeout_s: float = 30,
) -> dict:
    """Open ``html`` in headless Chromium and return what loaded.

    Keys: ``n_results``/``n_images`` (embedded, parsed from the file), ``images`` (per image:
    path, decoded, naturalWidth/naturalHeight in the browser, ``embedded_size`` read with PIL),
    ``all_images_decoded``, ``app_rendered``, ``title``, ``categories`` and
    ``categories_in_dom``, ``clicked`` (the image opened through the app's menu and its
    ``<img>`` size), ``page_errors``, ``console_errors``, ``screenshot`` (PNG path), ``driver``.
    ``driver`` is "auto" (playwright, else DevTools), "playwright" or "cdp".
    """
    t0 = time.monotonic()
    html = Path(html).resolve()
    chromium = chromium or ensure_chromium()
    if chromium is None:
        raise RuntimeError(f"no chromium: {unavailable_reason}")
    results, categories = embedded_results(html)
    out_dir = (
        Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="report-browser-"))
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / f"{html.stem}.png"
    timeout_ms = int(timeout_s * 1000)

    notes: list[str] = []
    probe = None
    used = None
    order = {"auto": ("playwright", "cdp"), "playwright": ("playwright",), "cdp": ("cdp",)}[driver]
    for name in order:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as user_data:
            try:
                run = _run_playwright if name == "playwright" else _run_cdp
                probe = run(chromium, html.as_uri(), Path(user_data), shot, timeout_ms)
                used = name
                break
            except Exception as exc:  # noqa: BLE001 - fall back to the next driver, say why
                notes.append(f"{name}: {type(exc).__name__}: {exc}"[:1000])
    if probe is None:
        raise RuntimeError("headless chromium could not open the report: " + " | ".join(notes))

    sizes = {p: data_uri_size(e.get("data_uri", "")) for p, e in results.items()}
    for rec in probe.get("images", []):
        size = sizes.get(rec["path"])
        rec["embedded_size"] = list(size) if size else None
    images = probe.get("images", [])
    n_images = sum(str(e.get("mime_type", "")).startswith("image/") for e in results.values())
    return {
        **probe,
        "report": str(html),
        "driver": used,
        "driver_notes": notes,
        "chromium": chromium,
        "chromium_version": chromium_version(chromium),
        "n_results_embedded": len(results),
        "n_images": n_images,
        "n_images_in_page": len(images),
        "all_images_decoded": len(images) == n_images
        and all(r["decoded"] and r["naturalWidth"] > 0 and r["naturalHeight"] > 0 for r in images),
        "categories_embedded": list(categories),
        "screenshot": str(shot) if shot.is_file() else None,
        "seconds": round(time.monotonic() - t0, 2),
    }


def assert_report_loads(html: Path, out_dir: Path | None = None) -> dict:
    """Assert the report opens with every embedded image decoded at its embedded pixel size,
    the app rendered and an image opened through its menu; returns the measurements."""
    r = check_report_in_browser(html, out_dir=out_dir)
    summary = json.dumps({k: v for k, v in r.items() if k != "app_text_head"}, indent=1)[:6000]
    assert r["title"] == "Snakemake Report", summary
    assert r["app_rendered"] and r["loading_screen_hidden"], summary
    assert r["results_variable_found"] and r["n_results"] == r["n_results_embedded"] > 0, summary
    assert r["n_images"] > 0 and r["n_images_in_page"] == r["n_images"], summary
    for rec in r["images"]:
        assert rec["decoded"], (rec, summary)
        assert rec["naturalWidth"] > 0 and rec["naturalHeight"] > 0, (rec, summary)
        if rec["embedded_size"] is not None:
            assert [rec["naturalWidth"], rec["naturalHeight"]] == rec["embedded_size"], rec
    assert r["all_images_decoded"], summary
    if len(r["categories"]) > 1:  # a single category shows as "Results" in the menu
        assert all(r["categories_in_dom"].values()), summary
    assert r["clicked"]["img_rendered"] and r["clicked"]["error"] is None, summary
    assert r["clicked"]["naturalWidth"] > 0 and r["clicked"]["displayWidth"] > 0, summary
    assert not r["page_errors"], summary
    assert r["screenshot"] and Path(r["screenshot"]).stat().st_size > 1000, summary
    return r
