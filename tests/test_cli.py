"""The command line: `python server.py` as a real process, and its configuration."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from bench.processes import ServerProcess
from server import parse_config

# -- the command line ------------------------------------------------------------------------


def test_a_public_host_without_a_token_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--host", "0.0.0.0"], environ={})
    assert exit_info.value.code == 2
    assert "without a token" in capsys.readouterr().err
    config = parse_config(["--host", "0.0.0.0"], environ={"RETINUE_API_TOKEN": "t",
                                                         "RETINUE_VERIFICATION_TTL": "60"})
    assert (config.api_token, config.verification_ttl) == ("t", 60.0)


async def test_python_server_py_serves_and_stops_cleanly_on_sigterm(
    pg_dsn: str, tmp_path: Path
) -> None:
    server = ServerProcess(database_url=pg_dsn, log=tmp_path / "server.log", name="solo")
    try:
        await server.start()  # --port 0: its JSON line says which port it bound
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert server.node == "solo"
        log = server.log.read_text()
        assert f"retinue listening on {server.url}\n" in log
        assert json.dumps({"event": "listening", "url": server.url, "node": "solo"},
                          separators=(",", ":")) in log
        async with aiohttp.ClientSession(server.url) as session:
            async with session.get("/readyz") as ready:
                assert ready.status == 200
            async with session.post("/customers/invite", json={"email": "p@x.io"}) as reply:
                assert reply.status == 200, await reply.text()
        assert await server.terminate(within=20) == 0, log
    finally:
        await server.aclose()
