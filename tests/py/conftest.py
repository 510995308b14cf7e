"""Fixtures for the pymongo end-to-end tests: an nx-27017 backend and the tenantwall proxy, each
started on a free port as a child process and always stopped in teardown.

Environment:
  TENANTWALL_BIN   proxy binary (default <repo>/target/debug/tenantwall)
  TW_NX_BIN        nx-27017 executable (default: next to this Python, else <repo>/.venv/bin)
  TW_DIRECT=1      point the "proxy" fixtures at the backend itself, to check the tests against
                   nx-27017 alone; only proxy-specific assertions should then fail
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

REPO = Path(__file__).resolve().parents[2]
DIRECT = os.environ.get("TW_DIRECT", "") not in ("", "0")
STARTUP_TIMEOUT_S = 20.0
READY_LINE = re.compile(r"^tenantwall: listening on 127\.0\.0\.1:(\d+)$")
# tracing-subscriber colours field names unless told not to; strip escapes whatever it does.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def nx_executable() -> str:
    if os.environ.get("TW_NX_BIN"):
        return os.environ["TW_NX_BIN"]
    for candidate in (Path(sys.executable).parent / "nx-27017", REPO / ".venv" / "bin" / "nx-27017"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nx-27017")
    if found:
        return found
    pytest.fail("nx-27017 not found; run scripts/backend setup (or set TW_NX_BIN)")


def proxy_executable() -> Path:
    return Path(os.environ.get("TENANTWALL_BIN") or REPO / "target" / "debug" / "tenantwall")


class Backend:
    """One in-memory nx-27017 with its own pid and log file (it defaults to one pid file per
    machine, which would make parallel instances fight)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.log = workdir / "nx.log"
        self.out = workdir / "nx.out"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> Backend:
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(3):  # free_port() can race with another process; retry on a new port
            self.port = free_port()
            with open(self.out, "wb") as out:
                self.proc = subprocess.Popen(
                    [nx_executable(), "--db", "memory", "--host", "127.0.0.1", "-p", str(self.port),
                     "--pid-file", str(self.workdir / "nx.pid"), "--log-file", str(self.log)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_error = f"nx-27017 exited with {self.proc.returncode}:\n{tail(self.out)}"
                    break
                if port_open(self.port):
                    return self
                time.sleep(0.05)
            else:
                stop_process(self.proc)
                pytest.fail(f"nx-27017 did not listen on {self.port} within {STARTUP_TIMEOUT_S}s:\n{tail(self.log)}")
        pytest.fail(f"could not start nx-27017: {last_error}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"


class Proxy:
    """A running `tenantwall run`. stdout is read by a thread (the ready line, then anything
    else it prints, which the contract says is nothing); stderr goes to a file the tests grep."""

    def __init__(self, workdir: Path, backend: Backend, env: dict[str, str] | None = None,
                 policy_text: str | None = None):
        self.policy_text = policy_text
        self.workdir = workdir
        self.backend = backend
        self.policy = workdir / "policy.toml"
        self.stderr_path = workdir / "tenantwall.stderr"
        self.stdout_lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.extra_env = env or {}
        self._lines: queue.Queue[str | None] = queue.Queue()

    def write_policy(self) -> None:
        if self.policy_text is not None:
            self.policy.write_text(self.policy_text)
            return
        # One tenant bound to the listener, owning the whole backend (a cluster per tenant), so the wire-level
        # tests below run without credentials. Identity tests write their own policies.
        self.policy.write_text(
            "[[listeners]]\n"
            'address = "127.0.0.1:0"\n'
            'tenant = "t1"\n'
            "\n"
            "[[backends]]\n"
            'name = "main"\n'
            f'uri = "{self.backend.uri}"\n'
            "\n"
            "[[tenants]]\n"
            'id = "t1"\n'
            'backend = "main"\n'
            "\n"
            "[[rules]]\n"
            'database = "*"\n'
            'mode = "database"\n'
            'template = "{db}"\n'
        )

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def start(self) -> Proxy:
        if DIRECT:
            self.port = self.backend.port
            self.stderr_path = self.backend.log
            return self
        binary = proxy_executable()
        if not binary.exists():
            pytest.fail(f"proxy binary {binary} not found; build it with `cargo build --bin tenantwall` "
                        "or set TENANTWALL_BIN")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_policy()
        env = dict(os.environ)
        env.update({"RUST_LOG": "tenantwall=debug", "NO_COLOR": "1", "RUST_BACKTRACE": "1"})
        env.update(self.extra_env)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(binary), "run", "--policy", str(self.policy), "--listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env,
                start_new_session=True,
            )
        threading.Thread(target=self._read_stdout, name="tenantwall-stdout", daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                self.stop()
                pytest.fail(f"tenantwall printed no ready line within {STARTUP_TIMEOUT_S}s; stdout: "
                            f"{self.stdout_lines!r}\nstderr:\n{tail(self.stderr_path)}")
            if line is None:
                code = self.proc.wait()
                pytest.fail(f"tenantwall exited with {code} before it was ready; stdout: {self.stdout_lines!r}"
                            f"\nstderr:\n{tail(self.stderr_path)}")
            match = READY_LINE.match(line)
            if match:
                self.port = int(match.group(1))
                return self
            # Anything before the ready line is a contract violation worth seeing, not fatal here;
            # test_stdout_is_only_the_ready_line asserts it.

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return stop_process(self.proc)

    def alive(self) -> bool:
        return DIRECT or (self.proc is not None and self.proc.poll() is None)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def stderr_size(self) -> int:
        try:
            return self.stderr_path.stat().st_size
        except FileNotFoundError:
            return 0

    def stderr_since(self, offset: int) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(offset)
                return ANSI_ESCAPE.sub("", f.read().decode(errors="replace"))
        except FileNotFoundError:
            return ""

    def wait_for_stderr(self, offset: int, pattern: re.Pattern[str], timeout: float = 3.0) -> str:
        """stderr written since `offset`, once `pattern` occurs in it or `timeout` passes (the
        proxy may log after it has replied)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr_since(offset)
            if pattern.search(text) or time.monotonic() >= deadline:
                return text
            time.sleep(0.05)


def mongo_client(port: int, **kwargs) -> MongoClient:
    options = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000, "socketTimeoutMS": 30000,
               "appname": "tenantwall-tests"}
    options.update(kwargs)
    return MongoClient("127.0.0.1", port, **options)


def pytest_report_header(config):
    if DIRECT:
        return "tenantwall: TW_DIRECT=1, clients talk to nx-27017 directly (proxy assertions will fail)"
    return f"tenantwall: proxy binary {proxy_executable()}, backend {nx_executable()}"


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = Backend(tmp_path_factory.mktemp("nx")).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def proxy(backend, tmp_path_factory):
    p = Proxy(tmp_path_factory.mktemp("tenantwall"), backend)
    try:
        yield p.start()
    finally:
        p.stop()


@pytest.fixture
def start_proxy(backend, tmp_path_factory):
    """Factory for a proxy of a test's own (e.g. one it will kill)."""
    started: list[Proxy] = []

    def start(**env: str) -> Proxy:
        p = Proxy(tmp_path_factory.mktemp("tenantwall"), backend, env=env)
        started.append(p)
        return p.start()

    try:
        yield start
    finally:
        for p in started:
            p.stop()


@pytest.fixture(scope="module")
def client(proxy):
    c = mongo_client(proxy.port)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def direct_client(backend):
    c = mongo_client(backend.port)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fresh_db(client, request):
    """A database named after the test, dropped before use."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:48]
    client.drop_database(name)
    return client[name]
