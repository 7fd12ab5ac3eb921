"""Starts a real bazaar (`bazaar up`) on free ports for the independent OIDC client tests.

BAZAAR_BIN names the binary; BAZAAR_URL, if set, points at an already running system instead.
"""
import html
import os
import re
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests


def _free_port_range(count):
    for base in range(21000, 60000, 97):
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port range")


@pytest.fixture(scope="session")
def bazaar():
    if os.environ.get("BAZAAR_URL"):
        yield os.environ["BAZAAR_URL"].rstrip("/")
        return
    binary = os.environ.get("BAZAAR_BIN")
    assert binary, "set BAZAAR_BIN to the bazaar binary (or BAZAAR_URL to a running system)"
    base = _free_port_range(16)
    gateway = base + 15
    data = tempfile.mkdtemp(prefix="bazaar-oidc-")
    env = dict(os.environ)
    # A short grace window so the test can observe refresh-token reuse after it.
    env["BAZAAR_IDENTITY__REFRESH_REUSE_GRACE_SECS"] = "1"
    env.setdefault("RUST_LOG", "warn")
    proc = subprocess.Popen(
        [binary, "up", "--port", str(gateway), "--base-port", str(base), "--data-dir", data],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    ready = threading.Event()
    lines = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if "bazaar is up" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(120):
        proc.kill()
        raise RuntimeError("bazaar did not start:\n" + "".join(lines[-50:]))
    url = f"http://127.0.0.1:{gateway}"
    # The gateway is ready; wait until identity is reachable through it.
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if requests.get(url + "/.well-known/openid-configuration", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def discovery(bazaar):
    return requests.get(bazaar + "/.well-known/openid-configuration", timeout=5).json()


def login_through_form(browser, base, authorize_url, email, password):
    """Follows the authorization request like a browser: login form, then back to authorize.

    Returns the final redirect to the client's redirect_uri (never followed)."""
    response = browser.get(authorize_url, allow_redirects=False, timeout=5)
    for _ in range(6):
        if response.status_code not in (302, 303):
            raise AssertionError(f"expected a redirect, got {response.status_code}: {response.text[:300]}")
        location = response.headers["Location"]
        if location.startswith("/"):
            location = base + location
        if not location.startswith(base):
            return location
        if "/login" in location:
            form = browser.get(location, timeout=5)
            assert form.status_code == 200, form.text[:300]
            fields = {name: html.unescape(value) for name, value in
                      re.findall(r'name="([^"]+)"[^>]*value="([^"]*)"', form.text)}
            fields.update({"email": email, "password": password})
            action = re.search(r'<form[^>]*action="([^"]+)"', form.text)
            target = html.unescape(action.group(1)) if action else "/login"
            response = browser.post(base + target if target.startswith("/") else target,
                                    data=fields, allow_redirects=False, timeout=5)
        else:
            response = browser.get(location, allow_redirects=False, timeout=5)
    raise AssertionError("too many redirects")
