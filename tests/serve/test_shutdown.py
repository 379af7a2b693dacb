"""`lmforge serve` as a process: SIGTERM lets a running request finish, then the server exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.serve.helpers import free_port

pytest.importorskip("uvicorn")


def test_sigterm_drains_running_requests_then_exits(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [
        sys.executable,
        "-m",
        "lmforge",
        "serve",
        str(tiny_model_dir),
        f"--port={port}",
        "--embeddings=",  # empty: no embedding model
        "--limits.max_tokens=200",
        "--engine.max_running=2",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {
            "model": tiny_model_dir.name,
            "prompt": "To be",
            "max_tokens": 100,
            "stream": True,
            "temperature": 0,
        }
        finish = None
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if finish is None and line.startswith("data: {"):
                    proc.send_signal(signal.SIGTERM)  # mid-request
                    finish = "sent"
                if line.startswith("data: {"):
                    reason = json.loads(line[6:])["choices"][0]["finish_reason"]
                    finish = reason or finish
        assert finish in ("length", "stop")  # the request ran to its end
        # uvicorn re-raises the signal once drained: the exit status says SIGTERM ended it
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
