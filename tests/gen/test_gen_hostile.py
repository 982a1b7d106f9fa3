"""`nif gen` against hostile teacher servers (issue 11), end to end through the CLI: credentials
written into `--base-url` never reach a file or the terminal, a redirect is a recorded failure
that names where it pointed (and nothing reaches that host), and a completion the server sent
past `--max-tokens` is a failure, not a row."""

from __future__ import annotations

import json
import logging

import pytest

from data_gen.shards import read_rows
from fake_provider import FakeTeacherServer
from nif_lightning.cli import main

PASSWORD, QUERY_KEY, API_KEY = "SECRETPW-0451", "SECRETQ-9172", "sk-hostile-KEY-338"


def _gen(out, url: str, kind: str, *extra: str) -> int:
    argv = ["gen", "--corpus", "builtin", "--out", str(out), "--num-docs", "4", "--quiet"]
    argv += ["--teacher", kind, "--model", "m", "--base-url", url, "--backoff", "0.01"]
    return main([*argv, "--api-key-env", "NIF_HOSTILE_KEY", "--timeout", "5", *extra])


def _with_credentials(root: str) -> str:
    """`root` (http://host:port/v1) with a password in its userinfo and a key in its query."""
    return root.replace("http://", f"http://user:{PASSWORD}@") + f"?key={QUERY_KEY}"


def _failures(out) -> list[str]:
    lines = (out / "failures.jsonl").read_text().splitlines()
    return [json.loads(line)["reason"] for line in lines]


@pytest.mark.parametrize("kind", ["openai-completions", "anthropic"])
def test_credentials_in_the_base_url_are_never_written_or_printed(
    kind, tmp_path, monkeypatch, capfd, caplog
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("NIF_HOSTILE_KEY", API_KEY if kind == "anthropic" else "")
    with FakeTeacherServer(fail_first=1, faults=("500",)) as server:
        assert _gen(tmp_path / "ok", _with_credentials(server.url), kind) == 0
        assert server.log and all(path.startswith("/v1/") for _, path in server.log)
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["config"]["teacher"]["base_urls"] == [
        _with_credentials(server.url).replace(f"user:{PASSWORD}", "***").replace(QUERY_KEY, "***")
    ]
    assert len(read_rows(tmp_path / "ok")) == 4

    # Nothing listens on port 9: the run stops at once (exit 3), the message names the server.
    dead = _with_credentials("http://127.0.0.1:9/v1")
    assert _gen(tmp_path / "dead", dead, kind, "--max-retries", "0") == 3
    stopped = json.loads((tmp_path / "dead" / "manifest.json").read_text())["stopped"]
    assert "cannot connect to http://***@127.0.0.1:9/v1?key=***" in stopped

    # A redirect to a URL that repeats the credentials: refused, named, never followed.
    with FakeTeacherServer() as elsewhere:
        target = f"http://user:{PASSWORD}@127.0.0.1:{elsewhere.port}"
        with FakeTeacherServer(redirect_to=target) as hostile:
            code = _gen(tmp_path / "moved", _with_credentials(hostile.url), kind)
        assert elsewhere.log == []
    assert code in (1, 3)
    assert all(f"127.0.0.1:{elsewhere.port}" in r for r in _failures(tmp_path / "moved"))

    printed = capfd.readouterr()
    # The fake server's own access log sees the query it was sent, as a provider's would.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    for secret in (PASSWORD, QUERY_KEY, API_KEY):
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), (secret, path)
        assert secret not in printed.out and secret not in printed.err, secret
        assert secret not in logged, secret


def test_a_completion_past_max_tokens_is_a_failure_not_a_row(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("NIF_HOSTILE_KEY", "")
    with FakeTeacherServer(huge_completion=5_000_000) as server:
        code = _gen(tmp_path / "o", server.url, "openai", "--max-tokens", "16")
    assert code in (1, 3) and read_rows(tmp_path / "o") == []
    reasons = _failures(tmp_path / "o")
    assert reasons and all("larger than 4 MiB" in r for r in reasons)
    assert sum(f.stat().st_size for f in (tmp_path / "o").rglob("*") if f.is_file()) < 100_000
    capfd.readouterr()
