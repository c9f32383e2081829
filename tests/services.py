"""Real services the tests run against, started on free local ports and stopped after.

RedisServer       a redis-server in a temporary folder; stop, kill or pause it and start (or
                  resume) it again on the same port and data, to test what a store does while
                  Redis is down or hung, and after it is back
PrometheusServer  a prometheus scraping given targets every second, with given rule files,
                  queried through its HTTP API
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PrometheusServer", "RedisServer", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server on 127.0.0.1 keeping its data in `directory`.

    Every write is in the append-only file, fsynced before Redis answers (`appendfsync="always"`),
    so what a test wrote survives `stop()` and even `kill()`, and is there again after `start()`.
    Benchmarks pass "everysec", Redis's own default for the append-only file."""

    def __init__(
        self,
        directory: Path,
        executable: str = "redis-server",
        appendfsync: str = "always",
        password: str | None = None,
    ) -> None:
        self.directory = directory
        self.executable = executable
        self.appendfsync = appendfsync
        self.password = password
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and return once it answers PING (it may first be loading its data)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        command = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--logfile", str(log),
        ]  # fmt: skip
        if self.password is not None:
            command += ["--requirepass", self.password]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._answers_ping():
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"redis-server did not answer PING within {timeout_s} s: {_tail(log)}")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down as Redis does on SIGTERM (the append-only file is complete)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a paused server handles SIGTERM only once resumed
            self._process.terminate()
            self._process.wait(timeout_s)
            self._process = None

    def kill(self) -> None:
        """SIGKILL: Redis stops at once, as in a crash."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: Redis keeps its connections but answers nothing, as when it hangs."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            raise RuntimeError("redis-server is not running")
        self._process.send_signal(signum)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as connection:
                if self.password is not None:
                    connection.sendall(f"AUTH {self.password}\r\n".encode())
                    if not connection.recv(64).startswith(b"+OK"):
                        return False
                connection.sendall(b"PING\r\n")
                # '-LOADING ...' while it loads its data, '+PONG' once it serves.
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class PrometheusServer:
    """A prometheus on 127.0.0.1 keeping its data in `directory`, scraping `targets` ("host:port")
    every `scrape_interval_s` and evaluating `rule_files` as often."""

    def __init__(
        self,
        directory: Path,
        targets: list[str],
        rule_files: list[Path] | None = None,
        scrape_interval_s: float = 1.0,
        executable: str = "prometheus",
    ) -> None:
        self.directory = directory
        self.targets = targets
        self.rule_files = rule_files or []
        self.scrape_interval_s = scrape_interval_s
        self.executable = executable
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it and return once it is ready to answer queries."""
        self.directory.mkdir(parents=True, exist_ok=True)
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path.resolve()) for path in self.rule_files],
            "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": self.targets}]}],
        }
        config_path = self.directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = self.directory / "prometheus.log"
        command = [
            self.executable,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with log.open("wb") as log_file:
            self._process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._is_ready():
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._process.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"prometheus was not ready within {timeout_s} s: {_tail(log)}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant query's result (vector or matrix entries); raises on a PromQL error."""
        return self._api("query", {"query": promql})["result"]

    def api(self, path: str) -> Any:
        """The `data` of GET /api/v1/<path> (e.g. "rules", "targets")."""
        return self._api(path, {})

    def _api(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query is 400 with the error in its body
            body = json.load(error)
        if body.get("status") != "success":
            raise ValueError(f"prometheus: {body.get('errorType')}: {body.get('error')} ({params})")
        return body["data"]

    def _is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


def _tail(log: Path, num_chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-num_chars:] if log.exists() else "(no log)"
