"""The record writer in a process of its own: RecordWriter's interface, its work elsewhere.

Masking, rendering, hashing, compression, disk I/O and signing cost far more CPU than
handing a record over, and in a thread they share the event loop's GIL. Here the gateway
only pickles each operation onto a socket; recorder/store/writer_child.py runs the RecordWriter
on the other end. Bodies travel without their masker: the child builds its own from the
masker's `spec` (sent again whenever the gateway's masker is replaced, e.g. on SIGHUP),
and a streamed body's state lives in the child under a number given here.

Acks come back over the same socket and run on a reader thread here (capture's acks hop
to the loop themselves). If the child dies, every pending and later ack fails with a
StorageError (fail closed) and `on_error` hears it once. If the gateway dies, so does
the child, sealing nothing.
"""
from __future__ import annotations

import asyncio
import collections
import io
import itertools
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from recorder.protocols.ws_masking import WsFlush, WsMessageBody
from recorder.store import writer_child
from recorder.store.bodies import BodyBytes, ChunkBytes
from recorder.store.signing import Signer
from recorder.store import writer_protocol as wp
from recorder.store.writer import StorageError
from recorder.store.writer_protocol import Ack

_HEADER = struct.Struct(">I")
_SOCKET_BUFFER = 4 << 20
_HOLD = 0.01  # seconds a frame nobody waits for may wait for company (the child coalesces too)
_HOLD_BYTES = 256 << 10


class _Pickler(pickle.Pickler):
    """Pickles bodies as calls of writer_child.body/chunk, without the masker object."""

    def __init__(self, file, owner: "ProcessRecordWriter"):
        super().__init__(file, protocol=5)
        self.owner = owner
        self.masker = None  # a masker the child does not have yet

    def reducer_override(self, obj):
        t = type(obj)
        if t is BodyBytes:
            self._note(obj.masker)
            return writer_child.body, (obj.data, obj.encoding, obj.max_body, obj.masker is not None, obj.content_type,
                                       obj.message_encoding)
        if t is ChunkBytes:
            st = obj.stream
            if st.ref is None:
                st.ref = next(self.owner._refs)
                self._note(st.masker)
            return writer_child.chunk, (obj.data, st.ref, obj.final, st.encoding, st.max_body,
                                        st.masker is not None, st.content_type, st.message_encoding, obj.times)
        if t is WsMessageBody:
            d = self._ws_ref(obj.direction)
            before = self._ws_ref(d.before).ref if d.before is not None else None
            return writer_child.ws_message, (obj.data, obj.text, d.ref, d.max_body, d.hold, d.masker is not None,
                                             before)
        if t is WsFlush:
            return writer_child.ws_flush, (tuple(self._ws_ref(d).ref for d in obj.directions),)
        return NotImplemented

    def _ws_ref(self, direction):
        if direction.ref is None:
            direction.ref = next(self.owner._refs)
            self._note(direction.masker)
        return direction

    def _note(self, masker) -> None:
        if masker is not None and masker is not self.owner._sent_masker:
            self.masker = masker


