"""Simulated workers for bench/coordinator.py: N asyncio connections answering like mu workers.

Usage: python bench/sim_workers.py HOST PORT TOKEN N [KEYDIR]   (no KEYDIR: plain TCP)
Each worker says hello, answers every command like the real worker, and stops at quit:.
"""

from __future__ import annotations

import asyncio
import os
import resource
import ssl
import sys

from mu.protocol import NEED_DATA, FrameDecoder, encode_text


def answer(command: str) -> str | None:
    name, _, args = command.partition(":")
    key = args.partition(":")[0]
    if name == "set":
        return f"OK:SET({key})"
    if name == "seti":
        return f"OK:SETI({key})"
    if name == "retrieve":
        return "OK:RETRIEVE(bucket/key)"
    if name == "run":
        return "OK:RETVAL(0):OUTPUT():COMMAND(./png2y4m)"
    if name == "upload":
        return "OK:UPLOAD(bucket/key)"
    return None


async def worker(host: str, port: int, token: str, ctx: ssl.SSLContext | None,
                 gate: asyncio.Semaphore) -> bool:
    async with gate:  # bound the handshakes in flight
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    writer.write(encode_text(f"OK:HELLO:{token}"))
    decoder = FrameDecoder()
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return False
            decoder.receive_data(data)
            while (frame := decoder.next_frame()) is not NEED_DATA:
                assert isinstance(frame, bytes)
                command = frame.decode()
                if command == "quit:":
                    return True
                reply = answer(command)
                if reply is not None:
                    writer.write(encode_text(reply))
    finally:
        writer.close()


async def main() -> int:
    host, port, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    ctx = None
    if len(sys.argv) > 5:
        keydir = sys.argv[5]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(os.path.join(keydir, "ca_cert.pem"))
        ctx.load_cert_chain(os.path.join(keydir, "worker_cert.pem"),
                            os.path.join(keydir, "worker_key.pem"))
    gate = asyncio.Semaphore(256)
    results = await asyncio.gather(
        *(worker(host, port, token, ctx, gate) for _ in range(n)), return_exceptions=True
    )
    ok = sum(1 for r in results if r is True)
    print(f"{ok} of {n} simulated workers finished", file=sys.stderr)
    return 0 if ok == n else 1


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(asyncio.run(main()))
