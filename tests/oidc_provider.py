"""A real OpenID provider for tests: the `oidc_provider` fixture and a scripted browser login.

The provider is panva/oidc-provider run by Node (tests/oidc/provider.mjs, see tests/oidc/README.md).
Use it from any test folder with `pytest_plugins = ["tests.oidc_provider"]` in a test module (or
the root conftest), or import the fixture: `from tests.oidc_provider import oidc_provider`.
Outside pytest, `running_oidc_provider()` is the same thing as a context manager.

PYTEST_DONT_REWRITE: test modules import helpers from here before pytest registers it as a plugin;
it has no test assertions, and this marker keeps pytest from warning that it cannot rewrite them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
PROVIDER_SCRIPT = OIDC_DIR / "provider.mjs"

DEFAULT_CLIENT_ID = "keel-test-client"
DEFAULT_REDIRECT_URI = "http://127.0.0.1/oidc/callback"

# Node plus the provider's key generation start in well under a second; the margin is for slow CI.
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
NPM_CI_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class OidcTestProvider:
    """A running provider and the one confidential client registered with it."""

    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str

    @staticmethod
    def subject_for(login: str) -> str:
        """The `sub` the provider asserts for a login name (provider.mjs's pairwise identifier)."""
        return f"sub-{login}"

    @staticmethod
    def email_for(login: str) -> str:
        """The (verified) email the provider asserts for a login name."""
        return f"{login}@example.test"


def ensure_provider_installed() -> None:
    """Run `npm ci` in tests/oidc once if its node_modules is missing (the Makefile normally does it)."""
    if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: tests/oidc needs Node.js 20+ and npm")
    # Parallel test workers may all get here: one installs, the others wait and then see it done.
    with (Path(tempfile.gettempdir()) / "keel-oidc-npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
            return
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=OIDC_DIR,
            check=True,
            timeout=NPM_CI_TIMEOUT_SECONDS,
            stdout=subprocess.DEVNULL,
        )


def _read_ready_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    if proc.stdout is None:
        raise RuntimeError("the OIDC provider's stdout is not a pipe")
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the OIDC provider did not report ready in time")
            if not selector.select(timeout=remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:  # EOF: it exited before becoming ready.
                raise RuntimeError(f"the OIDC provider exited early (code {proc.wait()})")
            buffer += chunk
    return buffer.split(b"\n", 1)[0]


def _stderr_tail(stderr: IO[bytes]) -> str:
    stderr.seek(0)
    return stderr.read().decode("utf-8", "replace")[-4000:]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def running_oidc_provider(
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str | None = None,
    redirect_uris: Sequence[str] = (DEFAULT_REDIRECT_URI,),
    id_token_alg: str = "ES256",
) -> Iterator[OidcTestProvider]:
    """Start provider.mjs on an ephemeral 127.0.0.1 port; stop it (and wait for it) on exit."""
    ensure_provider_installed()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: tests/oidc needs Node.js 20+")
    secret = client_secret if client_secret is not None else os.urandom(24).hex()
    env = {
        **os.environ,
        "OIDC_PORT": "0",
        "OIDC_CLIENT_ID": client_id,
        "OIDC_CLIENT_SECRET": secret,
        "OIDC_REDIRECT_URIS": json.dumps(list(redirect_uris)),
        "OIDC_ID_TOKEN_ALG": id_token_alg,
    }
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [node, str(PROVIDER_SCRIPT)],
            cwd=OIDC_DIR,
            env=env,
            # stdin stays open for the provider's lifetime: it exits on EOF, so it dies with us.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            try:
                line = _read_ready_line(proc, time.monotonic() + STARTUP_TIMEOUT_SECONDS)
                issuer = json.loads(line)["issuer"]
            except (TimeoutError, RuntimeError, ValueError, KeyError) as exc:
                raise RuntimeError(f"{exc}; provider stderr:\n{_stderr_tail(stderr)}") from exc
            yield OidcTestProvider(
                issuer=issuer, client_id=client_id, client_secret=secret, redirect_uri=redirect_uris[0]
            )
        finally:
            _stop(proc)


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[OidcTestProvider]:
    """A real OpenID provider shared by the tests of one module."""
    with running_oidc_provider() as provider:
        yield provider


class _FormParser(HTMLParser):
    """Collects each <form>'s action, method and <input> name/type/value."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, str, list[tuple[str, str, str]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((values.get("action", ""), values.get("method", "get").lower(), []))
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1][2].append(
                (values["name"], values.get("type", "text").lower(), values.get("value", ""))
            )


def _same_endpoint(url: str, target: str) -> bool:
    a, b = urlsplit(url), urlsplit(target)
    return (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path)


async def complete_login(authorization_url: str, login: str, *, max_steps: int = 20) -> str:
    """Act as the user's browser: sign in as `login` and return the redirect to the client.

    Follows the provider's redirects by hand with one cookie jar, fills the devInteractions login
    form (any login, any password) and the consent form if one appears, and stops at the first
    redirect to the authorization request's redirect_uri, which it returns unfetched (it carries
    `code` and `state`, or `error`).
    """
    redirect_uris = parse_qs(urlsplit(authorization_url).query).get("redirect_uri")
    if not redirect_uris:
        raise ValueError("the authorization URL has no redirect_uri")
    redirect_uri = redirect_uris[0]
    async with httpx.AsyncClient(follow_redirects=False, timeout=10.0) as browser:
        request = browser.build_request("GET", authorization_url)
        for _ in range(max_steps):
            response = await browser.send(request)
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if _same_endpoint(location, redirect_uri):
                    return location
                request = browser.build_request("GET", location)
                continue
            if response.status_code != 200 or "<form" not in response.text:
                raise RuntimeError(
                    f"OIDC login stuck at {response.url} (HTTP {response.status_code}): {response.text[:500]}"
                )
            parser = _FormParser()
            parser.feed(response.text)
            action, method, inputs = parser.forms[0]
            fields: dict[str, str] = {}
            for name, kind, value in inputs:
                if name == "login":
                    fields[name] = login
                elif kind == "password":
                    fields[name] = "any-password"  # devInteractions accept any password
                else:
                    fields[name] = value
            target = urljoin(str(response.url), action)
            if method == "post":
                request = browser.build_request("POST", target, data=fields)
            else:
                request = browser.build_request("GET", target, params=fields)
    raise RuntimeError(f"OIDC login did not reach {redirect_uri} within {max_steps} steps")
