"""Who may write, over real HTTP: no key, wrong key, right key, loopback, proxied, cross-site;
every outcome audited; the headers every response carries; the CLI's refusal to expose an
unauthenticated dashboard."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest

from soniq.cli import main
from soniq.dashboard.security import CONTENT_SECURITY_POLICY, is_loopback_host
from tests.dashboard.conftest import Dashboard

#: The rules do not depend on storage: these run on the memory backend.
memory_only = pytest.mark.parametrize("backend_name", ["memory"], indirect=True)

KEY = "k3y-for-tests-0123456789"
PROXIED = [{"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"},
           {"X-Forwarded-Host": "example.com"}, {"X-Real-IP": "203.0.113.9"}]


def _dead_job(dashboard: Dashboard) -> str:
    job_id = dashboard.enqueue("tests.fail")
    dashboard.run_jobs()
    return job_id


def _outbound_address() -> str | None:
    """This machine's non-loopback address (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if is_loopback_host(address) else address


@memory_only
def test_without_a_key_only_direct_loopback_callers_write(
        serve: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="soniq.audit")
    dashboard: Dashboard = serve()  # type: ignore[operator]
    job_id = _dead_job(dashboard)
    with dashboard.client() as http:
        for headers in PROXIED:
            response = http.post(f"/api/dead-letter/{job_id}/replay", headers=headers)
            assert response.status_code == 403, headers
            assert "SONIQ_DASHBOARD_API_KEY" in response.json()["detail"]
        # Any key is wrong when none is configured.
        assert http.post(f"/api/dead-letter/{job_id}/replay",
                         headers={"X-Soniq-Key": "guess"}).status_code == 401
        assert http.get(f"/api/jobs/{job_id}").json()["job"]["status"] == "dead_letter"
        ok = http.post(f"/api/dead-letter/{job_id}/replay")
        assert ok.status_code == 200 and ok.json() == {"replayed": 1}
        audit = http.get("/api/audit").json()
        assert [e["outcome"] for e in reversed(audit)] == ["denied"] * 5 + ["ok"]
        assert audit[0]["actor"] == "loopback"
        assert {e["action"] for e in audit} == {"dead_letter.replay"}
        assert all(e["targets"] == [job_id] for e in audit)
        assert http.post("/api/queues/mail/pause").json()["changed"] is True  # via app.queues
    # The dashboard's audit entries and those of app.queues: one logger.
    logged = [(r.name, r.levelname, r.getMessage().split(" ")[0]) for r in caplog.records
              if r.name.endswith("audit")]
    assert logged == [("soniq.audit", "WARNING", "dead_letter.replay")] * 5 + [
        ("soniq.audit", "INFO", "dead_letter.replay"), ("soniq.audit", "INFO", "queue.pause")]


@memory_only
def test_with_a_key(serve: object) -> None:
    dashboard: Dashboard = serve(api_key=KEY)  # type: ignore[operator]
    job_id = _dead_job(dashboard)
    url = f"/api/dead-letter/{job_id}/replay"
    with dashboard.client() as http:
        for headers in PROXIED:  # proxied and keyless: 401 with a challenge
            response = http.post(url, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = [{"X-Soniq-Key": "wrong"}, {"Authorization": "Bearer wrong"},
                 {"X-Soniq-Key": KEY[:-1]}, {"Authorization": f"Basic {KEY}"}]
        for headers in wrong:
            # A wrong key is refused even from loopback.
            assert http.post(url, headers=headers).status_code == 401, headers
        assert http.get(f"/api/jobs/{job_id}").json()["job"]["status"] == "dead_letter"
        right = http.post(url, headers={"Authorization": f"Bearer {KEY}", **PROXIED[0]})
        assert right.status_code == 200 and right.json() == {"replayed": 1}
        again = http.post(url, headers={"X-Soniq-Key": KEY})
        assert again.json() == {"replayed": 0}
        # Loopback without a key still works when a key is configured.
        assert http.post(url).status_code == 200
        audit = http.get("/api/audit").json()
        assert [(e["actor"], e["outcome"]) for e in audit[:3]] == [
            ("loopback", "not_applied"), ("api-key", "not_applied"), ("api-key", "ok")]
        assert KEY not in str(audit)  # the key itself is never recorded


@memory_only
def test_from_a_real_non_loopback_address(serve: object) -> None:
    address = _outbound_address()
    if address is None:
        pytest.fail("this machine has no non-loopback IPv4 address to test from")
    dashboard: Dashboard = serve(host="0.0.0.0", api_key=KEY,  # type: ignore[operator]
                                 allowed_hosts=[address])
    job_id = _dead_job(dashboard)
    port = dashboard.url.rsplit(":", 1)[1]
    with dashboard.client(base_url=f"http://{address}:{port}") as http:
        url = f"/api/dead-letter/{job_id}/replay"
        # The address is served because it is allowed; a name that resolves to it is not.
        assert http.get("/api/queues", headers={"Host": f"evil.example:{port}"}).status_code == 400
        assert http.post(url).status_code == 401
        assert http.post(url, headers={"X-Soniq-Key": "nope"}).status_code == 401
        assert http.post(url, headers={"X-Soniq-Key": KEY}).json() == {"replayed": 1}
        assert http.get("/api/audit").json()[0]["client"] == address


@memory_only
def test_dns_rebinding_another_host_name_is_refused_before_routing(dashboard: Dashboard) -> None:
    """A page on evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example and
    its own origin, so Origin and Sec-Fetch-Site look same-origin and the peer is loopback. The
    Host check refuses it, reads and writes alike, before any route (or a 404) is reached."""
    job_id = _dead_job(dashboard)
    port = dashboard.url.rsplit(":", 1)[1]
    evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}",
            "Sec-Fetch-Site": "same-origin"}
    with dashboard.client() as http:
        refused = http.post(f"/api/jobs/{job_id}/retry", headers=evil)
        assert refused.status_code == 400, refused.text
        assert "evil.example" in refused.json()["detail"]
        assert "--allowed-host" in refused.json()["detail"]
        assert refused.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        for path in (f"/api/jobs/{job_id}", "/api/queues", "/api/audit", "/", "/jobs",
                     "/static/soniq.js", "/nowhere", "/api/events"):
            assert http.get(path, headers=evil).status_code == 400, path
        for host in ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "0x7f.1"):
            assert http.get("/api/queues", headers={"Host": host}).status_code == 400, host
        assert http.get(f"/api/jobs/{job_id}").json()["job"]["status"] == "dead_letter"
        assert http.get("/api/audit").json() == []  # refused before the write guard ran
        # Loopback names are served: localhost, loopback addresses, any port, any case.
        for host in (f"localhost:{port}", f"LOCALHOST:{port}", f"127.0.0.1:{port}",
                     f"[::1]:{port}", "127.0.0.1", "localhost."):
            assert http.get("/api/queues", headers={"Host": host}).status_code == 200, host
        own = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}",
               "Sec-Fetch-Site": "same-origin"}
        assert http.post(f"/api/jobs/{job_id}/retry", headers=own).json() == {"retried": True}


