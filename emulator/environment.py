"""Inside an execution environment: becoming one, and the zygote that forks them.

Theory of operation
-------------------
This module runs in the environment's processes, never in the emulator's: it imports only
the standard library and AWS's runtime interface client, ``awslambdaric``, which loads the
function's handler and talks to the emulator's Runtime API as it talks to Lambda's.

An environment is made in one of two ways, with identical results:

* **zygote** (``python -I -m emulator.environment zygote FD``): one process per function
  version imports what every environment needs (boto3, as the Lambda Python runtime provides
  it, the standard library's modules that its first request loads, and every module of
  ``awslambdaric`` but its native client, whose C++ runtime library it links all the same;
  never the function's own code), freezes the collector, then forks one child per
  environment the emulator asks for. The emulator writes one JSON
  line (the environment's variables, its task root and the ``/tmp`` size) with the write end
  of the environment's log pipe attached (``SCM_RIGHTS``); the zygote answers the child's
  pid. The native client reads ``AWS_LAMBDA_RUNTIME_API`` once, when its shared object is
  loaded (a C++ static initialiser), so it is loaded only in the child, after that variable
  is set (about 1 ms);
* **spawn** (``python -I -m emulator.environment spawn``): the process is the environment;
  its variables come from its own environment, its log is its standard output.

Becoming an environment (:func:`become`): a process group of its own (the emulator kills
the environment whole), standard output and error into the log pipe, in a sandbox (the
zygote runs under bubblewrap: everything read-only, the code at ``/var/task``) a private
``tmpfs`` at ``/tmp`` of the function's ``EphemeralStorage`` (a mount namespace of its own,
then a user namespace of its own so that the handler cannot mount anything), the working
directory and ``sys.path[0]`` at the task root; then ``awslambdaric``'s ``bootstrap.run``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import socket
import sys
from typing import Any

__all__ = ["become", "main", "zygote"]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000


def _preload() -> None:
    """Import what every environment needs, except the native client (see above)."""
    # Lambda's runtime has no pyOpenSSL. Where it is installed (mu's own virtualenv), botocore
    # imports urllib3's pyOpenSSL module, and with it cryptography, only to take urllib3's
    # original SSLContext from it, the class it takes from urllib3.util.ssl_ otherwise: about
    # 50 ms of the preload and 4 MB more in the zygote that every fork copies the page tables
    # of. Refused here, the import fails as on Lambda; a handler may still import it later.
    blocked = "urllib3.contrib.pyopenssl" not in sys.modules
    if blocked:
        sys.modules["urllib3.contrib.pyopenssl"] = None  # type: ignore[assignment]
    try:
        _preload_modules()
    finally:
        if blocked and sys.modules.get("urllib3.contrib.pyopenssl", 0) is None:
            del sys.modules["urllib3.contrib.pyopenssl"]


def _preload_modules() -> None:
    with contextlib.suppress(ImportError):
        import boto3  # (the runtime provides it; what makes cold starts slow)

        # One S3 client, with dummy keys so that no credentials are looked up or kept: the
        # default session that the environments inherit has S3's model and endpoint rules
        # loaded, and their first client costs about 10 ms of CPU instead of 70. It is
        # made for no endpoint in particular: each environment's own client still reads
        # its region, endpoint and credentials from its environment when it is made.
        with contextlib.suppress(Exception):
            boto3.client("s3", region_name="us-east-1", aws_access_key_id="preload",
                         aws_secret_access_key="preload").close()
    import concurrent.futures  # noqa: F401
    import encodings.idna  # noqa: F401 (a str host's first lookup: about 2 ms per environment)
    import http.client  # noqa: F401
    import importlib  # noqa: F401
    import logging  # noqa: F401
    import traceback  # noqa: F401

    import awslambdaric.lambda_context
    import awslambdaric.lambda_literals
    import awslambdaric.lambda_runtime_exception
    import awslambdaric.lambda_runtime_hooks_runner
    import awslambdaric.lambda_runtime_log_utils
    import awslambdaric.lambda_runtime_marshaller  # noqa: F401

    # The native client's C++ library, linked here once rather than in every child (about
    # 1 ms of each cold start): the child's dlopen of the client finds it loaded.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libstdc++.so.6")


def under_tmp() -> list[str]:
    """The folders this interpreter and this package are loaded from that lie under /tmp
    (its prefix, its executable's folder, the package's checkout), which a private /tmp
    would hide: the sandbox binds them back, read-only, at the same paths."""
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    found: list[str] = []
    for path in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                 here):
        real = os.path.realpath(path)
        if real.startswith("/tmp/") and real not in found:
            found.append(real)
    return [p for p in found if not any(p.startswith(q + "/") for q in found)]


def _private_tmp(size_mb: int, shown: list[str] | tuple[str, ...] = ()) -> None:
    """A ``tmpfs`` of ``size_mb`` at ``/tmp`` seen by this process only, with the folders
    ``shown`` (under /tmp) bound back at their paths as they were (read-only in the
    sandbox), then a user namespace of its own, in which it cannot change any mount."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    check(libc.unshare(_CLONE_NEWNS), "unshare mounts")
    check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "private mounts")
    held: list[int] = []  # the folders shown, opened before the tmpfs hides them
    try:
        for path in shown:
            held.append(os.open(path, os.O_PATH | os.O_DIRECTORY))
        options = f"size={size_mb}m,mode=1777".encode()
        check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", _MS_NOSUID | _MS_NODEV, options),
              "tmpfs")
        for path, fd in zip(shown, held, strict=True):
            os.makedirs(path, exist_ok=True)
            check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None,
                             _MS_BIND | _MS_REC, None), f"bind {path}")
    finally:
        for fd in held:
            os.close(fd)
    check(libc.unshare(_CLONE_NEWUSER), "unshare user")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def become(spec: dict[str, Any], log_fd: int) -> None:
    """Become the environment ``spec`` describes and run ``awslambdaric`` (never returns).

    ``spec``: ``env`` (its variables), ``task_root``, ``handler``, and ``tmp_mb`` (a private
    ``/tmp`` of that size, in a sandbox, with the folders ``shown`` bound back) or 0
    (``TMPDIR`` is already private).
    """
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if log_fd not in (1, 2):
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        if spec.get("tmp_mb"):
            _private_tmp(int(spec["tmp_mb"]), spec.get("shown", ()))
        os.chdir(spec["task_root"])
    except OSError as exc:
        print(f"emulator: cannot set up the environment: {exc}", flush=True)
        os._exit(70)
    os.environ.clear()
    os.environ.update(spec["env"])
    import tempfile

    tempfile.tempdir = None
    sys.path.insert(0, spec["task_root"])
    from awslambdaric import bootstrap
    from awslambdaric.lambda_runtime_client import LambdaRuntimeClient

    bootstrap.run(spec["handler"], LambdaRuntimeClient(spec["env"]["AWS_LAMBDA_RUNTIME_API"]))
    os._exit(0)


