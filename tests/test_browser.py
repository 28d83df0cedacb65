"""Headless-Chromium checks of the built site, as a reader sees it.

For every page of the table of contents, served from 127.0.0.1: no JavaScript error or console
error, every formula typeset by the (vendored) MathJax and no raw ``$$`` / ``\\(`` left in the
text, every image loaded, every same-site link answering HTTP 200, and no request leaving
localhost (all requests go through the DevTools ``Fetch`` domain; anything else is failed and
reported). One screenshot per page goes to ``<build>/screenshots/``. A chapter is also opened
from disk (``file://``) to check that MathJax's relative path works without a server.

The book is built once per session by the ``built_book`` fixture (tests/conftest.py), or taken
from ``$ANNEALVI_BUILT_HTML``. Needs Debian's ``chromium`` (``.ci/run`` installs it) and the
``websocket-client`` package (dev extra); skipped with a message otherwise.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
PAGE_TIMEOUT = 60.0   # seconds for one page to load and typeset (2 busy cores)


def _toc_pages() -> list[str]:
    """Every page of _toc.yml, as a path relative to the HTML root (``notebooks/01_x.html``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc.get("parts", toc.get("chapters", [])))
    return [f"{Path(f).with_suffix('').as_posix()}.html" for f in files]


PAGES = _toc_pages()


# ------------------------------------------------------------------------------------------------
# a static server on 127.0.0.1 and a minimal DevTools-protocol client
# ------------------------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a tab closed while a response was being written: not a site error, keep output clean
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class CDP:
    """Minimal Chrome DevTools Protocol client over one websocket (flattened sessions).

    Network policy: with ``Fetch.enable`` every request of the page pauses here; requests to
    ``allowed`` origins continue, all others fail and are recorded in ``blocked``.
    """

    def __init__(self, ws_url: str, allowed: tuple[str, ...]):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=PAGE_TIMEOUT, suppress_origin=True)
        self.allowed = allowed
        self.next_id = 0
        self.events: list[dict] = []
        self.blocked: list[str] = []

    def close(self):
        self.ws.close()

    def _post(self, method, params=None, session=None) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        return self.next_id

    def _handle(self, msg: dict) -> None:
        if msg.get("method") == "Fetch.requestPaused":
            p, session = msg["params"], msg.get("sessionId")
            url = p["request"]["url"]
            if url.startswith(self.allowed):
                self._post("Fetch.continueRequest", {"requestId": p["requestId"]}, session)
            else:
                self.blocked.append(url)
                self._post("Fetch.failRequest", {"requestId": p["requestId"],
                                                 "errorReason": "BlockedByClient"}, session)
        elif "method" in msg:
            self.events.append(msg)

    def call(self, method, params=None, session=None, timeout=PAGE_TIMEOUT) -> dict:
        """Send a command and wait for its result, handling events meanwhile."""
        mid = self._post(method, params, session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._handle(msg)
        raise TimeoutError(method)

    def wait_event(self, method, session=None, timeout=PAGE_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, ev in enumerate(self.events):
                if ev["method"] == method and ev.get("sessionId") == session:
                    return self.events.pop(i)
            self._handle(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def evaluate(self, expression: str, session: str):
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True}, session)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")


@pytest.fixture(scope="module")
def site(built_book):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium "
                    "(apt-get install chromium) to run the browser checks")
    pytest.importorskip("websocket", reason="websocket-client (dev extra) is not installed")
    assert built_book.returncode == 0, built_book.log
    html = built_book.html
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield html, base
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(site):
    html, base = site
    profile = tempfile.mkdtemp(prefix="annealvi-chromium-")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-extensions",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
           f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            shutil.rmtree(profile, ignore_errors=True)
            pytest.fail(f"chromium did not start (exit {proc.poll()})")
        time.sleep(0.1)
    port, path = port_file.read_text().splitlines()[:2]
    file_root = html.as_uri().rstrip("/") + "/"
    cdp = CDP(f"ws://127.0.0.1:{port}{path}", allowed=(base, file_root, "data:", "blob:"))
    try:
        yield cdp
    finally:
        cdp.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