class ProcessRecordWriter:
    """RecordWriter's public interface; the writing happens in a child process."""

    def __init__(
        self,
        *,
        on_error: Callable[[StorageError], None] | None = None,
        signer: Signer | None = None,
        on_event: Callable[[str], None] | None = None,
        **settings,
    ):
        """`settings`: writer_protocol.WriterSettings, sent to the child's RecordWriter."""
        self.on_error = on_error
        self.on_event = on_event
        self.signer = signer
        self._opts = {
            **wp.WriterSettings(**settings).as_dict(),
            "signing_key": signer.key_id if signer is not None else None,
            "pid": os.getpid(),  # the ledger's gateway.start names the gateway, not the child
        }
        self._lock = threading.Lock()  # one frame at a time; guards _acks and _dead with it
        self._acks: dict[int, Ack] = {}
        self._ids = itertools.count(1)
        self._refs = itertools.count(1)
        self._sent_masker = None
        self._dead: StorageError | None = None
        self._stopping = False
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rbuf = bytearray()
        self._out: collections.deque = collections.deque()  # frames the socket did not take yet
        self._out_bytes = 0  # their size: what back-pressure watches
        self._held: list[bytes] = []  # frames nobody waits for, sent with the next urgent one
        self._held_bytes = 0
        self._hold_timer: asyncio.TimerHandle | None = None
        self._loop_thread: int | None = None
        self._started = False
        self._opened = threading.Event()  # the child's first try to open the ledger is done
        self._open_error: StorageError | None = None

    # -- RecordWriter's interface ---------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        ours, theirs = socket.socketpair()
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "recorder.store.writer_child", str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                # Its own process group: a Ctrl-C in the gateway's terminal is the gateway's to
                # handle (it seals every session through this process), not this process's.
                start_new_session=True,
            )
        finally:
            theirs.close()
        self._sock = ours
        raw = None
        if self.signer is not None:
            raw = self.signer.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                    serialization.NoEncryption())
        self._send_frame(pickle.dumps(wp.Init(self._opts, raw), protocol=5), None)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if self._loop is not None:
            self._loop_thread = threading.get_ident()
            # Acks are read on the event loop itself: no thread to wake, no GIL to hand over.
            self._loop.add_reader(ours.fileno(), self._on_readable)
        else:
            self._reader = threading.Thread(target=self._read, name="wiretrail-writer-acks", daemon=True)
            self._reader.start()

    def open_session(self, session_id: str, path: Path, ts: float, fields: dict, ack: Ack | None = None) -> None:
        self._op(wp.Open, (session_id, path, ts, fields), ack)

    def record(self, session_id: str, rtype: str, ts: float, fields: dict, ack: Ack | None = None) -> None:
        self._op(wp.Record, (session_id, rtype, ts, fields), ack)

    def close_session(self, session_id: str, ts: float, fields: dict, ack: Ack | None = None) -> None:
        self._op(wp.Close, (session_id, ts, fields), ack)

    def barrier(self, ack: Ack) -> None:
        """`ack` runs once everything queued before it is written and fsynced."""
        self._op(wp.Barrier, (), ack)

    def flush_soon(self) -> None:
        """Send what is held and have the child write it now (see RecordWriter.flush_soon)."""
        self._op(wp.Flush, (), None)

    def stop(self, timeout: float = 30.0) -> bool:
        """Write everything queued, fsync, seal, and end the child. True if it ended in time."""
        if not self._started or self._proc is None:
            return True
        deadline = time.monotonic() + timeout
        if self._dead is None:
            self._stopping = True
            with self._lock:
                if self._held:
                    self._out_append(memoryview(self._take_held()))
            self._flush_out()
            self._send_frame(pickle.dumps(wp.Stop(timeout), protocol=5), None)
            self._flush_out()  # the loop is held in here: nothing else would send the rest
        if self._loop is not None and self._dead is None:
            # The loop is held in here: read the child's last acks ourselves, up to its end
            # (it may not end while its acks have nowhere to go).
            self._remove_reader()
            while self._dead is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._sock.settimeout(left)
                try:
                    data = self._sock.recv(1 << 20)
                except TimeoutError:
                    return False
                except OSError:
                    data = b""
                self._received(data)
        try:
            rc = self._proc.wait(max(0.0, deadline - time.monotonic()) + 1.0)
        except subprocess.TimeoutExpired:
            return False
        if self._reader is not None:
            self._reader.join(max(0.0, deadline - time.monotonic()) + 1.0)
        return rc == 0

    def pending_bytes(self) -> int:
        """Bytes of records the child has not taken yet. The child stops reading while its own
        queue holds more than queue_limit, so this grows when the store is slow."""
        return self._out_bytes + self._held_bytes

    def unwritten(self) -> str:
        return (f"{self.pending_bytes()} bytes of records never handed to the writer process, and whatever "
                "it had not written yet")

    def wait_opened(self, timeout: float) -> StorageError | None:
        """As RecordWriter.wait_opened: the child reports its first try to open the ledger."""
        self._opened.wait(timeout)
        return self._open_error

    # -- sending ----------------------------------------------------------------------

    def _op(self, message: type, args: tuple, ack: Ack | None) -> None:
        aid = next(self._ids) if ack is not None else None
        buf = io.BytesIO()
        p = _Pickler(buf, self)
        try:
            p.dump(message(*args, aid))  # the ack id is every operation's last field
        except Exception as e:  # an unpicklable record must not take the gateway down
            err = StorageError("record could not be encoded", f"{message.__name__}: {e!r}")
            self._report(err)
            if ack is not None:
                _call(ack, err)
            return
        masker_frame = None
        if p.masker is not None:
            if getattr(p.masker, "spec", None) is None:  # never record unmasked: refuse instead
                err = StorageError("record could not be encoded", "its masker was not made by Masker.from_config")
                self._report(err)
                if ack is not None:
                    _call(ack, err)
                return
            masker_frame = pickle.dumps(wp.MaskerSpec(getattr(p.masker, "spec", None)), protocol=5)
        urgent = ack is not None or message in wp.URGENT
        self._send_frame(buf.getvalue(), aid, ack, masker_frame, p.masker, urgent)

    def _send_frame(self, data: bytes, aid: int | None = None, ack: Ack | None = None,
                    masker_frame: bytes | None = None, masker=None, urgent: bool = True) -> None:
        failed: OSError | None = None
        with self._lock:
            dead = self._dead
            if dead is None:
                if ack is not None:
                    self._acks[aid] = ack
                frame = _HEADER.pack(len(data)) + data
                if masker_frame is not None:
                    frame = _HEADER.pack(len(masker_frame)) + masker_frame + frame
                    self._sent_masker = masker
                try:
                    if not urgent and self._loop is not None and threading.get_ident() == self._loop_thread:
                        # Nobody waits for it: hold it briefly, so a small exchange costs one send
                        # (a send wakes the child, and the wake-up is paid here, on the loop).
                        self._held.append(frame)
                        self._held_bytes += len(frame)
                        if self._held_bytes >= _HOLD_BYTES:
                            self._write(self._take_held())
                        elif self._hold_timer is None:
                            self._hold_timer = self._loop.call_later(_HOLD, self._send_held)
                    else:
                        self._write(self._take_held() + frame if self._held else frame)
                except OSError as e:
                    failed = e
        if dead is not None:
            if ack is not None:
                _call(ack, dead)
        elif failed is not None:
            # The child is gone: this ack (registered above) fails with every other pending one.
            self._died(f"cannot hand records to it: {failed.strerror or failed}")

    def _out_append(self, view: memoryview) -> None:
        self._out.append(view)
        self._out_bytes += len(view)

    def _take_held(self) -> bytes:
        frames = b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        return frames

    def _send_held(self) -> None:
        self._hold_timer = None
        failed = None
        with self._lock:
            if self._held and self._dead is None:
                try:
                    self._write(self._take_held())
                except OSError as e:
                    failed = e
        if failed is not None:
            self._died(f"cannot hand records to it: {failed.strerror or failed}")

    def _write(self, frame: bytes) -> None:
        """Hand a frame to the socket, under the lock. On the loop it never blocks: what the
        socket does not take now waits in `_out`, sent in order when the child reads on."""
        if self._out:
            self._out_append(memoryview(frame))
            return
        if self._loop is None:
            self._sock.sendall(frame, socket.MSG_NOSIGNAL)
            return
        try:
            n = self._sock.send(frame, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            n = 0
        if n < len(frame):
            self._out_append(memoryview(frame)[n:])
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        failed = None
        with self._lock:
            try:
                while self._out:
                    view = self._out[0]
                    try:
                        n = self._sock.send(view, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                    except (BlockingIOError, InterruptedError):
                        return
                    self._out_bytes -= n
                    if n < len(view):
                        self._out[0] = view[n:]
                        return
                    self._out.popleft()
            except OSError as e:
                failed = e
                self._out.clear()
                self._out_bytes = 0
            self._loop.remove_writer(self._sock.fileno())
        if failed is not None:
            self._died(f"cannot hand records to it: {failed.strerror or failed}")

    def _flush_out(self) -> None:
        """Send what waits in `_out`, blocking: before a stop, with the loop held anyway."""
        with self._lock:
            if not self._out:
                return
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_writer(self._sock.fileno())
            try:
                while self._out:
                    view = self._out.popleft()
                    self._out_bytes -= len(view)
                    self._sock.sendall(view, socket.MSG_NOSIGNAL)
            except OSError:
                self._out.clear()
                self._out_bytes = 0

    # -- receiving ------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._remove_reader()
        self._received(data)

    def _remove_reader(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.remove_reader(self._sock.fileno())
            except (ValueError, RuntimeError):
                pass

    def _received(self, data: bytes) -> None:
        """Frames from the child, read on the loop; b"" is its end."""
        if not data:
            self._ended()
            return
        buf = self._rbuf
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            self._dispatch(pickle.loads(memoryview(buf)[pos + 4:pos + 4 + n]))
            pos += 4 + n
        del buf[:pos]

    def _read(self) -> None:
        inp = self._sock.makefile("rb", buffering=1 << 16)
        while True:
            head = inp.read(4)
            if len(head) < 4:
                break
            (n,) = _HEADER.unpack(head)
            data = inp.read(n)
            if len(data) < n:
                break
            self._dispatch(pickle.loads(data))
        self._ended()

    def _dispatch(self, msg) -> None:
        if isinstance(msg, wp.Acked):
            with self._lock:
                ack = self._acks.pop(msg.ack_id, None)
            if ack is not None:
                _call(ack, None if msg.error is None else StorageError(*msg.error))
        elif isinstance(msg, wp.Failed):
            self._report(StorageError(msg.cause, msg.detail, msg.flow))
        elif isinstance(msg, wp.Opened):
            self._open_error = None if msg.error is None else StorageError(*msg.error)
            self._opened.set()
        elif isinstance(msg, wp.Event):
            if self.on_event is not None:
                _call(self.on_event, msg.text)

    def _ended(self) -> None:
        if self._stopping:
            self._died("it stopped", report=False)
        else:
            rc = self._proc.poll() if self._proc is not None else None
            self._died("it ended" + (f" with status {rc}" if rc is not None else ""))

    def _died(self, why: str, report: bool = True) -> None:
        with self._lock:
            if self._dead is not None:
                return
            self._dead = StorageError("writer process gone", f"the record writer process is gone ({why})")
            pending = list(self._acks.values())
            self._acks.clear()
        if report:
            self._report(self._dead)
        if not self._opened.is_set():
            self._open_error = self._dead
            self._opened.set()
        for ack in pending:
            _call(ack, self._dead)

    def _report(self, err: StorageError) -> None:
        if self.on_error is not None:
            _call(self.on_error, err)


def _call(fn, arg) -> None:
    try:
        fn(arg)
    except Exception:
        pass