@memory_only
def test_an_allowed_host_is_served(serve: object) -> None:
    dashboard: Dashboard = serve(allowed_hosts=["Dash.Example.com"])  # type: ignore[operator]
    job_id = _dead_job(dashboard)
    port = dashboard.url.rsplit(":", 1)[1]
    named = {"Host": f"dash.example.com:{port}", "Origin": f"http://dash.example.com:{port}"}
    with dashboard.client() as http:
        assert http.get("/jobs", headers={"Host": "dash.example.com"}).status_code == 200
        assert http.post(f"/api/jobs/{job_id}/retry", headers=named).json() == {"retried": True}
        assert http.get("/", headers={"Host": "other.example.com"}).status_code == 400


def test_allowed_hosts_must_be_host_names() -> None:
    from soniq import Soniq
    from soniq.dashboard import create_dashboard_app
    from soniq.errors import ConfigurationError

    for bad in ("http://dash.example.com", "dash.example.com/x", "a b", ""):
        with pytest.raises(ConfigurationError, match="not a host name"):
            create_dashboard_app(Soniq(backend="memory"), allowed_hosts=[bad])


def test_cli_refuses_a_malformed_allowed_host(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "soniq", "dashboard", "--allowed-host", "https://x.example/",
         "--database-url", f"{tmp_path}/x.db"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "--allowed-host" in result.stderr and "not a host name" in result.stderr
    assert "Traceback" not in result.stderr


@memory_only
def test_cross_site_writes_are_refused_whatever_the_credentials(serve: object) -> None:
    dashboard: Dashboard = serve(api_key=KEY)  # type: ignore[operator]
    job_id = _dead_job(dashboard)
    url = f"/api/dead-letter/{job_id}/replay"
    own = dashboard.url
    with dashboard.client() as http:
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Origin": own.replace("127.0.0.1", "localhost")}):
            for extra in ({}, {"X-Soniq-Key": KEY}):
                response = http.post(url, headers={**headers, **extra})
                assert response.status_code == 403, (headers, extra)
                assert "cross-site" in response.json()["detail"]
            assert http.delete(f"/api/jobs/{job_id}", headers=headers).status_code == 403
        assert http.get(f"/api/jobs/{job_id}").json()["job"]["status"] == "dead_letter"
        # Reads are not writes: a cross-site GET is answered.
        assert http.get("/api/queues", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200
        same = http.post(url, headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 200
        audit = http.get("/api/audit").json()
        assert sum(e["outcome"] == "denied" for e in audit) == 15
        assert "cross-site" in audit[-1]["detail"]


@memory_only
def test_headers_on_every_kind_of_response(dashboard: Dashboard) -> None:
    with dashboard.client() as http:
        for path in ("/", "/jobs", "/api/queues", "/static/soniq.js", "/nowhere", "/api/nowhere",
                     "/api/jobs?limit=0"):
            response = http.get(path)
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert http.get("/api/queues").headers["content-type"] == "application/json"
        assert http.get("/static/soniq.js").headers["content-type"].startswith(
            ("text/javascript", "application/javascript"))


def test_loopback_rules() -> None:
    for host in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "192.0.2.2", "::", "example.com", "", None, "::ffff:10.0.0.1"):
        assert not is_loopback_host(host), host


def test_cli_refuses_a_public_bind_without_a_key(tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SONIQ_DASHBOARD_API_KEY"}
    monkeypatch.delenv("SONIQ_DASHBOARD_API_KEY", raising=False)
    for host in ("0.0.0.0", "192.0.2.2", "::"):
        args = ["dashboard", "--host", host, "--database-url", f"{tmp_path}/x.db"]
        if host == "0.0.0.0":  # the real entry point once, the other addresses in-process
            result = subprocess.run([sys.executable, "-m", "soniq", *args], capture_output=True,
                                    text=True, timeout=60, env=env, check=False)
            code, stderr = result.returncode, result.stderr
        else:
            with pytest.raises(SystemExit) as exit_info:
                main(args)
            code, stderr = exit_info.value.code, capsys.readouterr().err
        assert code == 2, stderr
        assert "without an API key" in stderr
        assert "SONIQ_DASHBOARD_API_KEY" in stderr
