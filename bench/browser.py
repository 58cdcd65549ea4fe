"""Headless Chromium for the report tests: load a page offline, run a harness in it, read the DOM back.

The harness is two scripts added to a copy of the page (their hashes join
the page's Content-Security-Policy, which still blocks anything else): one
at the top that records script errors, blocked scripts and calls to
``alert``, one at the end that exercises the page and writes its findings as
JSON into ``<pre id="harness-result">``.  ``chromium --dump-dom`` prints the
DOM once the page has loaded and its timers have run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import tempfile

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
MISSING = "needs headless Chromium (Debian: apt-get install chromium; make test installs it when root)"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio")

PRELUDE = """window.__harness = {errors: [], alerts: [], blocked: []};
window.addEventListener("error", function (e) { __harness.errors.push(String(e.message || e.type)); }, true);
window.addEventListener("unhandledrejection", function (e) { __harness.errors.push(String(e.reason)); });
document.addEventListener("securitypolicyviolation", function (e) {
  __harness.blocked.push(e.violatedDirective + " " + (e.sample || e.blockedURI)); });
["alert", "confirm", "prompt"].forEach(function (f) {
  window[f] = function (x) { __harness.alerts.push(f + ":" + x); }; });"""


def _sha(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def run_page(page: str, harness: str, *, width: int = 1200, height: int = 900, csp: bool = True,
             timeout: float = 60) -> dict:
    """Load ``page`` with ``harness`` (JS that returns a JSON-able value) and return what it found."""
    body = ("var out = document.createElement('pre'); out.id = 'harness-result';"
            "try { __harness.result = (function () {" + harness + "})(); }"
            "catch (e) { __harness.errors.push('harness: ' + e + ' ' + e.stack); }"
            "out.textContent = JSON.stringify(__harness); document.body.appendChild(out);")
    if csp:
        page = page.replace("script-src ", f"script-src {_sha(PRELUDE)} {_sha(body)} ", 1)
    else:
        page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page, count=1)
    page = page.replace("<head>", f"<head><script>{PRELUDE}</script>", 1)
    page = page.replace("</body>", f"<script>{body}</script></body>", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "page.html")
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
        profile = os.path.join(tmp, "profile")
        proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                               f"--window-size={width},{height}", "--virtual-time-budget=5000",
                               "--dump-dom", "file://" + path],
                              capture_output=True, text=True, timeout=timeout)
    m = re.search(r'<pre id="harness-result">(.*?)</pre>', proc.stdout, re.S)
    if m is None:
        raise AssertionError(f"the harness wrote no result (chromium exit {proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")
    return json.loads(html.unescape(m.group(1)))