def _read_line(sock: socket.socket, buf: bytearray, fds: list[int]) -> bytes | None:
    """One line from ``sock``, collecting the descriptors that came with it; None at EOF."""
    while b"\n" not in buf:
        data, got, _, _ = socket.recv_fds(sock, 1 << 20, 8)
        if not data:
            return None
        buf += data
        fds.extend(got)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


def zygote(sock_fd: int) -> None:
    """Fork an environment for each request read from ``sock_fd`` (see the module doc)."""
    sock = socket.socket(fileno=sock_fd)
    _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    gc.collect()
    gc.freeze()  # a child's collections never walk (and copy) the preloaded objects
    buf, fds = bytearray(), list[int]()
    while True:
        line = _read_line(sock, buf, fds)
        if line is None:
            return
        spec = json.loads(line)
        if not fds:
            sock.sendall(b'{"pid": 0}\n')  # its log did not arrive (out of descriptors)
            continue
        log_fd = fds.pop(0)
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                for fd in fds:
                    os.close(fd)
                become(spec, log_fd)
            finally:
                os._exit(70)
        os.close(log_fd)
        sock.sendmsg([json.dumps({"pid": pid}).encode() + b"\n"])


def main(argv: list[str]) -> int:
    """``zygote FD`` or ``spawn`` (the spec as JSON in ``_MU_ENVIRONMENT``)."""
    if len(argv) == 2 and argv[0] == "zygote":
        zygote(int(argv[1]))
        return 0
    if argv == ["spawn"]:
        spec = json.loads(os.environ["_MU_ENVIRONMENT"])
        become(spec, 1)
    print("usage: python -m emulator.environment {zygote FD | spawn}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
