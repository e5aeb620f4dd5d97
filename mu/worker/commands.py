"""The worker's command table, its values, and command templating.

Theory of operation
-------------------
The coordinator sends text commands ``name:args``; :func:`dispatch` looks ``name`` up in
:data:`COMMANDS` (a plain dict, the contract of DESIGN §3) and queues the response(s) through
the worker's ``send`` function. The table and its exact responses::

    set:k:v              OK:SET(k)
    seti:k:n             OK:SETI(k)          FAIL(seti: 'x' is not an integer)
    get:k                OK:GET(v)           FAIL(no such variable k)
    geti:k               INFO:k:v, OK:GETI(k)
    dump_vals:           OK:DUMP_VALS:{json}      (secrets redacted)
    retrieve:[key\\0file] OK:RETRIEVE(bucket/key)  FAIL(retrieve s3://bucket/key: Code: msg)
    upload:[key\\0file]   OK:UPLOAD(bucket/key)    FAIL(upload s3://bucket/key: Code: msg)
    run:[cmd]            OK:RETVAL(n):OUTPUT(...):COMMAND(...)   for every exit status n
                         FAIL(run: cannot start ...)              the shell could not start
    echo:x               OK:ECHO(x)
    connect:h:p:first    OK:CONNECT(h:p:first)
    close_connect:       OK:CLOSE_CONNECT
    link:NAME:me:partner OK:LINK(NAME)                          to the payload's relay
    link:NAME:h:p:me:partner
                         OK:LINK(NAME)                          to the relay at h:p
    send:NAME:path       OK:SEND(NAME:size:sha256)
    recv:NAME:path       OK:RECV(NAME:size:sha256)
                         FAIL(recv NAME: no file within 30 s)
    close_link:NAME      OK:CLOSE_LINK(NAME)
    quit:                (no response; the session closes)
    fault:plan           (no response) arms a rehearsal fault, only in a run with faults
                         (payload ``faults``: 1); see :mod:`mu.faults`
    anything else        FAIL(no such command 'name')

While a peer link is open, frames from the peer arrive as ``INFO:peer:<text>`` and its end
as ``INFO:peer_closed:host:port`` (asynchronous: they never answer a command).

Named links go through the relay (:class:`mu.worker.peer.Links`, which documents the framing
and the threads): ``link`` dials it and says ``HELLO_STATE:<token>:<me>:<partner>``; ``send``
sends a file (its path confined like ``upload``'s); ``recv`` moves the next file that arrived
on the link to its path (confined like ``retrieve``'s), waiting at most ``recv_timeout``
seconds (a value; default the session's idle timeout). A file's arrival is told once as
``INFO:file:NAME:size:sha256`` and a link's end as ``INFO:link_closed:NAME:reason``. A link
name that is not open answers ``FAIL(<command>: no link named NAME)``.

A command whose arguments are malformed answers ``FAIL(<name>: <what was wrong>)``; the worker
keeps serving after every FAIL.

``run`` answers ``OK:RETVAL(n):...`` whatever the exit status ``n`` (negative: killed by
signal ``-n``): an exit status is data a job may branch on (an ``IfElseState`` on the return
value, a loop until ``OK:RETVAL(0)``), not a failure of the worker. ``FAIL(...)`` is kept for
what the worker itself could not do: an unknown command, no command to run, a shell that
cannot start, a path outside the private directory.

Values (``vals``) start from the invocation (``bucket``, ``region``, ``nonblock``,
``bg_silent``, ``cmdinfile``/``cmdoutfile``/``cmdquality`` from ``infile``/``outfile``/
``quality``, ``cmdvars``/``cmdargs`` from ``vars``/``args``); ``set``/``seti`` change them.
``retrieve`` reads ``bucket``, ``inkey``, ``targfile``; ``upload`` reads ``fromfile``,
``bucket``, ``outkey``. File paths have ``##TMPDIR##`` replaced by the invocation's private
temporary directory; a relative path is taken relative to it. Once symbolic links and ``..``
are resolved, the path must lie inside that directory; ``upload`` may also read from the
function's own directory (read only). Anything else answers
``FAIL(retrieve: targfile '../x' resolves to /tmp/x, outside the worker's private directory
...)`` and transfers nothing (:func:`confined_path`).

Nonblock: when ``nonblock`` is 1, ``retrieve``, ``upload``, ``run``, ``send`` and ``recv``
first answer ``OK:RETRIEVING(bucket/key)``, ``OK:UPLOADING(bucket/key)``, ``OK:RUNNING(cmd)``,
``OK:SENDING(NAME)`` or ``OK:RECEIVING(NAME)`` (unless
``bg_silent`` is 1), then do the work in a background job and send the same final response as
in blocking mode when it ends. The arguments of a job are fixed when the command arrives, so
later ``set`` commands do not change a running job.

Templating (:func:`render`): in the command, ``##INFILE##``, ``##OUTFILE##`` and
``##QUALITY##`` are replaced by ``cmdinfile``, ``cmdoutfile`` and ``cmdquality``; ``cmdvars``
is put in front and ``cmdargs`` after; ``##TMPDIR##`` is replaced last. Commands run through
``/bin/sh`` with the function's directory (where the binary sits) as working directory. A
command ends when its shell exits; whatever it left running is killed then
(:mod:`mu.worker.jobs`, :mod:`mu.worker.reaper`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from mu.protocol import Retval
from mu.worker.jobs import JobSet
from mu.worker.s3 import S3, TransferError

if TYPE_CHECKING:
    from mu.faults import Fault
    from mu.worker.peer import Links

__all__ = [
    "COMMANDS",
    "REDACTED",
    "SECRET_NAMES",
    "CommandError",
    "Reply",
    "Worker",
    "confined_path",
    "dispatch",
    "expand_path",
    "initial_vals",
    "redacted",
    "render",
]

Val = str | int

SECRET_NAMES: Final = frozenset({"token", "cacert", "wrkcrt", "wrkkey", "key", "secret"})
"""Value names whose values ``dump_vals`` never shows."""
REDACTED: Final = "<redacted>"


class CommandError(Exception):
    """A command cannot be carried out; ``str()`` is the text inside ``FAIL(...)``."""


class Reply:
    """What a handler asks :func:`dispatch` to do (a plain class, not a dataclass: every
    execution environment imports this module, and building a dataclass compiles its
    methods).

    Attributes:
        messages: responses to queue at once, in order.
        job: the slow part (transfer, command), returning the final response; run in the
            background when ``nonblock`` is set, else at once.
        ack: the immediate nonblock answer (``OK:RUNNING(...)``).
        quit: end the session after queuing ``messages``.
    """

    __slots__ = ("ack", "job", "messages", "quit")

    def __init__(
        self,
        messages: tuple[str, ...] = (),
        job: Callable[[], str] | None = None,
        ack: str = "",
        quit: bool = False,
    ) -> None:
        self.messages = messages
        self.job = job
        self.ack = ack
        self.quit = quit


class Worker:
    """The state one invocation's commands act on.

    Args:
        vals: the worker's values (see the module docstring).
        command: the function's command template (``./png2y4m -i -d -o ##OUTFILE## ##INFILE##``).
        tmpdir: the invocation's private temporary directory.
        cwd: where commands run (the function's directory).
        send: thread-safe function queuing one message for the coordinator.
        jobs: the background jobs and subprocesses of this invocation.
        s3: the invocation's S3 client holder.
        connect_peer: opens a peer link ``(host, port, first)``; ``None`` disables ``connect``.
        run_blocking: carries out a blocking job ``(name, job)``: it must send the job's
            result before the next command is served. ``None``: run it here, in the caller.
        links: the invocation's named links; ``None``: made by ``make_links`` when a
            ``link``/``send``/``recv``/``close_link`` command first needs them (so a job that
            uses none never imports :mod:`mu.worker.peer`), or, without ``make_links``,
            those commands are disabled.
        make_links: makes the named links (see ``links``).
        faults_allowed: whether the rehearsal ``fault`` command is served.
    """

    def __init__(
        self,
        vals: dict[str, Val],
        command: str,
        tmpdir: str,
        cwd: str,
        send: Callable[[str], None],
        jobs: JobSet,
        s3: S3,
        connect_peer: Callable[[str, int, str], Any] | None = None,
        run_blocking: Callable[[str, Callable[[], str]], None] | None = None,
        links: Links | None = None,
        make_links: Callable[[], Links] | None = None,
        faults_allowed: bool = False,
    ) -> None:
        self.vals = vals
        self.command = command
        self.tmpdir = tmpdir
        self.cwd = cwd
        self.send = send
        self.jobs = jobs
        self.s3 = s3
        self.connect_peer = connect_peer
        self.run_blocking = run_blocking
        self.links = links
        self.make_links = make_links
        self.faults_allowed = faults_allowed
        self.peer: Any = None
        self.commands_served = 0
        self.fault: Fault | None = None
        self.fault_due = 0  # the value of commands_served at which fault.kind fires

    def fault_fires(self) -> str:
        """The armed fault (``crash``/``hang``/``drop``) if the next command is its moment."""
        fault = self.fault
        if fault is None or not fault.kind or self.commands_served + 1 < self.fault_due:
            return ""
        return fault.kind

    def flag(self, name: str) -> bool:
        """Whether value ``name`` is a non-zero integer (``"1"`` counts as 1)."""
        try:
            return int(self.vals.get(name, 0)) != 0
        except ValueError:
            return False

    def text(self, name: str) -> str:
        """Value ``name`` as text (empty if unset)."""
        return str(self.vals.get(name, ""))


def initial_vals(event: Mapping[str, Any]) -> dict[str, Val]:
    """The values a worker starts with, taken from the invocation payload.

    Args:
        event: the invocation payload (DESIGN §3).

    Returns:
        ``bucket``, ``region``, ``nonblock``, ``bg_silent``, ``cmdinfile``, ``cmdoutfile``,
        ``cmdquality``, ``cmdvars``, ``cmdargs``.
    """

    def num(name: str) -> int:
        try:
            return int(event.get(name) or 0)
        except (TypeError, ValueError):
            return 0

    return {
        "bucket": str(event.get("bucket") or ""),
        "region": str(event.get("region") or ""),
        "nonblock": num("nonblock"),
        "bg_silent": num("bg_silent"),
        "cmdinfile": str(event.get("cmdinfile") or event.get("infile") or ""),
        "cmdoutfile": str(event.get("cmdoutfile") or event.get("outfile") or ""),
        "cmdquality": str(event.get("cmdquality") or event.get("quality") or ""),
        "cmdvars": str(event.get("cmdvars") or event.get("vars") or ""),
        "cmdargs": str(event.get("cmdargs") or event.get("args") or ""),
    }


def render(template: str, vals: Mapping[str, Val], tmpdir: str) -> str:
    """Fill in a command template (see the module docstring for the order).

    Args:
        template: the command with ``##INFILE##``-style placeholders.
        vals: the worker's values.
        tmpdir: the private temporary directory (``##TMPDIR##``, substituted last).

    Returns:
        The shell text to run.

    >>> render("./x -o ##OUTFILE## ##INFILE##", {"cmdinfile": "##TMPDIR##/a",
    ...        "cmdoutfile": "o", "cmdargs": "-v"}, "/tmp/w")
    './x -o o /tmp/w/a -v'
    """
    command = template
    for placeholder, name in (
        ("##INFILE##", "cmdinfile"),
        ("##OUTFILE##", "cmdoutfile"),
        ("##QUALITY##", "cmdquality"),
    ):
        command = command.replace(placeholder, str(vals.get(name, "")))
    prefix, suffix = str(vals.get("cmdvars", "")), str(vals.get("cmdargs", ""))
    if prefix:
        command = f"{prefix} {command}"
    if suffix:
        command = f"{command} {suffix}"
    return command.replace("##TMPDIR##", tmpdir)


def expand_path(path: str, tmpdir: str) -> str:
    """A file-path value made concrete: ``##TMPDIR##`` replaced, relative to ``tmpdir``.

    >>> expand_path("##TMPDIR##/00000007.png", "/tmp/w")
    '/tmp/w/00000007.png'
    >>> expand_path("out.y4m", "/tmp/w")
    '/tmp/w/out.y4m'
    """
    path = path.replace("##TMPDIR##", tmpdir)
    return os.path.join(tmpdir, path)


def redacted(vals: Mapping[str, Val]) -> dict[str, Val]:
    """``vals`` with secret values (keys, certificates, the token) replaced by a marker."""
    out: dict[str, Val] = {}
    for name, value in vals.items():
        secret = name.lower() in SECRET_NAMES or name.lower().endswith(("key", "crt", "cert"))
        secret = (secret and name not in ("inkey", "outkey")) or "-----BEGIN" in str(value)
        out[name] = REDACTED if secret else value
    return out


# --------------------------------------------------------------------------- handlers


def _split(name: str, args: str, count: int, usage: str) -> list[str]:
    parts = args.split(":", count - 1)
    if len(parts) != count or not parts[0]:
        raise CommandError(f"{name}: expected {usage}, got {name}:{args}")
    return parts


def _set(worker: Worker, args: str) -> Reply:
    key, value = _split("set", args, 2, "set:key:value")
    worker.vals[key] = value
    return Reply((f"OK:SET({key})",))


def _seti(worker: Worker, args: str) -> Reply:
    key, value = _split("seti", args, 2, "seti:key:integer")
    try:
        worker.vals[key] = int(value)
    except ValueError:
        raise CommandError(f"seti: {value!r} is not an integer") from None
    return Reply((f"OK:SETI({key})",))


def _lookup(worker: Worker, name: str, args: str) -> tuple[str, Val]:
    key = args
    if not key:
        raise CommandError(f"{name}: expected {name}:key, got {name}:")
    if key not in worker.vals:
        raise CommandError(f"no such variable {key}")
    return key, worker.vals[key]


def _get(worker: Worker, args: str) -> Reply:
    _key, value = _lookup(worker, "get", args)
    return Reply((f"OK:GET({value})",))


def _geti(worker: Worker, args: str) -> Reply:
    key, value = _lookup(worker, "geti", args)
    return Reply((f"INFO:{key}:{value}", f"OK:GETI({key})"))


def _dump_vals(worker: Worker, args: str) -> Reply:
    return Reply((f"OK:DUMP_VALS:{json.dumps(redacted(worker.vals), sort_keys=True)}",))


def _key_and_file(
    name: str, args: str, key_val: str, file_val: str, worker: Worker, *, reading: bool
) -> tuple[str, str]:
    if args:
        key, sep, path = args.partition("\0")
        if not sep or not key or not path:
            raise CommandError(f"{name}: expected {name}: or {name}:key\\0file, got {args!r}")
        what = "file"
    else:
        key, path = worker.text(key_val), worker.text(file_val)
        if not key:
            raise CommandError(f"{name}: no {key_val} set")
        if not path:
            raise CommandError(f"{name}: no {file_val} set")
        what = file_val
    readable = (worker.cwd,) if reading else ()
    return key, confined_path(f"{name}: {what}", path, worker.tmpdir, readable)


def confined_path(what: str, path: str, tmpdir: str, readable: tuple[str, ...] = ()) -> str:
    """A transfer's file path, resolved, provided it lies inside the private directory.

    The path is made concrete with :func:`expand_path`, then every symbolic link and ``..``
    is resolved; the result must lie inside ``tmpdir`` (or, to be read, inside one of
    ``readable``: the function's own directory).

    Args:
        what: names the path in the error (``"retrieve: targfile"``).
        path: the path as the coordinator gave it.
        tmpdir: the invocation's private temporary directory.
        readable: further directories the file may be read from.

    Returns:
        The resolved path.

    Raises:
        CommandError: the path resolves outside those directories.
    """
    real = os.path.realpath(expand_path(path, tmpdir))
    for root in (tmpdir, *readable):
        top = os.path.realpath(root)
        if top == os.path.sep:
            continue  # a function "directory" of / would open every file
        if real != top and os.path.commonpath([real, top]) == top:
            return real
    allowed = f"the worker's private directory {tmpdir}"
    if readable:
        allowed += f" or the function's directory {', '.join(readable)} (read only)"
    raise CommandError(f"{what} {path!r} resolves to {real}, outside {allowed}")


def _bucket(worker: Worker, name: str) -> str:
    bucket = worker.text("bucket")
    if not bucket:
        raise CommandError(f"{name}: no bucket set")
    return bucket


def _retrieve(worker: Worker, args: str) -> Reply:
    key, path = _key_and_file("retrieve", args, "inkey", "targfile", worker, reading=False)
    bucket = _bucket(worker, "retrieve")
    s3 = worker.s3

    def job() -> str:
        try:
            s3.download(bucket, key, path)
        except TransferError as exc:
            return f"FAIL({exc})"
        return f"OK:RETRIEVE({bucket}/{key})"

    return Reply(job=job, ack=f"OK:RETRIEVING({bucket}/{key})")


def _upload(worker: Worker, args: str) -> Reply:
    key, path = _key_and_file("upload", args, "outkey", "fromfile", worker, reading=True)
    bucket = _bucket(worker, "upload")
    s3 = worker.s3

    def job() -> str:
        try:
            s3.upload(path, bucket, key)
        except TransferError as exc:
            return f"FAIL({exc})"
        return f"OK:UPLOAD({bucket}/{key})"

    return Reply(job=job, ack=f"OK:UPLOADING({bucket}/{key})")


def _run(worker: Worker, args: str) -> Reply:
    template = args or worker.command
    if not template.strip():
        raise CommandError("run: no command given and the function has none")
    command = render(template, worker.vals, worker.tmpdir)
    jobs, cwd = worker.jobs, worker.cwd

    def job() -> str:
        try:
            result = jobs.run_process(command, cwd)
        except OSError as exc:
            return f"FAIL(run: cannot start {command!r} in {cwd}: {exc.strerror or exc})"
        return Retval(result.returncode, result.output, command).text

    return Reply(job=job, ack=f"OK:RUNNING({command})")


def _echo(worker: Worker, args: str) -> Reply:
    return Reply((f"OK:ECHO({args})",))


def _port(name: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise CommandError(f"{name}: port {text!r} is not an integer") from None
    if not 0 < port < 65536:
        raise CommandError(f"{name}: port {port} is out of range 1-65535")
    return port


def _connect(worker: Worker, args: str) -> Reply:
    host, port_text, first = _split("connect", args, 3, "connect:host:port:first")
    port = _port("connect", port_text)
    if worker.connect_peer is None:
        raise CommandError("connect: peer links are not available in this session")
    if worker.peer is not None:
        raise CommandError(f"connect: a peer link to {worker.peer} is already open")
    try:
        worker.peer = worker.connect_peer(host, port, first)
    except OSError as exc:
        raise CommandError(f"connect {host}:{port}: {type(exc).__name__}: {exc}") from exc
    return Reply((f"OK:CONNECT({args})",))


def _close_connect(worker: Worker, args: str) -> Reply:
    peer, worker.peer = worker.peer, None
    if peer is not None:
        peer.close()
    return Reply(("OK:CLOSE_CONNECT",))


def _links(worker: Worker, name: str) -> Links:
    if worker.links is None:
        if worker.make_links is None:
            raise CommandError(f"{name}: peer links are not available in this session")
        worker.links = worker.make_links()
    return worker.links


def _link_and_path(worker: Worker, name: str, args: str) -> tuple[Links, str, str]:
    links = _links(worker, name)
    link, sep, path = args.partition(":")
    if not link or not sep or not path:
        raise CommandError(f"{name}: expected {name}:NAME:path, got {name}:{args}")
    from mu.worker.peer import LinkError  # imported with the links: see Worker

    try:
        links.check(name, link)
    except LinkError as exc:
        raise CommandError(str(exc)) from None
    return links, link, path


def _number(name: str, what: str, text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise CommandError(f"{name}: {what} {text!r} is not a decimal number")
    return int(text)


def _link(worker: Worker, args: str) -> Reply:
    links = _links(worker, "link")
    parts = args.split(":")
    host: str | None = None
    port = 0
    if len(parts) == 3:
        name, me, partner = parts
    elif len(parts) == 5:
        name, host, port_text, me, partner = parts
        port = _port("link", port_text)
    else:
        raise CommandError(
            f"link: expected link:NAME:me:partner or link:NAME:host:port:me:partner, "
            f"got link:{args}"
        )
    from mu.worker.peer import LinkError

    try:  # answers OK:LINK(name) itself, before any INFO about the link
        links.open(name, host, port, _number("link", "me", me), _number("link", "partner", partner))
    except LinkError as exc:
        raise CommandError(str(exc)) from None
    return Reply()


def _send(worker: Worker, args: str) -> Reply:
    links, name, path = _link_and_path(worker, "send", args)
    real = confined_path("send: file", path, worker.tmpdir, (worker.cwd,))
    return Reply(job=lambda: links.send_file(name, real), ack=f"OK:SENDING({name})")


def _recv(worker: Worker, args: str) -> Reply:
    links, name, path = _link_and_path(worker, "recv", args)
    real = confined_path("recv: file", path, worker.tmpdir)
    timeout = float(links.recv_timeout)
    if "recv_timeout" in worker.vals:
        text = worker.text("recv_timeout")
        try:
            timeout = float(text)
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout < float("inf"):
            raise CommandError(f"recv: recv_timeout {text!r} is not a number of seconds >= 0")
    return Reply(job=lambda: links.recv_file(name, real, timeout), ack=f"OK:RECEIVING({name})")


def _close_link(worker: Worker, args: str) -> Reply:
    links = _links(worker, "close_link")
    if not args:
        raise CommandError("close_link: expected close_link:NAME, got close_link:")
    from mu.worker.peer import LinkError

    try:  # answers OK:CLOSE_LINK(name) itself, before a waiting send/recv on it fails
        links.close_link(args)
    except LinkError as exc:
        raise CommandError(str(exc)) from None
    return Reply()


def _quit(worker: Worker, args: str) -> Reply:
    return Reply(quit=True)


def _fault(worker: Worker, args: str) -> Reply:
    if not worker.faults_allowed:
        raise CommandError("no such command 'fault' (this run injects no faults)")
    from mu.faults import Fault  # only rehearsals need it: about 1 ms of every Init spared

    try:
        fault = Fault.from_args(args)
    except ValueError as exc:
        raise CommandError(f"fault: {exc}") from None
    worker.fault = fault
    worker.fault_due = worker.commands_served + fault.after
    worker.s3.inject_errors(fault.s3_error, fault.seed)
    return Reply()


Handler = Callable[[Worker, str], Reply]

COMMANDS: Final[dict[str, Handler]] = {
    "set": _set,
    "seti": _seti,
    "get": _get,
    "geti": _geti,
    "dump_vals": _dump_vals,
    "retrieve": _retrieve,
    "upload": _upload,
    "run": _run,
    "echo": _echo,
    "connect": _connect,
    "close_connect": _close_connect,
    "link": _link,
    "send": _send,
    "recv": _recv,
    "close_link": _close_link,
    "quit": _quit,
    "fault": _fault,
}
"""Command name -> handler. A name not here answers ``FAIL(no such command 'name')``."""


def dispatch(worker: Worker, text: str) -> bool:
    """Carry out one command and queue its response(s) with ``worker.send``.

    In blocking mode the slow part runs before the next command is served (here, or through
    ``worker.run_blocking``); with ``nonblock`` set it runs as a background job of
    ``worker.jobs``.

    Args:
        worker: the invocation's state.
        text: the command as received, ``name:args``.

    Returns:
        Whether the session should end (``quit:``).
    """
    worker.commands_served += 1
    name, _sep, args = text.partition(":")
    handler = COMMANDS.get(name)
    if handler is None:
        _fail(worker, f"no such command {name[:80]!r}")
        return False
    try:
        reply = handler(worker, args)
    except CommandError as exc:
        _fail(worker, str(exc))
        return False
    for message in reply.messages:
        worker.send(message)
    if reply.job is not None:
        if worker.flag("nonblock"):
            if not worker.flag("bg_silent"):
                worker.send(reply.ack)
            worker.jobs.start(name, reply.job)
        elif worker.run_blocking is not None:
            worker.run_blocking(name, reply.job)
        else:
            worker.send(reply.job())
    return reply.quit


def _fail(worker: Worker, reason: str) -> None:
    worker.send(f"FAIL({reason})")
