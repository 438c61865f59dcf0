#!/usr/bin/env python3
"""Tartarus's warm Python runtime (issue #13): a long-running interpreter that takes code
without a fork+exec, like a notebook kernel, reached from the host through the VMM's hybrid
vsock socket (`CONNECT 53`). Standard library only.

Protocol (version 1), JSON lines (one UTF-8 JSON object per line, `\\n`-terminated):

  runtime -> client, once per connection:
      {"type": "ready", "protocol": 1, "language": "python", "version": "3.11.2",
       "pid": 123, "preloaded": ["numpy", "pandas"]}
  client -> runtime, one request at a time:
      {"code": "x = 1\\nx + 1", "timeout_s": 30}        (timeout_s optional)
      {"code": "...", "warmup": true}                     a template's warm-up (below)
  runtime -> client, while the code runs and after:
      {"type": "stdout", "data": "..."}                   output, in the order written
      {"type": "stderr", "data": "..."}
      {"type": "result", "text": "2"}                     repr of a last expression that is
                                                          not None
      {"type": "error", "name": "ZeroDivisionError", "value": "division by zero",
       "traceback": "Traceback (most recent call last): ..."}
      {"type": "done", "ok": true, "duration_ms": 5, "count": 7}
  `done` ends every request; the connection then takes the next one. A line that is not a
  request object gets an error named `ProtocolError` and a `done`; a line longer than
  MAX_FRAME bytes gets the same and the connection is closed.

Every request runs in the main thread, one at a time, in one globals dict kept across
requests and connections. The last statement, when it is an expression, is compiled apart and
its repr returned (as `_` too). A warm-up request (the template's `runtime.warmup`, run
before the ready snapshot) runs in a copy of that dict that is then dropped: what it imports
or caches stays, its names do not, and it is not counted; after it, the collector freezes what
is alive (gc.freeze), so later collections do not walk it. Output written to sys.stdout / sys.stderr is buffered and sent
in frames of up to CHUNK characters, at least every FLUSH_S seconds. Output that bypasses
them (os.write(1, ...), subprocesses) goes to the runtime's log instead. `timeout_s` raises
TimeoutError inside the code (SIGALRM); SIGINT raises KeyboardInterrupt there.
"""

import argparse
import ast
import gc
import importlib
import io
import json
import linecache
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback

PROTOCOL = 1
MAX_FRAME = 16 << 20
CHUNK = 64 << 10
FLUSH_S = 0.05
RESULT_MAX = 1 << 20


def _clean(text):
    """Text that encodes as UTF-8 (lone surrogates become U+FFFD)."""
    return text.encode("utf-8", "replace").decode("utf-8", "replace")


class Conn:
    """One client connection; frames are written whole, under a lock."""

    def __init__(self, sock):
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.lock = threading.Lock()
        self.alive = True

    def send(self, *objs):
        """Writes the frames in one go (one vsock packet and guest wake-up for all)."""
        text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)
        data = text.encode("utf-8", "replace")
        with self.lock:
            if not self.alive:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                # The client left: the code runs on, its output is dropped.
                self.alive = False

    def close(self):
        self.alive = False
        try:
            self.sock.close()
        except OSError:
            pass


class Output:
    """A request's stdout and stderr, buffered in the order written."""

    def __init__(self, conn):
        self.conn = conn
        self.parts = []
        self.size = 0
        self.lock = threading.Lock()
        self.armed = False

    def write(self, stream, text):
        with self.lock:
            if not self.armed:
                # The flusher only wakes for requests that write: one that does not costs
                # the guest no timer and no extra thread switch.
                self.armed = True
                _running.set()
            if self.parts and self.parts[-1][0] == stream:
                self.parts[-1][1].append(text)
            else:
                self.parts.append((stream, [text]))
            self.size += len(text)
            if self.size >= CHUNK:
                self._flush()

    def _frames(self):
        parts, self.parts, self.size = self.parts, [], 0
        frames = []
        for stream, texts in parts:
            data = _clean("".join(texts))
            for i in range(0, len(data), CHUNK):
                frames.append({"type": stream, "data": data[i : i + CHUNK]})
        return frames

    def _flush(self):
        frames = self._frames()
        if frames:
            self.conn.send(*frames)

    def flush(self):
        with self.lock:
            self._flush()

    def take(self):
        """What is still buffered, as frames (sent with the request's last frames)."""
        with self.lock:
            return self._frames()


_current = None  # the Output of the running request
_running = threading.Event()  # set while a request writes output: the flusher sleeps otherwise
_log = {"stdout": sys.__stdout__, "stderr": sys.__stderr__}