# everything the checks need from the page, collected in one evaluation once MathJax is done
_INSPECT = r"""
(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'MJX-CONTAINER']);
  let text = '';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    let p = n.parentElement, hidden = false;
    while (p) { if (skip.has(p.tagName)) { hidden = true; break; } p = p.parentElement; }
    if (!hidden) text += n.nodeValue + ' ';
  }
  const math = [...document.querySelectorAll('.math')];
  return {
    title: document.title,
    mathjax: !!(window.MathJax && MathJax.version),
    mathjaxVersion: window.MathJax ? (MathJax.version || null) : null,
    nMath: math.length,
    nUntypeset: math.filter(m => !m.querySelector('mjx-container')).length,
    nContainers: document.querySelectorAll('mjx-container').length,
    rawDollars: text.includes('$$'),
    rawParens: text.includes('\\(') || text.includes('\\['),
    // what a reader catches: Markdown tables printed as text, unrendered $math$, glue roles or
    // unresolved references left in the text
    pipeRows: (text.match(/(\|[^|\n]{1,120}){3,}\||\|\s*[-:\u2014\u2013]{3,}\s*\|/g) || []).slice(0, 3),
    rawInline: (text.match(/\$[^$\s][^$\n]{0,80}\$/g) || []).slice(0, 3),
    glueLeft: text.includes('{glue'),
    unresolved: (text.match(/\?\?/g) || []).length,
    brokenImages: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    nImages: imgs.length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ...geometry(),
  };
})()
"""

# layout checks, also run alone after a viewport or colour-scheme change
_GEOMETRY = r"""
function geometry() {
  const article = document.querySelector('.bd-article') || document.body;
  const col = article.clientWidth;
  const wide = [...article.querySelectorAll('mjx-container[display="true"], table')]
      .filter(e => e.offsetParent !== null && e.scrollWidth > col + 1)
      .map(e => `${e.tagName.toLowerCase()} ${e.scrollWidth}px: ${(e.textContent || '').slice(0, 60)}`);
  const imgs = [...article.querySelectorAll('img')].filter(i => i.clientWidth > 0);
  const soft = imgs.filter(i => i.naturalWidth < 2 * i.clientWidth - 1)
      .map(i => `${i.src.split('/').pop()} ${i.naturalWidth}px shown at ${i.clientWidth}px`);
  const lum = c => { const m = c.match(/[\d.]+/g); if (!m) return null;
      const [r, g, b, a] = m.map(Number); if (a === 0) return null;
      return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; };
  const bodyLum = lum(getComputedStyle(document.body).backgroundColor);
  const invisible = imgs.filter(i => {
      // a figure with transparent parts needs a light backing on a dark page
      const c = document.createElement('canvas');
      c.width = Math.min(64, i.naturalWidth); c.height = Math.min(64, i.naturalHeight);
      const ctx = c.getContext('2d');
      let d;
      try { ctx.drawImage(i, 0, 0, c.width, c.height);
            d = ctx.getImageData(0, 0, c.width, c.height).data; }
      catch (e) { return false; }   // file:// pages taint the canvas: not checked there
      let clear = 0; for (let k = 3; k < d.length; k += 4) if (d[k] < 250) clear++;
      if (clear < 0.05 * d.length / 4) return false;       // opaque figure: always visible
      let p = i, back = null;
      while (p && back === null) { back = lum(getComputedStyle(p).backgroundColor); p = p.parentElement; }
      return (back === null ? bodyLum : back) < 0.5;
  }).map(i => i.src.split('/').pop());
  // inline formulas cut at the column's edge (a display formula or table scrolls instead)
  const right = article.getBoundingClientRect().right;
  const clipped = [...article.querySelectorAll('mjx-container:not([display="true"])')]
      .filter(e => e.offsetParent !== null && !e.closest('table, mjx-container[display="true"]')
                   && e.getBoundingClientRect().right > right + 1)
      .map(e => `${Math.round(e.getBoundingClientRect().width)}px: ${(e.textContent || '').slice(0, 50)}`);
  // table cells whose words are split inside over two lines (a number read as two numbers);
  // a line break after a hyphen between two words is ordinary typesetting
  const splitCells = [];
  for (const cell of article.querySelectorAll('td, th')) {
    for (const word of (cell.textContent || '').trim().split(/[\s\-\u2010-\u2013]+/)) {
      if (!word || word.length < 2) continue;
      const r = document.createRange();
      const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const k = n.nodeValue.indexOf(word);
        if (k < 0) continue;
        r.setStart(n, k); r.setEnd(n, k + word.length);
        const tops = new Set([...r.getClientRects()].map(b => Math.round(b.top)));
        if (tops.size > 1) splitCells.push(word);
        break;
      }
    }
  }
  // multi-panel figures keep a readable width on a phone (they scroll sideways in their box)
  const narrowWide = [...article.querySelectorAll('figure.wide-figure img')]
      .filter(i => i.clientWidth > 0 && i.clientWidth < 600)
      .map(i => `${i.src.split('/').pop()} at ${i.clientWidth}px`);
  return {columnWidth: col, viewportWidth: document.documentElement.clientWidth,
          pageWidth: document.documentElement.scrollWidth, wide, soft, invisible, clipped,
          narrowWide, splitCells: splitCells.slice(0, 5),
          bodyLum, theme: document.documentElement.dataset.theme || null,
          hiddenImgs: [...article.querySelectorAll('img')]
              .filter(i => i.naturalWidth > 0 && i.clientWidth === 0).map(i => i.src)};
}
"""
_INSPECT = _GEOMETRY + _INSPECT


