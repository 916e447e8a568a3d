"""inception.runtime: a download that cannot reach its server is known in seconds, and a file
written atomically is never half there."""

import os
import socket
import threading
from pathlib import Path

import pytest
import torch

from inception import runtime
from inception.runtime import reachable


@pytest.fixture
def listening():
    """A local server socket that accepts connections: (host, port)."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()
    server.close()


def test_a_server_that_answers_is_reachable_and_a_closed_port_is_not(listening):
    host, port = listening
    assert reachable(f"http://{host}:{port}/file.pt", timeout=2)
    with socket.create_server(("127.0.0.1", 0)) as spare:
        closed = spare.getsockname()[1]
    assert not reachable(f"http://127.0.0.1:{closed}/file.pt", timeout=2)


def test_a_hung_name_lookup_gives_up_after_the_timeout(monkeypatch):
    release, hung = threading.Event(), []

    def hang(*args, **kwargs):  # as a lookup does offline, for minutes, before it fails
        hung.append(threading.current_thread())
        release.wait()
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        assert not reachable("https://download.pytorch.org/models/x.pth", timeout=0.3)
        # It answered while the lookup still hangs: it gave up instead of waiting for it.
        assert hung and hung[0].is_alive()
    finally:
        release.set()


def test_the_https_proxy_is_asked_instead_of_the_server(listening, monkeypatch):
    host, port = listening
    monkeypatch.setenv("https_proxy", f"http://{host}:{port}")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert reachable("https://no-such-host.invalid/x.pth", timeout=2)
    monkeypatch.setenv("no_proxy", "no-such-host.invalid")  # bypassed: asked directly, and fails
    assert not reachable("https://no-such-host.invalid/x.pth", timeout=2)


def test_save_atomically_puts_the_bytes_on_disk_before_the_name_points_at_them(tmp_path,
                                                                                 monkeypatch):
    """The order is the whole guarantee: a power cut after a rename of unsynced data can leave
    the name on an empty file, which is the one outcome an atomic write exists to prevent."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(runtime.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(runtime.os, "replace",
                        lambda a, b: events.append(("replace", Path(a).name)) or real_replace(a, b))
    path = runtime.save_atomically({"v": 1}, tmp_path / "state.pt", tag=".123")
    assert events == ["fsync", ("replace", ".state.pt.123.tmp")]
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
