"""A live `serve.py` process for the tests that talk to one over HTTP (test_serve.py and others)."""
import os
import subprocess
import sys
import tempfile
import time

import httpx
from conftest import ROOT


class LiveServer:
    """`python serve.py --port 0` as a real process; the URL comes from its first line. Its
    stderr goes to a file (a pipe nobody reads would block the server once 64 KB of log
    lines filled it); `log()` reads it."""

    def __init__(self, ckpt, *args, env=None):
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "serve.py", "--ckpt", str(ckpt), "--port", "0", *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()  # blocks until the socket is bound (or the process died)
        assert "http://127.0.0.1:" in line, line + self.log()
        self.url = line.split(" on ")[1].split()[0]
        for _ in range(100):  # uvicorn starts serving right after that line
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()
