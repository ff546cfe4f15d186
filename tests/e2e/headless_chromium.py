"""A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`), for the report test.

The pipe needs no client library and opens no port: Chromium reads NUL-terminated JSON commands on its file
descriptor 3 and writes replies and events on 4. The browser is Debian's `chromium` package (`.ci/run` installs
it); `find_chromium` says why none can be used.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")
# fds >= this number are free of stdio and of Chromium's pipe fds 3 and 4 while the shell wires the pipes up
_HIGH_FD = 10


class BrowserError(RuntimeError):
    """Chromium exited, timed out or answered a command with an error (the message says which)."""


def find_chromium() -> tuple[str | None, str]:
    """(path of a Chromium that starts headless, "") or (None, why not)."""
    binary = next((path for path in map(shutil.which, BINARIES) if path), None)
    if binary is None:
        return None, f"no Chromium on PATH (looked for {', '.join(BINARIES)}; Debian: apt-get install chromium)"
    try:
        result = subprocess.run([binary, "--headless", "--no-sandbox", "--version"], capture_output=True, text=True, timeout=60,
                                check=False)
    except subprocess.TimeoutExpired:
        return None, f"{binary} --version did not answer within 60 s"
    if result.returncode != 0:
        return None, f"{binary} --version failed (rc {result.returncode}): {result.stderr.strip()[-300:]}"
    return binary, ""


def _high(fd: int) -> int:
    duplicate = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return duplicate


class HeadlessChromium:
    """One browser with one page; `send` runs a DevTools command on that page, `events` holds what it reported."""

    def __init__(self, binary: str, profile: Path, log: Path, width: int = 1600, height: int = 1000) -> None:
        command_read, self._command_write = map(_high, os.pipe())
        self._reply_read, reply_write = map(_high, os.pipe())
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        self._log = log.open("w")
        # the shell moves the pipe ends to fds 3 and 4, where Chromium expects them, then becomes Chromium
        wiring = f'exec "$@" 3<&{command_read} 4>&{reply_write} {command_read}<&- {reply_write}>&-'
        self._process = subprocess.Popen(["bash", "-c", wiring, "chromium", binary, *flags], pass_fds=(command_read, reply_write),
                                         stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        os.close(command_read)
        os.close(reply_write)
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self._session: str | None = None
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)["sessionId"]

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._reply_read, "rb", buffering=0) as replies:
            while chunk := replies.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._replies.put(json.loads(message))
        self._replies.put(None)

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60, browser: bool = False) -> dict[str, Any]:
        """Run one command (on the page unless `browser`) and return its result; events that arrive meanwhile
        are kept in `events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session and not browser:
            message["sessionId"] = self._session
        os.write(self._command_write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BrowserError(f"{method}: no answer within {timeout:g} s") from None
            if reply is None:
                raise BrowserError(f"Chromium exited (rc {self._process.poll()}) during {method}; see {self._log.name}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """The value of a JavaScript expression on the page (promises are awaited); a thrown error raises."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:80]}...: {details.get('exception', {}).get('description', details.get('text'))}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.25) -> Any:
        """Poll a JavaScript expression until it is truthy; its value, or BrowserError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise BrowserError(f"not true within {timeout:g} s: {expression}")

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors reported so far, one line each."""
        self.send("Runtime.evaluate", {"expression": "0"})  # collects events that arrived since the last command
        errors = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console." + params["type"] + ": " + " ".join(str(arg.get("value", arg.get("description", "")))
                                                                            for arg in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append("uncaught: " + str(details.get("exception", {}).get("description", details.get("text"))))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        return errors

    def close(self) -> None:
        try:
            self.send("Browser.close", browser=True, timeout=10)
        except BrowserError:
            pass
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._command_write)
        self._log.close()
