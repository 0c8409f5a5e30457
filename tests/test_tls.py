"""TLS on the mesh and the pg service: a recording relay between two TLS nodes sees no
clear text; nodes (and service clients) with a foreign certificate, or none, never get in,
and the refusing side says so in one log line naming the address.

The near node is this process (``hermes.run``); the far node is a real
``python -m hermes node`` process (``_tls_peer``). Certificates come from the
``python -m hermes certs`` command, once per session.
"""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from multiprocessing import AuthenticationError
from pathlib import Path
from typing import Any

import pytest

import hermes
from hermes import TLSConfig
from hermes.pg.service import ServiceConnection, ServiceUnavailable, start_service_process

from _tls_peer import COOKIE, TOPIC, Relay, free_port, peer_node, wait_listening
from conftest import wait_until

MARKER = "MARKER-7f3c9e-secret-payload"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TLSConfig]:
    good, other = tmp_path_factory.mktemp("certs"), tmp_path_factory.mktemp("other-ca")
    for directory, names in ((good, ["tlsa", "tlsb"]), (other, ["evil"])):
        subprocess.run([sys.executable, "-m", "hermes", "certs", str(directory), *names], check=True,
                       capture_output=True, timeout=120)
    return {
        "a": TLSConfig(good / "tlsa.pem", good / "tlsa.key", good / "ca.pem"),
        "b": TLSConfig(good / "tlsb.pem", good / "tlsb.key", good / "ca.pem"),
        "evil": TLSConfig(other / "evil.pem", other / "evil.key", other / "ca.pem"),
    }


def test_certs_command_writes_a_ca_and_a_pair_per_name(certs: dict[str, TLSConfig]) -> None:
    directory = Path(certs["a"].cafile).parent
    assert {p.name for p in directory.iterdir()} >= {"ca.pem", "ca.key", "tlsa.pem", "tlsa.key", "tlsb.pem", "tlsb.key"}
    assert (directory / "tlsa.key").stat().st_mode & 0o077 == 0  # private keys are private
    with pytest.raises(subprocess.CalledProcessError):  # a bad name: one line, non-zero exit
        subprocess.run([sys.executable, "-m", "hermes", "certs", str(directory), "../x"], check=True,
                       capture_output=True, timeout=60)


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plain"])
def test_relay_sees_no_clear_text_under_tls(certs: dict[str, TLSConfig], tmp_path: Path, secure: bool) -> None:
    port = free_port()
    log_path = tmp_path / "tlsb.log"
    with peer_node("tlsb", port, certs["b"] if secure else None, log_path) as proc:
        wait_listening(port, proc)
        relay = Relay(("127.0.0.1", port))
        try:
            async def main() -> Any:
                me = hermes.self()
                peer = await wait_until(lambda: next((n for n in hermes.nodes() if n.startswith("tlsb")), None),
                                        timeout=60)
                deadline = time.monotonic() + 60
                while True:  # until the far node's subscription is known here
                    hermes.publish(TOPIC, ("published", me, MARKER))
                    try:
                        got = await hermes.receive(lambda m: m == ("got", MARKER), timeout=0.5)
                        break
                    except TimeoutError:
                        assert time.monotonic() < deadline, "the publish never came back through the relay"
                reply = await hermes.call(("echo", peer), MARKER + "-call", timeout=30)
                return got, reply

            got, reply = hermes.run(main, name="tlsa", cookie=COOKIE, peers=[f"127.0.0.1:{relay.port}"],
                                    tls=certs["a"] if secure else None)
        finally:
            relay.close()
    assert got == ("got", MARKER) and reply == ("echo", MARKER + "-call")
    data = relay.data()
    assert len(data) > 1000  # the link went through the relay
    if secure:
        assert MARKER.encode() not in data and b"HRMS1" not in data  # not even the handshake's magic
    else:
        assert MARKER.encode() in data  # the same test sees clear text without TLS: it can fail


