"""The run's configuration: frozen dataclasses instead of the 2016 global ``ServerInfo``.

A :class:`RunConfig` says how the coordinator runs (who works, where it listens, what it
bounds); the job's own settings live in the job's config object (for example
:class:`mu.apps.png2y4m.Png2Y4MConfig`). Both are frozen: nothing changes them during a run.
Every check raises :class:`~mu.errors.ConfigError` naming the field and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mu.errors import ConfigError
from mu.faults import FaultSpec
from mu.protocol import DEFAULT_MAX_FRAME

__all__ = ["DEFAULT_PORT", "RunConfig"]

DEFAULT_PORT = 13579


@dataclass(frozen=True)
class RunConfig:
    """How a coordinated run goes.

    Attributes:
        num_actors: how many actors (chunks of work) the run has (``-n``).
        offset: the first actor number (``-o``): actors are ``offset .. offset+n-1``.
        actors: run exactly these actor numbers instead (``-N a,b,c``).
        extra_workers: spare workers launched beyond one per actor (``-X``).
        host: the address the coordinator listens on.
        port: the port it listens on (``-t``; 0 picks a free one).
        worker_deadline: seconds an actor may take from its start (``-m``), or None.
        run_deadline: seconds the whole run may take, or None.
        handshake_timeout: seconds a TLS handshake may take.
        hello_timeout: seconds between the handshake and the worker's hello.
        max_frame: the largest frame accepted from a worker.
        max_send_buffer: bytes queued for one worker before it counts as not reading.
        max_connections: connections open at once; more are refused.
        max_handshakes: TLS handshakes in progress at once. The listener never pauses:
            a connection whose whole ClientHello has arrived while this many are in
            progress waits, accepted, in a queue (idle and slow peers take no place). A
            handshake holds full-size record buffers and CPU-bound work on our side, so a
            few dozen keep the loop busy over loopback or within a region (16 by default,
            the fewest the local benchmark showed at full speed). Over a long round trip
            each handshake waits a round trip for the worker, so admission is at most
            max_handshakes per round trip: the CLI uses 128 for workers on AWS (1,600 a
            second at 80 ms).
        max_unauthenticated: connections not yet authenticated (accepted, but whose TLS
            handshake or hello has not finished) held at once. When the bound is reached,
            the oldest such connection is dropped to admit the newcomer, so strangers can
            never lock a worker out (a worker finishes its handshake in a round trip or two
            and is dropped only if this many connections arrive meanwhile; it then dials
            again).
        max_unauthenticated_per_address: the same bound per source address (the oldest
            from that address is dropped). On the local backend every worker comes from
            127.0.0.1, so it must exceed the local burst (a 1,000-worker run) and, to keep
            a crowd from one address from churning, the crowd (2,200 strangers held on
            loopback, see docs/benchmarks.md).
        client_hello_timeout: seconds from accept until the peer's TLS ClientHello must
            have arrived whole (an idle or one-byte-a-second peer is dropped then).
        tls: mutual TLS (False only for debugging).
        retries: how many times an actor whose worker failed is given to a new worker
            (launched for it) before the actor counts as failed (``--retries``).
        arrival_timeout: seconds after a launch within which its workers must connect;
            actors still waiting then fail instead of waiting forever.
        faults: rehearsal faults to inject (``--faults``), or None for none.
        speculate: launch a backup worker for an actor whose current state has lasted this
            many times the median of that state among finished attempts (``--speculate``);
            None: never. The first attempt to finish wins; the other is told to quit.
        speculate_after: ... and at least this many seconds.
    """

    num_actors: int = 1
    offset: int = 0
    actors: Sequence[int] | None = None
    extra_workers: int = 0
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    worker_deadline: float | None = None
    run_deadline: float | None = None
    handshake_timeout: float = 10.0
    hello_timeout: float = 10.0
    max_frame: int = DEFAULT_MAX_FRAME
    max_send_buffer: int = 16 * 1024 * 1024
    max_connections: int = 20_000
    max_handshakes: int = 16
    max_unauthenticated: int = 8192
    max_unauthenticated_per_address: int = 4096
    client_hello_timeout: float = 3.0
    tls: bool = True
    retries: int = 2
    arrival_timeout: float = 300.0
    faults: FaultSpec | None = None
    speculate: float | None = None
    speculate_after: float = 1.0

    def __post_init__(self) -> None:
        def positive(name: str, minimum: float = 1) -> None:
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ConfigError(f"{name} must be >= {minimum}, got {value}")

        positive("num_actors")
        positive("offset", 0)
        positive("extra_workers", 0)
        positive("retries", 0)
        positive("max_frame")
        positive("max_send_buffer")
        positive("max_connections")
        positive("max_handshakes")
        positive("max_unauthenticated")
        positive("max_unauthenticated_per_address")
        if self.speculate is not None and self.speculate <= 1:
            raise ConfigError(f"speculate must be a factor above 1, got {self.speculate}")
        for name in ("worker_deadline", "run_deadline", "handshake_timeout", "hello_timeout",
                     "arrival_timeout", "speculate_after", "client_hello_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not between 0 and 65535")
        if self.actors is not None:
            actors = tuple(self.actors)
            if not actors:
                raise ConfigError("the explicit actor list is empty")
            if any(a < 0 for a in actors):
                raise ConfigError(f"actor numbers must be >= 0, got {list(actors)}")
            if len(set(actors)) != len(actors):
                raise ConfigError(f"actor numbers repeat in {list(actors)}")
            object.__setattr__(self, "actors", actors)

    def actor_numbers(self) -> tuple[int, ...]:
        """The work queue: the explicit list, or ``offset .. offset+num_actors-1``."""
        if self.actors is not None:
            return tuple(self.actors)
        return tuple(range(self.offset, self.offset + self.num_actors))

    @property
    def workers_to_launch(self) -> int:
        """One worker per actor plus the spares."""
        return len(self.actor_numbers()) + self.extra_workers
