"""The writer process: runs a RecordWriter for a gateway, fed over a socket.

Started by recorder/store/writer_process.py as `python -m recorder.store.writer_child FD PARENT_PID`.
Masking, rendering, hashing, compression, disk I/O and signing then run on their own
core, outside the gateway's GIL. Frames both ways are a 4-byte big-endian length and a
pickle (protocol 5). The parent's bodies arrive as calls of `body`/`chunk` below, which
rebuild them here with this process's masker; a streamed body's state (BodyStream) lives
here, keyed by the number the parent gave it.

It dies with its parent: PR_SET_PDEATHSIG, and end of input without a `stop` exits at
once, sealing nothing, as a crash of the gateway would (the next start recovers). It ignores
SIGINT and SIGTERM, which reach it too when a whole process group or cgroup is signalled (Ctrl-C
in a terminal, systemd's stop): the gateway's shutdown seals every session through it.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time

from recorder.store import writer_protocol as wp

_HEADER = struct.Struct(">I")

# This process's state; the unpickling of bodies reads it.
_masker = None
_streams: dict = {}


def body(data: bytes, encoding, max_body: int, masked: bool, content_type, message_encoding=None):
    from recorder.store.bodies import BodyBytes
    return BodyBytes(data, encoding, max_body, masker=_masker if masked else None, content_type=content_type,
                     message_encoding=message_encoding)


def chunk(data: bytes, ref: int, final: bool, encoding, max_body: int, masked: bool, content_type,
          message_encoding=None, times=None):
    from recorder.store.bodies import BodyStream, ChunkBytes
    stream = _streams.get(ref)
    if stream is None:
        stream = _streams[ref] = BodyStream(encoding, max_body, masker=_masker if masked else None,
                                            content_type=content_type, message_encoding=message_encoding)
    if final:
        _streams.pop(ref, None)
    return ChunkBytes(data, stream, final, times)


def ws_message(data: bytes, text: bool, ref: int, max_body: int, hold: bool, masked: bool, before: int | None):
    from recorder.protocols.ws_masking import WsDirection, WsMessageBody

    def direction_of(r: int, hold: bool):
        d = _streams.get(r)
        if d is None:
            d = _streams[r] = WsDirection(_masker if masked else None, max_body, hold)
        return d

    direction = direction_of(ref, hold)
    if before is not None and direction.before is None:
        direction.before = direction_of(before, True)
    return WsMessageBody(data, text, direction)


def ws_flush(refs: tuple):
    from recorder.protocols.ws_masking import WsDirection, WsFlush
    return WsFlush(*(_streams.pop(ref, None) or WsDirection() for ref in refs))


def _die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)


def _error_tuple(err):
    if err is None:
        return None
    return (getattr(err, "cause", "I/O error"), getattr(err, "detail", repr(err)))


class _Frames:
    """Frames read off the socket: whole ones out, a partial one kept for the next read."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def read(self, block: bool) -> list | None:
        """The frames one read brings (maybe none); None at the end of input."""
        try:
            data = self.sock.recv(1 << 20, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        buf = self.buf
        buf += data
        out, pos = [], 0
        while len(buf) - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            # Still pickled: a body unpickles with the masker of the frames before it applied.
            out.append(bytes(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        del buf[:pos]
        return out


def main(argv: list[str]) -> int:
    fd, parent_pid = int(argv[0]), int(argv[1])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    sock = socket.socket(fileno=fd)
    frames = _Frames(sock)

    send_lock = threading.Lock()  # the anchor thread sends events too

    def send(msg) -> None:
        data = pickle.dumps(msg, protocol=5)
        try:
            with send_lock:
                sock.sendall(_HEADER.pack(len(data)) + data, socket.MSG_NOSIGNAL)
        except OSError:
            os._exit(1)  # the parent is gone: end as it did, without sealing

    pending: list = []
    while not pending:
        got = frames.read(block=True)
        if got is None:
            os._exit(1)
        pending += got
    init = pickle.loads(pending.pop(0))
    if not isinstance(init, wp.Init):
        os._exit(1)
    opts = dict(init.options)

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from recorder.store.signing import Signer
    from recorder.store.writer import RecordWriter

    class ChildWriter(RecordWriter):
        """The RecordWriter loop on this process's main thread; it reads its socket while it waits."""

        def _wait(self, timeout: float) -> None:
            if self.queue_limit and self.pending_bytes() > self.queue_limit:
                # Behind: read no more until this is written; the gateway then sees its own
                # queue grow and slows the connections that feed it (back-pressure).
                self._wake.clear()
                return
            deadline = time.monotonic() + timeout
            while not self._wake.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not select.select([sock], [], [], left)[0]:
                    break
                got = frames.read(block=False)
                if got is None:
                    os._exit(1)  # the gateway died (or closed us without a stop): seal nothing
                for msg in got:
                    _apply(self, msg)
            self._wake.clear()

        def _store_opened(self, err) -> None:
            super()._store_opened(err)
            send(wp.Opened(_error_tuple(err)))

    def acker(aid):
        if aid is None:
            return None
        return lambda err: send(wp.Acked(aid, _error_tuple(err)))

    def _apply(writer, msg) -> None:
        global _masker
        msg = pickle.loads(msg)
        if isinstance(msg, wp.Record):
            writer.record(msg.session_id, msg.rtype, msg.ts, msg.fields, acker(msg.ack_id))
        elif isinstance(msg, wp.Open):
            writer.open_session(msg.session_id, msg.path, msg.ts, msg.fields, acker(msg.ack_id))
        elif isinstance(msg, wp.Close):
            writer.close_session(msg.session_id, msg.ts, msg.fields, acker(msg.ack_id))
        elif isinstance(msg, wp.Barrier):
            writer.barrier(acker(msg.ack_id))
        elif isinstance(msg, wp.Flush):
            writer.flush_soon()
        elif isinstance(msg, wp.MaskerSpec):
            from recorder.masking import Masker
            masking, key, known = msg.spec
            _masker = Masker.from_config(masking, key, known_secrets=known)
        elif isinstance(msg, wp.Stop):
            writer._put(_STOP_OP, True)

    signer = None
    if opts.pop("signing_key") is not None:
        signer = Signer.from_private(Ed25519PrivateKey.from_private_bytes(init.private_key))
    writer = ChildWriter(
        **opts,
        signer=signer,
        on_error=lambda e: send(wp.Failed(e.cause, e.detail, getattr(e, "flow", None))),
        on_event=lambda text: send(wp.Event(text)),
    )
    from recorder.store.writer import _STOP as _STOP_OP  # noqa: N811 (the writer's own stop marker)
    for msg in pending:
        _apply(writer, msg)
    writer._run()  # returns once a stop was written: everything drained, sealed, fsynced
    send(wp.Stopped())
    os._exit(0)


if __name__ == "__main__":
    # Run the imported module's main: the bodies unpickle through `recorder.store.writer_child`, and
    # must see the masker set there, not in this `__main__` copy of the module.
    from recorder.store.writer_child import main as _main
    sys.exit(_main(sys.argv[1:]))
