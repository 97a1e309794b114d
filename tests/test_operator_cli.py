"""The operator CLI (edge/cli) against one real `server.py` on PostgreSQL.

Commands run in-process (`edge.cli.run`) on the database (DATABASE_URL) and,
with --url, through the running server's HTTP API; a few run as real
`python server.py ...` processes. One server serves the whole module.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from bench.databases import fresh_database
from bench.polling import eventually
from bench.processes import ROOT, ServerProcess
from edge import cli
from journal import EmbeddedPostgres, NewWorkflow, PostgresJournal
from runtime import partition_of
from runtime.cluster import wake_payload
from server import main as server_main


class Webhook:
    """The server's COMMUNICATION_WEBHOOK_URL: accepts every message, but refuses
    (400: the step gives up at once) those to an email in `refuse`."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        message = await request.json()
        status = 400 if message["email"] in self.refuse else 200
        return web.json_response({}, status=status)


@pytest.fixture(scope="module")
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
async def database(postgres_server_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_server_dsn, "cli") as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def server(
    database: str, webhook: Webhook, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerProcess]:
    process = ServerProcess(database_url=database, name="cli-node",
                            log=tmp_path_factory.mktemp("cli") / "server.log",
                            env={"COMMUNICATION_WEBHOOK_URL": webhook.url})
    try:
        await process.start()
        await process.wait_ready()
        yield process
        assert await process.terminate(within=20) == 0, process.log.read_text()
    finally:
        await process.aclose()


@pytest.fixture(scope="module")
async def journal(database: str) -> AsyncIterator[PostgresJournal]:
    opened = await PostgresJournal.connect(database)
    try:
        yield opened
    finally:
        await opened.aclose()


async def retinue(*argv: str, database: str, env: dict[str, str] | None = None
                  ) -> tuple[int, str]:
    """An operator command in-process: (exit code, stdout)."""
    out = io.StringIO()
    code = await cli.run(list(argv), {"DATABASE_URL": database, **(env or {})}, out)
    return code, out.getvalue()


async def retinue_json(*argv: str, database: str, env: dict[str, str] | None = None) -> Any:
    code, out = await retinue(*argv, "--json", database=database, env=env)
    assert code == 0, out
    return json.loads(out)


async def invite(server: ServerProcess, email: str) -> str:
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/customers/invite", json={"email": email}) as reply:
            assert reply.status == 200, await reply.text()
            return str((await reply.json())["workflow_id"])


async def status_becomes(journal: PostgresJournal, workflow_id: str, status: str) -> None:
    async def reached() -> bool:
        row = await journal.get_workflow(workflow_id)
        return row is not None and row.status == status

    await eventually(reached, within=20, what=f"workflow {workflow_id} to be {status}")


async def child_of(journal: PostgresJournal, workflow_id: str) -> str:
    async def started() -> list[Any] | None:
        # The invite's 200 comes with its write; the child starts a commit later.
        return await journal.children(workflow_id) or None

    children = await eventually(started, within=10, what=f"a child of {workflow_id}")
    return str(children[0].id)


# -- reading ---------------------------------------------------------------------------


