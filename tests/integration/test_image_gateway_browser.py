"""The image gateway's upload page in a real browser: Debian's chromium,
driven by playwright-core from npm (tests/integration/browser/upload.mjs),
against the real gateway and mock inference service.

Skipped only when the tools cannot be installed (no root for apt, no
network for npm...); once they are there, any failure is a failure."""
import base64
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from conftest import REPO, SLOW
from test_image_gateway import GATEWAY, MOCK, PNG, Proc, expected_top3

PLAYWRIGHT_VERSION = "1.65.1"          # pinned; `npm view playwright-core version`
CHROMIUM = "/usr/bin/chromium"
CACHE = REPO / "build" / "test-cache" / ("playwright-core-" + PLAYWRIGHT_VERSION)
SCRIPT = REPO / "tests" / "integration" / "browser" / "upload.mjs"


def run(cmd, timeout, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", str(e))


def ensure_chromium():
    if os.path.exists(CHROMIUM):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("%s is missing and cannot be installed (needs apt-get as root)" % CHROMIUM)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", "-q", "chromium"]
    p = run(cmd, 900, env=env)
    if p.returncode != 0:                      # stale package lists: refresh once
        run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "update", "-q"], 300, env=env)
        p = run(cmd, 900, env=env)
    if p.returncode != 0 or not os.path.exists(CHROMIUM):
        pytest.skip("could not install chromium: %s" % (p.stderr or p.stdout)[-500:])


def ensure_playwright():
    if (CACHE / "node_modules" / "playwright-core" / "package.json").exists():
        return CACHE / "node_modules" / "playwright-core"
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed")
    CACHE.mkdir(parents=True, exist_ok=True)
    p = run(["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund",
             "--no-save", "playwright-core@" + PLAYWRIGHT_VERSION], 600)
    pkg = CACHE / "node_modules" / "playwright-core" / "package.json"
    if p.returncode != 0 or not pkg.exists():
        pytest.skip("could not install playwright-core@%s: %s"
                    % (PLAYWRIGHT_VERSION, (p.stderr or p.stdout)[-500:]))
    assert json.loads(pkg.read_text())["version"] == PLAYWRIGHT_VERSION
    return pkg.parent


@pytest.mark.timeout(1800)
def test_upload_page_in_chromium(tmp_path):
    ensure_chromium()
    pw = ensure_playwright()

    mock = Proc(tmp_path / "mock", MOCK)
    gw = None
    try:
        gw = Proc(tmp_path / "gw", GATEWAY, env={"INFERENCE_SERVICE_URL": mock.url("/predict"),
                                                 "INFERENCE_TIMEOUT": "10s"})
        png, bad = tmp_path / "sample.png", tmp_path / "notes.png"
        png.write_bytes(PNG)
        bad.write_bytes(b"this is not an image, whatever the file name says\n")
        shots = tmp_path / "screenshots"
        shots.mkdir()
        env = dict(os.environ, PLAYWRIGHT_DIR=str(pw), PAGE_URL=gw.url("/"),
                   PNG_PATH=str(png), BAD_PATH=str(bad), SHOT_DIR=str(shots),
                   EXPECTED=json.dumps(expected_top3(PNG)),
                   EXPECTED_ERROR="inference service error: Internal server error during model inference.")
        p = run(["node", str(SCRIPT)], 120 * SLOW, env=env, cwd=str(tmp_path))
        assert p.returncode == 0, "upload.mjs failed:\n%s\n%s" % (p.stdout, p.stderr)
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        assert summary["ok"]
        assert [r["label"] for r in summary["rows"]] == \
            [x["label"].replace("_", " ") for x in expected_top3(PNG)]
        for shot in (summary["success_shot"], summary["error_shot"]):
            data = pathlib.Path(shot).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        # the browser really went through the gateway: page, script, API calls
        uris = [(l["method"], l["uri"], l["status"]) for l in gw.access_log()]
        assert ("GET", "/", 200) in uris and ("GET", "/app.js", 200) in uris
        assert ("POST", "/api/v1/analyze", 200) in uris
        assert ("POST", "/api/v1/analyze", 502) in uris
        print("screenshots:", shots)
    finally:
        if gw:
            assert gw.stop() == 0
        assert mock.stop() == 0
