"""A silo's long-lived worker: the ClientApp's bodies (``clients.handlers``) in one process that outlives rounds.

flwr 1.42 starts a fresh ``flwr-clientapp`` process for every message, so without this each round re-imports
torch, reloads the pipeline and the silo's images and re-encodes them (a round took ~40 s for ~1 s of
training). A SuperNode started with node config ``worker = "/path/to/socket"`` hands each message's content and
its context to the worker listening there (``python -m clients.worker SOCKET``, or ``fedlora deploy local
--workers``); the worker runs the same body, whose model, data and encodings stay cached in its process
(``fedlora.runtime``, ``fedlora.data``), and returns the reply's content and the context's updated state. The
ClientApp process then imports neither torch nor the model. Before answering discovery's query of a per-silo
run, the worker loads the model and encodes its data (``handlers.warm``): discovery waits for it, and round 1
needs no set-up (warming after the reply left round 1's message queued behind it).

The socket is a Unix socket (this host only) with mode 0600: only the silo's own user reaches it. Each frame is
an 8-byte length and its bytes: a JSON header, then the context and the content as Flower's protobuf messages
(no pickle). One request at a time, as a SuperNode sends them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto, recorddict_from_proto, recorddict_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedlora.protocol import NODE_WORKER

PROTOCOL = 1  # bumped when a frame's meaning changes: a ClientApp and a worker of different versions refuse
BODIES = ("query", "train", "evaluate")
MAX_SOCKET_PATH = 100  # Linux allows 107 bytes for a Unix socket's path
_LENGTH = struct.Struct(">Q")


class WorkerError(RuntimeError):
    """The worker could not be reached, or its body raised (the message says which, and why)."""


def check_socket_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_absolute():
        raise ValueError(f"node config {NODE_WORKER!r} = {str(path)!r}: give the worker's socket as an absolute path")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"node config {NODE_WORKER!r} = {str(path)!r} is {len(os.fsencode(path))} bytes long; a Unix socket's "
            f"path may have at most {MAX_SOCKET_PATH}: choose a shorter one"
        )
    return path


def _write(stream: io.BufferedIOBase, *frames: bytes) -> None:
    for frame in frames:
        stream.write(_LENGTH.pack(len(frame)))
        stream.write(frame)
    stream.flush()


def _read(stream: io.BufferedIOBase) -> bytes:
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise EOFError("the connection closed mid-frame")
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the connection closed mid-frame")
    return data


def _context_bytes(context: Context) -> bytes:
    return bytes(context_to_proto(context).SerializeToString())


def _context_of(data: bytes) -> Context:
    proto = ProtoContext()
    proto.ParseFromString(data)
    return context_from_proto(proto)


def _content_bytes(content: RecordDict) -> bytes:
    return bytes(recorddict_to_proto(content).SerializeToString())


def _content_of(data: bytes) -> RecordDict:
    proto = ProtoRecordDict()
    proto.ParseFromString(data)
    return recorddict_from_proto(proto)


# ---- the ClientApp's side -------------------------------------------------------------------------------------


def call(
    path: str | Path, body: str, content: RecordDict, context: Context, timeout: float | None = None
) -> RecordDict:
    """Run ``body`` on the worker at ``path``; the reply's content. ``context.state`` is updated in place."""
    if body not in BODIES:
        raise ValueError(f"no body {body!r}; a worker runs {', '.join(BODIES)}")
    socket_path = check_socket_path(path)
    header = json.dumps({"protocol": PROTOCOL, "body": body}).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(socket_path))
            with conn.makefile("rwb") as stream:
                _write(stream, header, _context_bytes(context), _content_bytes(content))
                reply = json.loads(_read(stream))
                if not reply.get("ok"):
                    raise WorkerError(f"the silo worker at {socket_path} failed in {body!r}: {reply.get('error')}")
                state = _context_of(_read(stream)).state
                answer = _content_of(_read(stream))
    except (FileNotFoundError, ConnectionRefusedError) as err:
        raise WorkerError(
            f"node config {NODE_WORKER!r} = {str(socket_path)!r}: no silo worker listens there ({err.strerror}); "
            f"start one with `python -m clients.worker {socket_path}` on this host, or drop the key to run each "
            "message in its own ClientApp process"
        ) from err
    except (OSError, EOFError) as err:
        raise WorkerError(f"the silo worker at {socket_path} did not answer {body!r}: {err}") from err
    for key in list(context.state.keys()):
        del context.state[key]
    for key, record in state.items():
        context.state[key] = record
    return answer