async def test_workflows_list_and_get_in_text_and_json_on_both_targets(
    server: ServerProcess, journal: PostgresJournal, database: str
) -> None:
    invite_id = await invite(server, "list-a@example.com")
    child = await child_of(journal, invite_id)
    await status_becomes(journal, child, "completed")

    listed = await retinue_json("workflows", "list", "--customer", "list-a@example.com",
                                database=database)
    assert {w["id"] for w in listed["workflows"]} == {invite_id, child}
    via_url = await retinue_json("workflows", "list", "--customer", "list-a@example.com",
                                 "--url", server.url, database=database)
    assert via_url == listed  # one JSON shape, whichever way it was read

    code, text = await retinue("workflows", "list", "--status", "waiting", database=database)
    assert code == 0 and text.startswith("ID ") and invite_id in text and child not in text
    page = await retinue_json("workflows", "list", "--limit", "1", database=database)
    assert len(page["workflows"]) == 1 and page["next_cursor"]
    code, text = await retinue("workflows", "list", "--limit", "1", database=database)
    assert f"--cursor {page['next_cursor']}" in text
    later = await retinue_json("workflows", "list", "--since", "2999-01-01T00:00:00Z",
                               database=database)
    assert later["workflows"] == []

    got = await retinue_json("workflows", "get", invite_id, database=database)
    assert got["id"] == invite_id and got["status"] == "waiting"
    assert got["steps"][0]["status"] == "completed"
    assert [c["id"] for c in got["children"]] == [child]
    got_url = await retinue_json("workflows", "get", invite_id, "--url", server.url,
                                 database=database)
    assert got_url["steps"] == got["steps"] and got_url["children"] == got["children"]
    code, text = await retinue("workflows", "get", child, database=database)
    assert code == 0 and "status:" in text and "completed" in text
    assert "steps (" in text and "communicate.deliver" in text and "children (0):" in text


# -- acting: cancel, retry, redeliver -------------------------------------------------------


async def test_cancel_takes_effect_on_the_running_server(
    server: ServerProcess, journal: PostgresJournal, database: str
) -> None:
    on_db = await invite(server, "cancel-db@example.com")
    on_url = await invite(server, "cancel-url@example.com")
    await status_becomes(journal, on_db, "waiting")
    await status_becomes(journal, on_url, "waiting")

    code, text = await retinue("workflows", "cancel", on_db, database=database)
    assert code == 0 and f"cancel requested for 1 workflow(s): {on_db}" in text
    await status_becomes(journal, on_db, "cancelled")  # the server ran it: it woke up

    reply = await retinue_json("workflows", "cancel", on_url, "--url", server.url,
                               database=database)
    assert reply["workflows"] == [on_url] and reply["action"] == "cancel"
    await status_becomes(journal, on_url, "cancelled")

    # Finished: the journal refuses, on either target.
    assert (await retinue("workflows", "cancel", on_db, database=database))[0] == 1
    assert (await retinue("workflows", "cancel", on_db, "--url", server.url,
                          database=database))[0] == 1


async def test_retry_resumes_a_failed_workflow_on_the_running_server(
    server: ServerProcess, journal: PostgresJournal, database: str, webhook: Webhook
) -> None:
    emails = ["retry-db@example.com", "retry-url@example.com"]
    webhook.refuse.update(emails)
    children = [await child_of(journal, await invite(server, email)) for email in emails]
    for child in children:
        await status_becomes(journal, child, "failed")
    webhook.refuse.clear()

    code, text = await retinue("workflows", "retry", children[0], database=database)
    assert code == 0 and f"retry recorded for {children[0]}" in text
    await status_becomes(journal, children[0], "completed")
    reply = await retinue_json("workflows", "retry", children[1], "--url", server.url,
                               database=database)
    assert reply == {"workflow_id": children[1], "action": "retry", "workflows": [children[1]],
                     "status_url": f"/workflows/{children[1]}"}
    await status_becomes(journal, children[1], "completed")

    assert (await retinue("workflows", "retry", children[0], database=database))[0] == 1


async def _poison(journal: PostgresJournal) -> str:
    """A workflow no node can run (its type is unknown): its actor crashes until
    its message is dead-lettered."""
    actor_key = f"cli-poison:{uuid.uuid4()}"
    workflow = NewWorkflow(id=str(uuid.uuid4()), name="no_such_workflow", actor_key=actor_key,
                           partition=partition_of(actor_key), trace_id=str(uuid.uuid4()))
    await journal.create_workflow(workflow)
    await journal.wake([wake_payload(actor_key, workflow.id)])
    return workflow.id


async def _letter_for(journal: PostgresJournal, workflow_id: str, *, not_id: int = 0) -> int:
    async def letter() -> int | None:
        for dead in await journal.list_dead_letters():
            if dead.message.get("workflow_id") == workflow_id and dead.id != not_id:
                return dead.id
        return None

    return await eventually(letter, within=20, what=f"a dead letter for {workflow_id}")