class Stream(io.TextIOBase):
    """sys.stdout / sys.stderr: into the running request's output, else the log."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    @property
    def encoding(self):
        return "utf-8"

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not " + type(s).__name__)
        out = _current
        if out is not None:
            out.write(self.name, s)
        else:
            log = _log[self.name]
            if log is not None:
                try:
                    log.write(s)
                    log.flush()
                except (OSError, ValueError):
                    pass
        return len(s)

    def flush(self):
        pass


def _flusher():
    # No timer while idle: an idle guest must not wake up (its kernel may be emulated).
    while True:
        _running.wait()
        time.sleep(FLUSH_S)
        out = _current
        if out is not None:
            out.flush()


def _alarm(signum, frame):
    raise TimeoutError("The code ran longer than its timeout_s and was interrupted")


def _format_error(e, filename):
    """Name, message and a traceback without the runtime's own frames."""
    if isinstance(e, SyntaxError) and e.filename == filename:
        tb_text = "".join(traceback.format_exception_only(type(e), e))
    else:
        here = os.path.abspath(__file__)
        frames = [
            f
            for f in traceback.extract_tb(e.__traceback__)
            if os.path.abspath(f.filename) != here
        ]
        tb_text = "".join(traceback.format_exception_only(type(e), e))
        if frames:
            tb_text = (
                "Traceback (most recent call last):\n"
                + "".join(traceback.format_list(frames))
                + tb_text
            )
    return {
        "type": "error",
        "name": type(e).__name__,
        "value": _clean(str(e)),
        "traceback": _clean(tb_text),
    }


class Runtime:
    def __init__(self, preloaded):
        self.globals = {"__name__": "__main__", "__builtins__": __builtins__}
        self.count = 0
        self.warmups = 0
        self.preloaded = preloaded

    def execute(self, code, filename, ns):
        """Runs `code`; returns the repr of its last expression, or None."""
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), ns)
        if last is None:
            return None
        value = eval(compile(last, filename, "eval"), ns)
        if value is None:
            return None
        ns["_"] = value
        text = repr(value)
        if len(text) > RESULT_MAX:
            text = text[:RESULT_MAX] + "... (%d more characters)" % (len(text) - RESULT_MAX)
        return _clean(text)

    def run(self, conn, req):
        global _current
        warmup = bool(req.get("warmup"))
        if warmup:
            # A template's warm-up: what it imports and fills (caches, lazily loaded
            # modules, the allocator's pools) stays; its names do not reach the user's
            # namespace, and the user's first request is still <code-1>.
            self.warmups += 1
            filename = "<warmup-%d>" % self.warmups
            ns = {k: v for k, v in self.globals.items() if k != "_"}
        else:
            self.count += 1
            filename = "<code-%d>" % self.count
            ns = self.globals
        code = req["code"]
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        out = Output(conn)
        t0 = time.monotonic()
        timeout = req.get("timeout_s")
        result, error = None, None
        _current = out
        try:
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, float(timeout))
            try:
                result = self.execute(code, filename, ns)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as e:  # noqa: B902 -- SystemExit and KeyboardInterrupt too
            error = _format_error(e, filename)
        finally:
            _current = None
            _running.clear()
        frames = out.take()
        if result is not None:
            frames.append({"type": "result", "text": result})
        if error is not None:
            frames.append(error)
        frames.append(
            {
                "type": "done",
                "ok": error is None,
                "duration_ms": int((time.monotonic() - t0) * 1000),
                "count": self.count,
            }
        )
        if warmup:
            # Everything the warm-up left is long-lived: out of the collector's way, so
            # later collections neither walk it nor touch its pages.
            gc.collect()
            gc.freeze()
        conn.send(*frames)


def _protocol_error(conn, message):
    conn.send(
        {"type": "error", "name": "ProtocolError", "value": message, "traceback": ""},
        {"type": "done", "ok": False, "duration_ms": 0, "count": 0},
    )


def _parse(line):
    """A request from a frame, or an error message."""
    try:
        req = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return None, "The frame is not JSON: %s" % e
    if not isinstance(req, dict):
        return None, "The frame is not a JSON object"
    if not isinstance(req.get("code"), str):
        return None, "code: missing, or not a string"
    t = req.get("timeout_s")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0):
        return None, "timeout_s: not a positive number"
    if not isinstance(req.get("warmup", False), bool):
        return None, "warmup: not a boolean"
    return req, None