REFUSALS = {
    # near node's TLS, far node's TLS, the far log's refusal line
    "foreign CA": ("evil", "b", r"refused a TLS connection from 127\.0\.0\.1:\d+: "),
    "no certificate": (None, "b", r"refused a TLS connection from 127\.0\.0\.1:\d+: "),
    "TLS to plain": ("a", None, r"handshake with 127\.0\.0\.1:\d+ failed: "),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_node_without_a_certificate_of_the_ca_never_connects(
        certs: dict[str, TLSConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    near, far, line = REFUSALS[case]
    port = free_port()
    log_path = tmp_path / "tlsb.log"
    # wait_listening's probe (connect, close) is refused by a TLS node too: one line of its own
    expected = 2 if far else 1

    def refusals() -> list[str]:
        return [ln for ln in read(log_path).splitlines() if re.search(line, ln)]

    def near_said_it() -> bool:
        return near is None or any(f"TLS connection to 127.0.0.1:{port} refused" in r.getMessage()
                                   for r in caplog.records)

    with peer_node("tlsb", port, certs[far] if far else None, log_path) as proc:
        wait_listening(port, proc)

        async def main() -> list[str]:
            # refused on both sides, and the refusal is final: nothing ever connected
            await wait_until(lambda: len(refusals()) >= expected and near_said_it(), timeout=60)
            return hermes.nodes()

        with caplog.at_level(logging.WARNING):
            connected = hermes.run(main, name="tlsa", cookie=COOKIE, peers=[f"127.0.0.1:{port}"],
                                   tls=certs[near] if near else None)
        far_log = read(log_path)
    assert connected == []
    assert "Traceback" not in far_log and "connected to" not in far_log
    assert all("127.0.0.1:" in ln for ln in refusals())


def test_the_service_refuses_foreign_certificates_and_bad_cookies_in_one_line(
        certs: dict[str, TLSConfig], tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "service.log"
    cookie = COOKIE.encode()
    proc = start_service_process("127.0.0.1", port, cookie, tls=certs["b"], log_path=log_path)
    try:
        good = ServiceConnection(("127.0.0.1", port), cookie, tls=certs["a"])
        assert isinstance(good.call("ping"), str)
        good.close()
        before = read(log_path).count("refused a client")
        attempts: list[tuple[Any, bytes, type[BaseException]]] = [
            (certs["evil"], cookie, ServiceUnavailable),   # a certificate of another CA
            (None, cookie, ServiceUnavailable),            # no TLS at all
            (certs["a"], b"not-the-cookie", AuthenticationError),  # the right CA, the wrong cookie
        ]
        for tls, key, error in attempts:
            with pytest.raises(error):
                ServiceConnection(("127.0.0.1", port), key, tls=tls, timeout=5.0)
        wait_for = before + len(attempts)
        poll_deadline = time.monotonic() + 30
        while read(log_path).count("refused a client") < wait_for:
            assert time.monotonic() < poll_deadline, read(log_path)[-2000:]
            time.sleep(0.02)
        text = read(log_path)
        lines = [ln for ln in text.splitlines() if "refused a client" in ln]
        assert len(lines) == wait_for and all(re.search(r"at 127\.0\.0\.1:\d+: ", ln) for ln in lines)
        assert "TLS authentication failed" in lines[-3] and "TLS authentication failed" in lines[-2]
        assert "cookie authentication failed" in lines[-1]
        assert "Traceback" not in text
        still = ServiceConnection(("127.0.0.1", port), cookie, tls=certs["a"])  # the service goes on
        assert isinstance(still.call("ping"), str)
        still.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_plain_service_logs_a_failed_cookie_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "service.log"
    proc = start_service_process("127.0.0.1", port, COOKIE.encode(), log_path=log_path)
    try:
        with pytest.raises(AuthenticationError):
            ServiceConnection(("127.0.0.1", port), b"wrong")
        deadline = time.monotonic() + 30
        while "refused a client" not in read(log_path):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        lines = [ln for ln in read(log_path).splitlines() if "refused a client" in ln]
        assert len(lines) == 1 and "cookie authentication failed" in lines[0] and "127.0.0.1:" in lines[0]
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_tls_local_cluster_works(certs: dict[str, TLSConfig]) -> None:
    with hermes.LocalCluster(["tlsc1", "tlsc2"], tls=certs["a"]) as cluster:
        assert len(cluster.rpc(cluster.nodes[0], hermes.nodes)) == 1


def test_tls_config_checks_its_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no file"):
        TLSConfig(tmp_path / "missing.pem", tmp_path / "missing.key", tmp_path / "ca.pem")
    with pytest.raises(TypeError, match="option tls"):
        hermes.run(lambda: None, name="x", tls="cert.pem")