async def test_dead_letters_list_and_redeliver_reach_the_running_server(
    server: ServerProcess, journal: PostgresJournal, database: str
) -> None:
    poisoned = await _poison(journal)
    first = await _letter_for(journal, poisoned)

    listed = await retinue_json("dead-letters", "list", database=database)
    assert first in [d["id"] for d in listed["dead_letters"]]
    assert listed == await retinue_json("dead-letters", "list", "--url", server.url,
                                        database=database)
    code, text = await retinue("dead-letters", "list", database=database)
    assert code == 0 and poisoned in text and "UnknownWorkflowTypeError" in text

    code, text = await retinue("dead-letters", "redeliver", str(first), database=database)
    assert code == 0 and f"redelivered dead letter {first} to workflow {poisoned}" in text
    # The server ran it again (it crashed again, so a new letter came).
    second = await _letter_for(journal, poisoned, not_id=first)
    assert (await retinue("dead-letters", "redeliver", str(first), database=database))[0] == 1

    reply = await retinue_json("dead-letters", "redeliver", str(second), "--url", server.url,
                               database=database)
    assert reply["id"] == second and reply["workflow_id"] == poisoned
    await _letter_for(journal, poisoned, not_id=second)
    assert (await retinue("dead-letters", "redeliver", str(second), "--url", server.url,
                          database=database))[0] == 1


# -- fork, export and replay-check ---------------------------------------------------------


async def _completed_child(server: ServerProcess, journal: PostgresJournal, email: str) -> str:
    child = await child_of(journal, await invite(server, email))
    await status_becomes(journal, child, "completed")
    return child


