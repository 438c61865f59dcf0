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
its repr returned (as `_` too). Output written to sys.stdout / sys.stderr is buffered and sent
in frames of up to CHUNK characters, at least every FLUSH_S seconds. Output that bypasses
them (os.write(1, ...), subprocesses) goes to the runtime's log instead. `timeout_s` raises
TimeoutError inside the code (SIGALRM); SIGINT raises KeyboardInterrupt there.
"""

import argparse
import ast
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

    def send(self, obj):
        line = json.dumps(obj, ensure_ascii=False) + "\n"
        data = line.encode("utf-8", "replace")
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

    def write(self, stream, text):
        with self.lock:
            if self.parts and self.parts[-1][0] == stream:
                self.parts[-1][1].append(text)
            else:
                self.parts.append((stream, [text]))
            self.size += len(text)
            if self.size >= CHUNK:
                self._flush()

    def _flush(self):
        parts, self.parts, self.size = self.parts, [], 0
        for stream, texts in parts:
            data = _clean("".join(texts))
            for i in range(0, len(data), CHUNK):
                self.conn.send({"type": stream, "data": data[i : i + CHUNK]})

    def flush(self):
        with self.lock:
            self._flush()


_current = None  # the Output of the running request
_running = threading.Event()  # set while a request runs: the flusher sleeps otherwise
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
        self.preloaded = preloaded

    def execute(self, code, filename):
        """Runs `code`; returns the repr of its last expression, or None."""
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), self.globals)
        if last is None:
            return None
        value = eval(compile(last, filename, "eval"), self.globals)
        if value is None:
            return None
        self.globals["_"] = value
        text = repr(value)
        if len(text) > RESULT_MAX:
            text = text[:RESULT_MAX] + "... (%d more characters)" % (len(text) - RESULT_MAX)
        return _clean(text)

    def run(self, conn, req):
        global _current
        self.count += 1
        filename = "<code-%d>" % self.count
        code = req["code"]
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        out = Output(conn)
        t0 = time.monotonic()
        timeout = req.get("timeout_s")
        result, error = None, None
        _current = out
        _running.set()
        try:
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, float(timeout))
            try:
                result = self.execute(code, filename)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as e:  # noqa: B902 -- SystemExit and KeyboardInterrupt too
            error = _format_error(e, filename)
        finally:
            _current = None
            _running.clear()
            out.flush()
        if result is not None:
            conn.send({"type": "result", "text": result})
        if error is not None:
            conn.send(error)
        conn.send(
            {
                "type": "done",
                "ok": error is None,
                "duration_ms": int((time.monotonic() - t0) * 1000),
                "count": self.count,
            }
        )


def _protocol_error(conn, message):
    conn.send({"type": "error", "name": "ProtocolError", "value": message, "traceback": ""})
    conn.send({"type": "done", "ok": False, "duration_ms": 0, "count": 0})


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


def accept_loop(listener, rt, jobs):
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            time.sleep(0.1)
            continue
        threading.Thread(target=serve_conn, args=(sock, rt, jobs), daemon=True).start()


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
    threading.Thread(target=accept_loop, args=(listener, rt, jobs), daemon=True).start()
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
