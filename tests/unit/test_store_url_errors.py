"""A bad `--store` is one `error:` line naming the flag and the URL, never a traceback: a
port that is no port, and a URL where something other than etcd answers (here Python's
http.server, which answers the gateway's POSTs with an HTML error page)."""
from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.unit.cli_kit import run, state_dir  # noqa: F401 (state_dir: an autouse fixture)


class NotEtcd(http.server.BaseHTTPRequestHandler):
    """No do_POST: every gateway request gets http.server's HTML page for a 501."""

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that is not etcd: its URL as a store URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotEtcd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"etcd://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("url", ["etcd://h:notaport", "etcd://h:99999", "etcd://h:0"])
def test_a_store_url_without_a_valid_port_names_the_flag_and_the_url(capsys, monkeypatch, url: str) -> None:
    monkeypatch.delenv("SVCXDP_STORE", raising=False)
    code, _, err = run(capsys, "get", "svc", "--store", url)
    assert code == 1
    assert err.splitlines() == [f"error: --store: store URL {url!r}: endpoint {url[len('etcd://'):]!r} "
                                "needs HOST:PORT, a port from 1 to 65535"]


def test_the_environment_is_named_when_it_gave_the_url(capsys, monkeypatch) -> None:
    monkeypatch.setenv("SVCXDP_STORE", "etcd://h:notaport")
    code, _, err = run(capsys, "get", "svc")
    assert code == 1
    assert err.startswith("error: $SVCXDP_STORE: store URL 'etcd://h:notaport'") and len(err.splitlines()) == 1


def test_a_store_url_where_something_else_answers_is_one_error_line(capsys, monkeypatch, web_server: str) -> None:
    monkeypatch.delenv("SVCXDP_STORE", raising=False)
    code, _, err = run(capsys, "get", "svc", "--store", web_server)
    assert code == 1
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --store {web_server}: not an etcd server (it answered: ")
    assert "Unsupported method ('POST')" in err and "<" not in err


def test_a_command_outside_kubectl_says_the_same(tmp_path, web_server: str) -> None:
    """`svcctl dns` opens the store itself: the CLI turns the failure into the same line."""
    proc = subprocess.run([sys.executable, "-m", "controlplane.cli", "dns", "--state-dir", str(tmp_path),
                           "--store", web_server, "--listen", "127.0.0.1", "--port", "0", "--no-forward"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: --store {web_server}: not an etcd server" in proc.stderr


def test_the_controllers_say_the_same_rather_than_wait_to_lead_forever(tmp_path, web_server: str) -> None:
    """`svcctl controllers` campaigned against such a URL without a word, for ever."""
    proc = subprocess.run([sys.executable, "-m", "controlplane.cli", "controllers", "--state-dir", str(tmp_path),
                           "--store", web_server], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "waiting to lead" not in proc.stderr
    assert f"error: --store {web_server}: not an etcd server" in proc.stderr


def test_a_campaign_the_store_keeps_failing_says_why_once_in_a_while(web_server: str, caplog) -> None:
    """The election retries (the store may come back), saying why at once and then at most
    every FAILURE_LOG_EVERY_S, not on every attempt nor never."""
    import logging

    from controlplane.store.etcd_client import EtcdClient
    from controlplane.store.etcd_election import LeaderElection

    port = int(web_server.rsplit(":", 1)[1])
    election = LeaderElection(EtcdClient([("http", "127.0.0.1", port)], retry_for=0.1), "controllers", "me", ttl=1)
    attempts = []

    def stop() -> bool:
        attempts.append(1)
        return len(attempts) > 3

    with caplog.at_level(logging.WARNING, logger="svcxdp.election"):
        assert election.campaign(stop) is False
    assert len(attempts) == 4
    (record,) = caplog.records
    assert "/svcxdp/leader/controllers: cannot campaign for the lead, retrying" in record.getMessage()
    assert "Unsupported method" in record.getMessage()