async def test_fork_starts_a_finished_workflow_again_on_the_running_server(
    server: ServerProcess, journal: PostgresJournal, database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    child = await _completed_child(server, journal, "fork@example.com")
    last = max(s.seq for s in await journal.load_steps(child))

    code, text = await retinue("workflows", "fork", child, "--from-seq", str(last),
                               database=database)
    assert code == 0 and f"forked {child} from seq {last}" in text
    forked = text.splitlines()[0]  # the new workflow's id, first
    row = await journal.get_workflow(forked)
    assert row is not None and (row.forked_from, row.forked_at_seq) == (child, last)
    assert [s.seq for s in await journal.load_steps(forked)][: last - 1] == list(range(1, last))
    await status_becomes(journal, forked, "completed")  # the server was woken and ran it

    reply = await retinue_json("workflows", "fork", child, "--from-seq", "1", "--url",
                               server.url, database=database)
    assert (reply["forked_from"], reply["from_seq"]) == (child, 1)
    assert reply["status_url"] == f"/workflows/{reply['workflow_id']}"
    await status_becomes(journal, reply["workflow_id"], "completed")


async def test_fork_refusals_exit_1_on_both_targets(
    server: ServerProcess, journal: PostgresJournal, database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    waiting = await invite(server, "fork-refused@example.com")
    child = await child_of(journal, waiting)
    await status_becomes(journal, waiting, "waiting")
    await status_becomes(journal, child, "completed")
    last = max(s.seq for s in await journal.load_steps(child))
    capsys.readouterr()
    for target in ([], ["--url", server.url]):
        fork = ("workflows", "fork")
        assert (await retinue(*fork, waiting, "--from-seq", "1", *target,
                              database=database))[0] == 1
        assert "cancel it first" in capsys.readouterr().err
        assert (await retinue(*fork, child, "--from-seq", str(last + 2), *target,
                              database=database))[0] == 1
        assert f"choose a seq from 1 to {last + 1}" in capsys.readouterr().err
        assert (await retinue(*fork, str(uuid.uuid4()), "--from-seq", "1", *target,
                              database=database))[0] == 1
        refusal = "404: no workflow with id" if target else "no such workflow"
        assert refusal in capsys.readouterr().err
    assert await journal.forks(child) == [] and await journal.forks(waiting) == []


async def test_export_writes_a_history_on_both_targets(
    server: ServerProcess, journal: PostgresJournal, database: str, tmp_path: Path
) -> None:
    invite_id = await invite(server, "export@example.com")
    child = await child_of(journal, invite_id)
    await status_becomes(journal, child, "completed")

    exported = await retinue_json("workflows", "export", child, database=database)
    assert exported["format"] == "retinue.history/1" and exported["workflow"]["id"] == child
    assert [s["seq"] for s in exported["steps"]] == [
        s.seq for s in await journal.load_steps(child)]
    assert exported["workflow"]["input"]["token"] == "<redacted>"  # the invitation's secret
    assert await retinue_json("workflows", "export", child, "--url", server.url,
                              database=database) == exported

    code, text = await retinue("workflows", "export", child, database=database)
    assert code == 0 and json.loads(text) == exported  # text is the JSON too
    file = tmp_path / "history.json"
    code, text = await retinue("workflows", "export", child, "--url", server.url, "-o",
                               str(file), database=database)
    assert code == 0 and f"to {file}" in text and json.loads(file.read_text()) == exported
    written = await retinue_json("workflows", "export", child, "-o", str(file),
                                 database=database)
    assert written["steps"] == len(exported["steps"]) and written["file"] == str(file)

    missing = str(uuid.uuid4())
    for target in ([], ["--url", server.url]):
        assert (await retinue("workflows", "export", missing, *target,
                              database=database))[0] == 1
    assert (await retinue("workflows", "export", child, "-o", str(tmp_path / "no" / "f"),
                          database=database))[0] == 1


async def test_replay_check_passes_the_served_code_and_names_what_other_code_breaks(
    server: ServerProcess, journal: PostgresJournal, database: str
) -> None:
    waiting = await invite(server, "replay@example.com")
    await status_becomes(journal, waiting, "waiting")
    await status_becomes(journal, await child_of(journal, waiting), "completed")

    code, text = await retinue("replay-check", "--workflow", "invite_customer",
                               "--finished", "20", database=database)
    assert code == 0 and text.rstrip().endswith("ok: this code replays them all"), text
    report = await retinue_json("replay-check", "--id", waiting, database=database)
    assert report["ok"] and [r["outcome"] for r in report["results"]] == ["replays"]
    version = report["results"][0]["version"]
    assert version  # the version the workflow was started under

    # The code of the next deploy, chosen as the server would choose it: a step
    # inserted before the wait, with no patch.
    next_code = {"RETINUE_WORKFLOWS": "tests.deploy_versions:VersionC"}
    code, text = await retinue("replay-check", "--id", waiting, database=database,
                               env=next_code)
    [line, summary] = text.splitlines()
    assert code == 1, text
    assert line.startswith(f"MISMATCH {waiting} invite_customer version={version} seq=")
    assert "the code asks for 'step verify.audit', the journal holds" in line
    assert summary.endswith("1 would not replay: deploying this code parks them")
    code, text = await retinue("replay-check", "--id", waiting, "--json", database=database,
                               env=next_code)
    [result] = json.loads(text)["results"]
    assert code == 1 and (result["workflow_id"], result["outcome"], result["ok"]) == (
        waiting, "mismatch", False)
    assert result["expected"] == "step verify.audit" and result["found"]
    assert (await retinue("replay-check", database=database,
                          env={"RETINUE_WORKFLOWS": "tests.nowhere:Nothing"}))[0] == 2


async def test_replay_check_names_unknown_workflows_and_missing_ids(
    journal: PostgresJournal, database: str
) -> None:
    poisoned = await _poison(journal)
    missing = str(uuid.uuid4())
    code, text = await retinue("replay-check", "--id", poisoned, "--id", missing,
                               database=database)
    assert code == 1
    assert f"UNKNOWN {poisoned} no_such_workflow version=- seq=-: no workflow named" in text
    assert f"MISSING {missing} - version=- seq=-: no workflow has this id" in text
    bad = await retinue("replay-check", database=database,
                        env={"RETINUE_VERIFICATION_TTL": "soon"})
    assert bad[0] == 2


# -- the cluster and the projections ------------------------------------------------------


async def test_nodes_shows_the_running_node_with_every_partition(
    server: ServerProcess, database: str
) -> None:
    reply = await retinue_json("nodes", database=database)
    [node] = [n for n in reply["nodes"] if n["node"] == "cli-node"]
    assert node["live"] and len(node["partitions"]) == 256 and reply["unowned"] == []
    assert all(epoch >= 1 for epoch in node["epochs"].values())
    code, text = await retinue("nodes", database=database)
    assert code == 0 and "cli-node" in text and "0-255" in text and "1 live node(s)" in text


async def test_rebuild_projections_while_the_server_runs(
    server: ServerProcess, journal: PostgresJournal, database: str
) -> None:
    await status_becomes(journal, await invite(server, "rebuild@example.com"), "waiting")
    before = {d.id: d.data for d in await journal.list_documents("customer")}
    reply = await retinue_json("rebuild-projections", database=database)
    assert reply["rebuilt"]["customer"] == len(before)
    assert {d.id: d.data for d in await journal.list_documents("customer")} == before
    code, text = await retinue("rebuild-projections", database=database)
    assert code == 0 and text.startswith("rebuilt from the event log: ")


async def test_prune_removes_finished_workflows_steps_and_frees_expired_keys(
    server: ServerProcess, journal: PostgresJournal, database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # After the tests that read finished workflows' steps: this prunes them all.
    waiting = await invite(server, "prune@example.com")
    child = await child_of(journal, waiting)
    await status_becomes(journal, child, "completed")
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/customers/invite", json={"email": "prune-key@example.com"},
                                headers={"Idempotency-Key": f"prune-{uuid.uuid4()}"}) as reply:
            keyed = str((await reply.json())["workflow_id"])
    assert (await journal.get_workflow(keyed)).idempotency_key  # type: ignore[union-attr]
    assert await journal.load_steps(child)

    code, text = await retinue("prune", "--older-than", "7d", database=database)
    assert code == 0 and "pruned 0 workflow(s)" in text and "expired 0 idempotency key" in text
    reply = await retinue_json("prune", "--older-than", "0s", database=database,
                               env={"RETINUE_IDEMPOTENCY_TTL": "0.001"})
    assert reply["workflows_pruned"] >= 1 and reply["idempotency_keys_expired"] >= 1
    pruned = await journal.get_workflow(child)
    assert pruned is not None and pruned.pruned_at is not None
    assert await journal.load_steps(child) == []
    assert (await journal.get_workflow(keyed)).idempotency_key is None  # type: ignore[union-attr]
    unpruned = await journal.get_workflow(waiting)
    assert unpruned is not None and unpruned.pruned_at is None  # waiting: kept whole
    assert await journal.load_steps(waiting)

    # Its steps are gone: a fork from a later seq is refused on both targets, naming it.
    capsys.readouterr()
    for target in ([], ["--url", server.url]):
        assert (await retinue("workflows", "fork", child, "--from-seq", "2", *target,
                              database=database))[0] == 1
        assert "pruned on" in capsys.readouterr().err
    assert (await retinue("prune", "--older-than", "1d", database=database,
                          env={"RETINUE_IDEMPOTENCY_TTL": "-1"}))[0] == 2


# -- exit codes and help ------------------------------------------------------------------


async def test_an_unknown_id_or_a_refusal_exits_1(
    server: ServerProcess, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(uuid.uuid4())
    for target in ([], ["--url", server.url]):
        assert (await retinue("workflows", "get", missing, *target, database=database))[0] == 1
        assert "no workflow" in capsys.readouterr().err
        assert (await retinue("workflows", "retry", missing, *target, database=database))[0] == 1
        assert (await retinue("dead-letters", "redeliver", "999999", *target,
                              database=database))[0] == 1
    # The server's 400 (a value it cannot take) is bad usage, as it is on the database.
    assert (await retinue("workflows", "list", "--cursor", "x1", "--url", server.url,
                          database=database))[0] == 2


@pytest.mark.parametrize("argv", [
    ["frobnicate"],
    ["workflows"],
    ["workflows", "list", "--limit", "0"],
    ["workflows", "list", "--status", "sleeping"],
    ["workflows", "list", "--since", "yesterday"],
    ["dead-letters", "redeliver", "twelve"],
    ["workflows", "fork", "0b6f"],
    ["workflows", "fork", "0b6f", "--from-seq", "0"],
    ["replay-check", "--finished", "-1"],
    ["replay-check", "--timeout", "0"],
    ["prune"],
    ["prune", "--older-than", "soon"],
])
async def test_bad_usage_exits_2(argv: list[str], database: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        await retinue(*argv, database=database)
    assert exit_info.value.code == 2


async def test_bad_values_the_journal_sees_exit_2(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["--cursor", "not-a-cursor"], ["--customer", "nobody"],
                 ["--customer", "not-an-email@"], ["--actor", "a", "--customer", "b@c.io"]):
        assert (await retinue("workflows", "list", *argv, database=database))[0] == 2
    for command in (["nodes"], ["rebuild-projections"], ["replay-check"],
                    ["prune", "--older-than", "1d"]):  # no route: the database only
        assert (await retinue(*command, "--url", "http://127.0.0.1:8080", database=database)
                )[0] == 2
        assert f"`retinue {command[0]}` has no HTTP route" in capsys.readouterr().err


async def _count(args: argparse.Namespace, target: cli.Target) -> cli.Output:
    workflows = await target.database().count_workflows_by_status()
    return cli.Output(workflows, f"{sum(workflows.values())} workflows")


def _register_count(commands: cli.Commands) -> None:
    """What another module adds: a subcommand in an existing group."""
    commands.group("workflows").add("count", _count, help="count them", server=False,
                                    examples="  retinue workflows count")


async def test_a_module_adds_a_subcommand_to_an_existing_group(database: str) -> None:
    parser = cli.program.build_parser([*cli.GROUPS, _register_count], {})
    out = io.StringIO()
    code = await cli.program.run(parser, ["workflows", "count", "--json"],
                                 {"DATABASE_URL": database}, out)
    assert code == 0 and isinstance(json.loads(out.getvalue()), dict)
    with pytest.raises(SystemExit):  # and the group's other commands are still there
        await cli.program.run(parser, ["workflows", "list", "--help"], {}, out)


async def test_an_unreachable_database_or_server_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = await retinue("workflows", "list", database="postgresql://127.0.0.1:1/none",
                            env={"RETINUE_DB_TIMEOUT": "2"})
    assert code == 3 and "cannot reach the database (DATABASE_URL)" in capsys.readouterr().err
    code, _ = await retinue("workflows", "list", "--url", "http://127.0.0.1:1", database="")
    assert code == 3 and "cannot reach the server" in capsys.readouterr().err
    code, _ = await retinue("nodes", "--data-dir", str(tmp_path / "none"), database="")
    assert code == 3 and "no Retinue database" in capsys.readouterr().err


def _subcommands(parser: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            if name != "serve":
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_every_command_has_help_with_examples_and_exit_codes(
    capsys: pytest.CaptureFixture[str]
) -> None:
    commands = list(_subcommands(cli.program.build_parser(cli.GROUPS, {})))
    assert {("workflows", "list"), ("workflows", "get"), ("workflows", "cancel"),
            ("workflows", "retry"), ("dead-letters", "list"), ("dead-letters", "redeliver"),
            ("nodes",), ("rebuild-projections",), ("workflows", "fork"),
            ("workflows", "export"), ("replay-check",), ("prune",)} <= set(commands)
    for argv in [(), *commands]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, "--help"], {})
        assert exit_info.value.code == 0
        help_text = capsys.readouterr().out
        assert "examples:\n  retinue " + " ".join(argv) in help_text, argv
        assert "3  cannot reach the database or the server" in help_text


class _OddServer:
    """A server that answers what a Retinue server should not: a 401, a body that
    is not the reply, an error that is not JSON."""

    @staticmethod
    async def unauthorized(request: web.Request) -> web.Response:
        return web.json_response({"error": "missing or wrong bearer token"}, status=401)

    @staticmethod
    async def garbled(request: web.Request) -> web.Response:
        return web.Response(text="<html>a proxy's page</html>")

    @staticmethod
    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")


async def test_odd_answers_from_url_are_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    app = web.Application()
    app.router.add_get("/workflows", _OddServer.unauthorized)
    app.router.add_get("/dead-letters", _OddServer.garbled)
    app.router.add_post("/workflows/w1/cancel", _OddServer.bad_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        assert (await retinue("workflows", "list", "--url", url, database=""))[0] == 1
        assert "check --token" in capsys.readouterr().err
        assert (await retinue("dead-letters", "list", "--url", url, database=""))[0] == 1
        assert "does not understand" in capsys.readouterr().err
        assert (await retinue("workflows", "cancel", "w1", "--url", url, database=""))[0] == 1
        assert "502: bad gateway" in capsys.readouterr().err
    finally:
        await runner.cleanup()


# -- the program: `python server.py CMD` and `retinue` ------------------------------------------


def test_serving_is_the_default_command() -> None:
    assert not cli.wants_cli([]) and not cli.wants_cli(["--port", "0"])
    assert not cli.wants_cli(["serve", "--port", "0"])
    assert cli.wants_cli(["--help"]) and cli.wants_cli(["nodes"]) and cli.wants_cli(["typo"])


def test_server_main_dispatches_operator_commands(tmp_path: Path) -> None:
    # No database in that folder: exit 3, through server.main and the blocking cli.main.
    assert server_main(["nodes", "--data-dir", str(tmp_path)]) == 3
    assert cli.main(["workflows", "list", "--data-dir", str(tmp_path)], {}) == 3



async def test_server_py_runs_operator_commands_and_serving_stays_the_default(
    server: ServerProcess, database: str
) -> None:
    env = {**os.environ, "DATABASE_URL": database}
    done = await anyio.run_process([sys.executable, "server.py", "nodes", "--json"],
                                   cwd=ROOT, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert "cli-node" in [n["node"] for n in json.loads(done.stdout)["nodes"]]
    usage = await anyio.run_process([sys.executable, "server.py", "frobnicate"], cwd=ROOT,
                                    env=env, check=False)
    assert usage.returncode == 2 and b"invalid choice: 'frobnicate'" in usage.stderr
    # `serve` and no command reach the same server configuration.
    for argv in (["serve", "--host", "0.0.0.0"], ["--host", "0.0.0.0"]):
        refused = await anyio.run_process([sys.executable, "server.py", *argv], cwd=ROOT,
                                          env={**env, "RETINUE_API_TOKEN": ""}, check=False)
        assert refused.returncode == 2 and b"without a token" in refused.stderr


async def test_data_dir_attaches_to_a_running_embedded_server_or_starts_one(
    tmp_path: Path
) -> None:
    folder = tmp_path / "pg"
    embedded = EmbeddedPostgres(folder)
    await anyio.to_thread.run_sync(embedded.start)  # as a server would
    try:
        code, out = await retinue("nodes", "--json", "--data-dir", str(folder), database="")
        assert code == 0 and json.loads(out)["nodes"] == []
        assert embedded.is_running()  # it was the "server's": left running
    finally:
        await anyio.to_thread.run_sync(embedded.stop)
    code, out = await retinue("rebuild-projections", "--data-dir", str(folder), database="")
    assert code == 0 and "0 customer, 0 message" in out
    assert not embedded.is_running()  # started for the command, stopped after it