# ---- the worker's side ----------------------------------------------------------------------------------------


Warmup = Callable[[RecordDict, Context], None]


def handle(
    stream: io.BufferedIOBase,
    bodies: dict[str, Callable[[RecordDict, Context], RecordDict]],
    warmups: dict[str, Warmup] | None = None,
) -> str:
    """Answer one request; ``warmups[body]`` (if any) runs with it after the body and before the reply is
    written, so the ClientApp's reply (and the server's next message) waits for it. The body's name (for the log)."""
    header = json.loads(_read(stream))
    context_data, content_data = _read(stream), _read(stream)
    body = str(header.get("body"))
    if header.get("protocol") != PROTOCOL:
        error = f"protocol {header.get('protocol')} from the ClientApp, {PROTOCOL} here: install the same fedlora"
        _write(stream, json.dumps({"ok": False, "error": error}).encode())
        return body
    if body not in bodies:
        _write(
            stream, json.dumps({"ok": False, "error": f"no body {body!r}; this worker runs {sorted(bodies)}"}).encode()
        )
        return body
    try:
        context, content = _context_of(context_data), _content_of(content_data)
        answer = bodies[body](content, context)
        frames = [_context_bytes(context), _content_bytes(answer)]
    except Exception as err:  # the ClientApp raises it, so Flower replies with an error and the server counts it
        last = traceback.extract_tb(err.__traceback__)[-1]
        error = f"{type(err).__name__}: {err} ({Path(last.filename).name}:{last.lineno})"
        _write(stream, json.dumps({"ok": False, "error": error}).encode())
        return body
    if warmups and body in warmups:
        try:
            warmups[body](content, context)
        except Exception as err:  # a failed warm-up costs time in round 1, nothing else
            print(f"warm-up with {body!r}: {type(err).__name__}: {err}", flush=True)
    _write(stream, json.dumps({"ok": True}).encode(), *frames)
    return body


def default_bodies() -> dict[str, Callable[[RecordDict, Context], RecordDict]]:
    from clients import handlers  # torch, the model and the data: loaded once, in this process

    return {name: getattr(handlers, name) for name in BODIES}


def default_warmups() -> dict[str, Warmup]:
    """With discovery's query: load the model and encode this silo's data, so round 1 needs no set-up."""
    from clients import handlers

    return {"query": handlers.warm}


def serve(
    path: str | Path,
    bodies: dict[str, Callable[[RecordDict, Context], RecordDict]] | None = None,
    max_requests: int | None = None,
    log: Callable[[str], Any] = print,
    warmups: dict[str, Warmup] | None = None,
) -> int:
    """Listen on the Unix socket ``path`` and answer requests one at a time until SIGTERM/SIGINT (or
    ``max_requests``); the socket file is removed on the way out. Returns how many requests it answered."""
    socket_path = check_socket_path(path)
    if bodies is None:
        bodies, warmups = default_bodies(), default_warmups() if warmups is None else warmups
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    served = 0
    old_umask = os.umask(0o177)  # the socket is created 0600
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    try:
        server.listen(4)
        log(f"fedlora silo worker {os.getpid()} listens on {socket_path}")
        while max_requests is None or served < max_requests:
            conn, _ = server.accept()
            started = time.perf_counter()
            with conn, conn.makefile("rwb") as stream:
                try:
                    body = handle(stream, bodies, warmups)
                except (OSError, EOFError, ValueError) as err:  # a broken request ends that request only
                    log(f"request dropped: {err}")
                    continue
            served += 1
            log(f"{body}: {time.perf_counter() - started:.2f} s")
    finally:
        server.close()
        socket_path.unlink(missing_ok=True)
    return served


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="the Unix socket to listen on (the SuperNode's node config 'worker')")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    try:
        serve(args.socket, log=lambda line: print(line, flush=True))
    except SystemExit as done:
        return 0 if done.code in (128 + signal.SIGTERM, 128 + signal.SIGINT) else int(done.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