def serve_conn(sock, rt, jobs):
    conn = Conn(sock)
    try:
        conn.send(
            {
                "type": "ready",
                "protocol": PROTOCOL,
                "language": "python",
                "version": "%d.%d.%d" % sys.version_info[:3],
                "pid": os.getpid(),
                "preloaded": rt.preloaded,
            }
        )
        while conn.alive:
            line = conn.rfile.readline(MAX_FRAME + 1)
            if not line:
                break
            if len(line) > MAX_FRAME and not line.endswith(b"\n"):
                _protocol_error(conn, "The frame is longer than %d bytes" % MAX_FRAME)
                break
            if not line.strip():
                continue
            req, problem = _parse(line)
            if problem is not None:
                _protocol_error(conn, problem)
                continue
            done = threading.Event()
            jobs.put((conn, req, done))
            done.wait()
    except OSError:
        pass
    finally:
        conn.close()


class Acceptors:
    """Threads waiting in accept(), started before the snapshot: a connection after a
    restore is served by one of them, with no thread to create (a clone, a stack and its
    page faults cost the emulated guest kernel far more than the request). A thread goes
    back to accept() when its connection ends; one more starts only when none is left
    waiting, and idle ones beyond MAX_IDLE end."""

    SPARES = 2
    MAX_IDLE = 4

    def __init__(self, listener, rt, jobs):
        self.listener, self.rt, self.jobs = listener, rt, jobs
        self.lock = threading.Lock()
        self.idle = 0

    def start(self):
        for _ in range(self.SPARES):
            self._spawn()

    def _spawn(self):
        with self.lock:
            self.idle += 1
        threading.Thread(target=self._worker, daemon=True).start()

    def _worker(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                time.sleep(0.1)
                continue
            with self.lock:
                self.idle -= 1
                short = self.idle == 0
            if short:
                self._spawn()
            serve_conn(sock, self.rt, self.jobs)
            with self.lock:
                if self.idle >= self.MAX_IDLE:
                    return
                self.idle += 1


def preload(names):
    """(top-level name, module) of every module imported, as `import a.b` binds `a`."""
    for name in names:
        mod = importlib.import_module(name)
        top = name.split(".")[0]
        yield top, sys.modules.get(top, mod)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Tartarus warm Python runtime")
    ap.add_argument("--vsock", type=int, help="listen on this AF_VSOCK port")
    ap.add_argument("--unix", help="listen on this Unix socket path (tests)")
    ap.add_argument("--config", help='JSON file: {"preload": ["numpy", ...]} (may be missing)')
    ap.add_argument("--preload", action="append", default=[], help="module to import first")
    ap.add_argument("--failed-file", help="written with the error when the start fails")
    ap.add_argument("--detach", action="store_true", help="leave the caller's session")
    args = ap.parse_args(argv)
    if args.vsock is None and args.unix is None:
        ap.error("give --vsock PORT or --unix PATH")
    if args.detach:
        try:
            os.setsid()
        except OSError:
            pass
    names = list(args.preload)
    try:
        if args.config and os.path.exists(args.config):
            with open(args.config, encoding="utf-8") as f:
                names += [str(n) for n in json.load(f).get("preload", [])]
        rt = Runtime(names)
        for top, mod in preload(names):
            rt.globals[top] = mod
        if args.vsock is not None:
            listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            listener.bind((socket.VMADDR_CID_ANY, args.vsock))
        else:
            if os.path.exists(args.unix):
                os.unlink(args.unix)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(args.unix)
        listener.listen(16)
    except BaseException as e:
        text = "tartarus-runtime: failed to start: %s: %s\n" % (type(e).__name__, e)
        traceback.print_exc()
        sys.stderr.write(text)
        if args.failed_file:
            with open(args.failed_file, "w", encoding="utf-8") as f:
                f.write(text)
        return 1
    sys.stdout = Stream("stdout")
    sys.stderr = Stream("stderr")
    signal.signal(signal.SIGALRM, _alarm)
    jobs = queue.Queue()
    threading.Thread(target=_flusher, daemon=True).start()
    Acceptors(listener, rt, jobs).start()
    _log["stderr"].write("tartarus-runtime: ready, pid %d\n" % os.getpid())
    _log["stderr"].flush()
    while True:
        try:
            conn, req, done = jobs.get()
        except KeyboardInterrupt:
            continue
        try:
            rt.run(conn, req)
        except BaseException as e:  # noqa: B902 -- a KeyboardInterrupt between requests
            conn.send(_format_error(e, ""))
            conn.send({"type": "done", "ok": False, "duration_ms": 0, "count": rt.count})
        finally:
            done.set()


if __name__ == "__main__":
    sys.exit(main())