def _open(cdp: CDP, url: str, screenshot: Path | None = None, width: int = 1400,
          mobile: bool = False, dark: bool = False):
    """Load ``url`` in a fresh tab (viewport ``width`` CSS px, optionally as a phone and in dark
    mode); returns (page info, page errors, blocked requests)."""
    target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        cdp.blocked.clear()
        cdp.events.clear()
        for domain in ("Page", "Runtime", "Log"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": mobile},
                 session)
        cdp.call("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]}, session)
        cdp.call("Page.navigate", {"url": url}, session)
        cdp.wait_event("Page.loadEventFired", session)
        info = cdp.evaluate(_INSPECT, session)
        if screenshot is not None:
            # the whole page (capped), not only the first screen
            size = cdp.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            cdp.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": int(min(size["height"], 12000)),
                      "deviceScaleFactor": 1, "mobile": mobile}, session)
            shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        # drain events that arrived meanwhile (e.g. late console errors)
        cdp.evaluate("new Promise(r => setTimeout(() => r(true), 200))", session)
        errors = []
        for ev in cdp.events:
            if ev.get("sessionId") != session:
                continue
            p = ev["params"]
            if ev["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif ev["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                errors.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                           for a in p["args"]))
            elif ev["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                e = p["entry"]
                if e.get("url", "").endswith("/favicon.ico"):
                    continue   # the browser asks for it by itself; the site declares no icon
                errors.append(f"log: {e['text']} {e.get('url', '')}")
        return info, errors, list(cdp.blocked)
    finally:
        cdp.call("Target.closeTarget", {"targetId": target})


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("page", PAGES)
def test_page_in_browser(site, browser, page):
    html, base = site
    assert (html / page).exists(), f"{page} missing from the build"
    shot = html.parent / "screenshots" / (page.replace("/", "__").removesuffix(".html") + ".png")
    info, errors, blocked = _open(browser, base + page, screenshot=shot)
    assert not blocked, f"{page}: requests leaving localhost: {blocked}"
    assert not errors, f"{page}: page errors: {errors}"
    assert not info["brokenImages"], f"{page}: images not loaded: {info['brokenImages']}"
    if info["nMath"]:
        assert info["mathjax"], f"{page}: has math but MathJax did not load"
        assert info["nUntypeset"] == 0, f"{page}: {info['nUntypeset']} formulas not typeset"
        assert info["nContainers"] >= info["nMath"]
    assert not info["rawDollars"], f"{page}: raw $$ in the visible text"
    assert not info["rawParens"], f"{page}: raw \\( or \\[ in the visible text"
    assert not info["pipeRows"], f"{page}: Markdown table rows printed as text: {info['pipeRows']}"
    assert not info["rawInline"], f"{page}: unrendered $math$ in the text: {info['rawInline']}"
    assert not info["glueLeft"], f"{page}: a {{glue}} role left in the text"
    assert not info["unresolved"], f"{page}: '??' (an unresolved reference) in the text"
    assert not info["wide"], (f"{page}: wider than the {info['columnWidth']}px column at 1400px: "
                              f"{info['wide']}")
    assert not info["soft"], f"{page}: images below 2x their displayed width: {info['soft']}"
    bad = {}
    for href in info["links"]:
        url = urldefrag(href).url
        if url.startswith(base) and url not in bad:
            code = _status(url)
            if code != 200:
                bad[url] = code
        elif urlsplit(href).scheme in ("file",):
            bad[href] = "file:// link"
    assert not bad, f"{page}: broken internal links: {bad}"
    assert shot.stat().st_size > 10_000, "screenshot looks empty"


def test_chapters_have_figures_and_math(site, browser):
    """The chapters are where the math and figures are: at least one of each per chapter."""
    html, base = site
    chapters = [p for p in PAGES if p.startswith("notebooks/")]
    assert chapters
    for page in chapters:
        info, _, _ = _open(browser, base + page)
        assert info["nImages"] >= 1, f"{page}: no figure"
        assert info["nMath"] >= 1 and info["mathjaxVersion"], f"{page}: no typeset math"


def test_chapter_typesets_from_disk(site, browser):
    """Opened from disk (file://, no server) a chapter in a subfolder still finds MathJax."""
    html, _ = site
    page = next(p for p in PAGES if p.startswith("notebooks/"))
    info, errors, blocked = _open(browser, (html / page).as_uri())
    assert not blocked, blocked
    assert info["mathjax"] and info["nMath"] > 0 and info["nUntypeset"] == 0, info
    assert not [e for e in errors if "mathjax" in e.lower()], errors


@pytest.mark.parametrize("page", PAGES)
def test_page_on_a_phone_and_in_dark_mode(site, browser, page):
    """400 px phone: nothing wider than the screen, figures shown; dark mode: every figure
    stays visible (no transparent figure on a dark page). Screenshots are kept."""
    html, base = site
    stem = page.replace("/", "__").removesuffix(".html")
    shots = html.parent / "screenshots"
    info, errors, _ = _open(browser, base + page, screenshot=shots / f"{stem}__400px.png",
                            width=400, mobile=True)
    assert not errors, f"{page} (400px): page errors: {errors}"
    assert info["pageWidth"] <= info["viewportWidth"] + 1, (
        f"{page} (400px): page {info['pageWidth']}px wide, scrolls sideways")
    assert not info["hiddenImgs"], f"{page} (400px): figures not shown: {info['hiddenImgs']}"
    assert not info["clipped"], f"{page} (400px): inline formulas cut at the edge: {info['clipped']}"
    assert not info["splitCells"], f"{page} (400px): table words split over lines: {info['splitCells']}"
    assert not info["narrowWide"], (
        f"{page} (400px): multi-panel figures shrunk below 600px: {info['narrowWide']}")
    info, errors, _ = _open(browser, base + page, screenshot=shots / f"{stem}__dark.png",
                            dark=True)
    assert info["theme"] == "dark" and info["bodyLum"] is not None and info["bodyLum"] < 0.5, (
        f"{page}: dark mode not applied ({info['theme']}, {info['bodyLum']})")
    assert not info["invisible"], f"{page} (dark): figures that vanish: {info['invisible']}"
