"""The two processes of one sandboxed program run. Standard library only: started as a script
(``python -s -P -B sandbox_runner.py tester``), never imported by the trainer.

    trainer (dashrl.grading.sandbox)                      own session; killed as a group at the wall deadline
      └─ tester     trusted: the task's test code   rlimits; network + PID namespace where possible
           └─ candidate  untrusted: the model's code rlimits, its own uid, no privileges,
                                                    PID 1 of the namespace, dies with the tester

The tester never executes the model's program, and the candidate never sees the tests or their
expected values. The tester runs the task's test program (``prefix``, then ``tests``) with the
entry-point name bound to a proxy; each call of the proxy is sent to the candidate process, which
calls the model's function and sends back the *value*, encoded as plain data (None, bool, int,
float, complex, str, bytes and lists / tuples / dicts / sets of those, exact types only). So the
verdict is computed by trusted code from data, and the usual reward hacks do nothing:

* ``sys.exit(0)`` / ``os._exit(0)`` / a crash: the candidate is gone, the run is "failed";
* an object whose ``__eq__`` always says True, or an ``int`` subclass: not plain data, "failed";
* patching ``builtins`` / ``assert`` helpers / modules: they live in the other process;
* printing "passed" or a fake verdict: the candidate's output goes to /dev/null, and the tester's
  verdict carries a nonce that only the trainer and the tester know.

Isolation of the candidate, layer by layer (each applied where the machine allows it, reported in
the verdict's ``isolation`` list): a fresh temporary directory as cwd and HOME; a scrubbed
environment; rlimits on CPU seconds, address space, file size, open files and processes; a
dedicated unprivileged uid when started as root (it cannot touch the user's files, signal other
processes or fork past its own process limit); a new network namespace (no interface but a
loopback that is down: no network at all) and a new PID namespace (the candidate is its PID 1: when
it dies, everything it forked dies); the parent-death signal; and an audit hook (PEP 578) inside the
candidate that refuses sockets, subprocesses, fork/exec, signals, ctypes, and writes or deletions
outside the temporary directory. The trainer adds the hard wall-clock deadline (the tester's whole
process group is killed) and removes the directory.

Messages between tester and candidate: a 4-byte big-endian length, then UTF-8 JSON.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import resource
import signal
import struct
import sys
import traceback

# ----------------------------------------------------------------------------- framing and values

_HEADER = struct.Struct(">I")
_MAX_DEPTH = 100  # nesting of an encoded value
_BIG_INT = 10**18  # larger ints travel as hex (linear-time conversion, no digit limit)


class PlainDataError(TypeError):
    """A value that is not plain data (or a malformed encoding of one)."""


def send(fd: int, message: object) -> None:
    data = json.dumps(message, allow_nan=True, separators=(",", ":")).encode("utf-8")
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, remaining = [], n
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv(fd: int, max_bytes: int) -> object | None:
    """The next message, or None at end of stream. Raises ValueError past ``max_bytes``."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > max_bytes:
        raise ValueError(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    data = _read_exactly(fd, size)
    if data is None:
        return None
    return json.loads(data.decode("utf-8"))


def encode(value: object, depth: int = 0) -> object:
    """Plain data -> JSON-ready structure; exact builtin types only (subclasses are refused)."""
    if depth > _MAX_DEPTH:
        raise PlainDataError(f"value nested deeper than {_MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -_BIG_INT < value < _BIG_INT else {"x": format(value, "x")}
    if kind is float:
        return {"r": float.hex(value)}  # exact, and never confused with an int
    if kind is complex:
        return {"c": [float.hex(value.real), float.hex(value.imag)]}
    if kind is bytes:
        return {"b": base64.b64encode(value).decode("ascii")}
    if kind is list:
        return [encode(item, depth + 1) for item in value]
    if kind is tuple:
        return {"t": [encode(item, depth + 1) for item in value]}
    if kind is set or kind is frozenset:
        return {"s" if kind is set else "f": [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise PlainDataError(f"a value of type {kind.__module__}.{kind.__qualname__} is not plain data")


def decode(data: object, depth: int = 0) -> object:
    """Inverse of ``encode``; anything else raises PlainDataError."""
    if depth > _MAX_DEPTH + 1:
        raise PlainDataError(f"value nested deeper than {_MAX_DEPTH} levels")
    kind = type(data)
    if data is None or kind is bool or kind is str or kind is int:
        return data
    if kind is list:
        return [decode(item, depth + 1) for item in data]
    if kind is not dict or len(data) != 1:
        raise PlainDataError(f"malformed value encoding: {str(data)[:80]}")
    ((tag, body),) = data.items()
    try:
        if tag == "x":
            return int(body, 16)
        if tag == "r":
            return float.fromhex(body)
        if tag == "c":
            return complex(float.fromhex(body[0]), float.fromhex(body[1]))
        if tag == "b":
            return base64.b64decode(body.encode("ascii"), validate=True)
        items = [decode(item, depth + 1) for item in body]
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "f":
            return frozenset(items)
        if tag == "d":
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        raise PlainDataError(f"malformed value encoding ({type(err).__name__}: {err})") from None
    raise PlainDataError(f"unknown value tag {tag!r}")


# ----------------------------------------------------------------------------- candidate side

_BLOCKED_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill", "signal.pidfd_send_signal",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "ctypes.addressof",
    "os.chmod", "os.chown", "os.chflags", "os.setxattr", "os.removexattr",
    "sys.addaudithook", "sys.setprofile", "sys.settrace", "os.chroot", "resource.prlimit",
})  # fmt: skip
_BLOCKED_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend", "mmap"})
_PATH_EVENTS = {  # event -> indices of path arguments that must stay inside the working directory
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (0, 1),
    "os.truncate": (0,), "shutil.rmtree": (0,), "os.mkdir": (0,), "os.utime": (0,), "shutil.move": (0, 1),
    "shutil.copyfile": (1,), "os.chdir": (0,),
}  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_audit_hook(workdir: str) -> None:
    """Refuse, inside this process, what a program under test has no business doing (PEP 578).

    Audit hooks cannot be removed once added; blocking ctypes and new hooks keeps them in place.
    This is one layer of several: the OS-level limits hold even where it is bypassed.
    """
    root = os.path.realpath(workdir)
    realpath, fspath, isinstance_ = os.path.realpath, os.fspath, builtins.isinstance

    def inside(path: object) -> bool:
        if isinstance_(path, int):
            return True  # an already-open file descriptor
        try:
            resolved = realpath(fspath(path))
        except (TypeError, ValueError, OSError):
            return False
        return resolved == root or resolved.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event in _BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args and args[0] in _BLOCKED_MODULES:
            raise ImportError(f"sandbox: import of {args[0]} is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance_(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance_(flags, int) and flags & _WRITE_FLAGS
            )
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        elif event in _PATH_EVENTS:
            for index in _PATH_EVENTS[event]:
                if index < len(args) and not inside(args[index]):
                    raise PermissionError(f"sandbox: {event} on {args[index]!r} outside the working directory")

    sys.addaudithook(hook)


def _short_error(err: BaseException) -> list[str]:
    try:
        return [type(err).__name__, str(err)[:300]]
    except Exception:  # a hostile __str__
        return [type(err).__name__, "<unprintable>"]


def _modules_named(program: str) -> list[str]:
    """Top-level names of the standard-library (and numpy) modules the program imports anywhere."""
    import ast

    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    allowed = set(sys.stdlib_module_names) | {"numpy"}
    return [n for n in dict.fromkeys(names) if n.split(".")[0] in allowed and n.split(".")[0] not in _BLOCKED_MODULES]


def _drop_privileges(uid: int) -> None:
    """Become the job's own unprivileged uid (from root): no capabilities, no access to the user's
    files, no signals to other processes, RLIMIT_NPROC counted for this uid alone. The interpreter
    is already running, so its files need not be readable by that uid (a Python under /root is not);
    the modules the program imports were imported before, as root."""
    import ctypes

    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # setuid cleared it
    del sys.modules["ctypes"]


def candidate_main(read_fd: int, write_fd: int) -> None:
    """Load the model's program, then answer calls until the tester closes the pipe."""
    max_bytes = int(os.environ.get("DASHRL_SANDBOX_MAX_MESSAGE", str(16 << 20)))
    parent = os.getppid()
    job = recv(read_fd, max_bytes)
    if not isinstance(job, dict):
        os._exit(3)
    for name in _modules_named(job["program"]):
        try:
            __import__(name)  # standard-library code only, before the untrusted program runs
        except Exception:  # noqa: BLE001 -- a missing module fails later, inside the program
            pass
    if job.get("uid") is not None:
        _drop_privileges(job["uid"])
    if os.getppid() != parent:
        os._exit(1)  # the tester died before the parent-death signal was armed again
    if job.get("audit", True):
        _install_audit_hook(os.getcwd())
    namespace: dict = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        code = compile(job["program"], "<candidate>", "exec")
        exec(code, namespace)  # noqa: S102 -- the program under test, inside the sandbox
        function = namespace.get(job["entry_point"])
        if not callable(function):
            raise NameError(f"the program does not define a function {job['entry_point']!r}")
    except BaseException as err:  # noqa: BLE001 -- SystemExit included: the program did not load
        send(write_fd, {"load_error": _short_error(err)})
        os._exit(0)
    send(write_fd, {"ready": True})
    while True:
        request = recv(read_fd, max_bytes)
        if request is None:
            os._exit(0)
        try:
            args, kwargs = decode(request["args"]), decode(request["kwargs"])
            reply = {"value": encode(function(*args, **kwargs))}
        except BaseException as err:  # noqa: BLE001 -- every failure of the call goes back as data
            reply = {"error": _short_error(err)}
        try:
            data_check = json.dumps(reply, allow_nan=True)
            if len(data_check) > max_bytes:
                reply = {"error": ["ValueError", f"return value larger than {max_bytes} bytes"]}
        except (TypeError, ValueError, RecursionError) as err:
            reply = {"error": _short_error(err)}
        send(write_fd, reply)


# ----------------------------------------------------------------------------- tester side

_CLONE_NEWUSER, _CLONE_NEWNET, _CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
_PR_SET_PDEATHSIG = 1


class CandidateGone(BaseException):  # noqa: N818 -- BaseException: test code's `except Exception` cannot hide it
    """The candidate process ended (exit, crash, killed by a limit) while the tests needed it."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin Exception type."""


class _Candidate:
    """Stands in for the function under test inside the test program."""

    def __init__(self, write_fd: int, read_fd: int, name: str, max_bytes: int) -> None:
        self.write_fd, self.read_fd, self.max_bytes = write_fd, read_fd, max_bytes
        self.__name__ = self.__qualname__ = name
        self.gone: str | None = None
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        if self.gone:
            raise CandidateGone(self.gone)
        self.calls += 1
        request = {"args": encode(list(args)), "kwargs": encode(kwargs)}
        try:
            send(self.write_fd, request)
            reply = recv(self.read_fd, self.max_bytes)
        except (OSError, ValueError) as err:  # broken pipe, oversized or garbled reply
            reply, self.gone = None, f"the candidate's reply was unusable ({type(err).__name__}: {err})"
        if not isinstance(reply, dict):
            self.gone = self.gone or "the candidate process ended during a call"
            raise CandidateGone(self.gone)
        if "error" in reply:
            name, message = (list(reply["error"]) + ["", ""])[:2]
            error_type = getattr(builtins, str(name), None)
            if isinstance(error_type, type) and issubclass(error_type, Exception):
                raise error_type(message)
            raise CandidateError(f"{name}: {message}")
        try:
            return decode(reply.get("value"))
        except (PlainDataError, RecursionError) as err:
            raise CandidateError(f"unusable return value: {err}") from None


def _libc():  # noqa: ANN202
    import ctypes  # the tester is trusted; ctypes is blocked only in the candidate

    return ctypes.CDLL(None, use_errno=True)


def _enter_namespaces(want: bool) -> list[str]:
    """New network + PID namespaces for the candidate (PID: applies to the next child)."""
    if not want:
        return []
    libc = _libc()
    flags = _CLONE_NEWNET | _CLONE_NEWPID
    if os.geteuid() != 0:
        flags |= _CLONE_NEWUSER  # an unprivileged user namespace makes the others possible
    if libc.unshare(flags) == 0:
        return ["network_namespace", "pid_namespace"]
    return []


def _count_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _candidate_setup(limits: dict, own_uid_processes: int | None, libc: object) -> None:
    """preexec_fn of the candidate (the tester is single-threaded, so this is safe)."""
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb, limits["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mb"] * mb, limits["file_size_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    # NPROC counts every process of a uid: the job's own uid starts from zero (it is set once the
    # candidate drops privileges), a shared uid from the processes it already has.
    nproc = limits["max_processes"] + (own_uid_processes or 0)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _set_own_limits(limits: dict) -> None:
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = 2 * limits["cpu_s"] + 5  # the test code runs here too
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = 2 * limits["memory_mb"] * mb
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _gone(proc: object, why: str) -> tuple[str, str]:
    """(status, detail) for a candidate that ended mid-test: "timeout" when its CPU limit killed it."""
    try:
        code = proc.wait(timeout=1.0)
    except Exception:  # noqa: BLE001 -- still running: it only closed its pipe
        return "failed", why
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout", f"{why}: killed by its CPU-time limit (signal {-code})"
    return "failed", f"{why} (exit code {code})"


def run_tests(job: dict) -> dict:
    """The verdict on one program: passed | failed | syntax_error | sandbox_error, with a detail."""
    import subprocess  # the tester only

    limits, max_bytes = job["limits"], job["max_message_bytes"]
    try:
        program = compile(job["program"], "<candidate>", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as err:
        return {"status": "syntax_error", "detail": f"{type(err).__name__}: {err}"[:300], "isolation": []}
    del program  # compiled only to classify; the candidate compiles and runs its own copy
    try:
        prefix = compile(job["prefix"], "<prefix>", "exec")
        tests = compile(job["tests"], "<tests>", "exec")
    except SyntaxError as err:
        return {"status": "sandbox_error", "detail": f"the task's own code does not compile: {err}", "isolation": []}

    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(prefix, namespace)  # noqa: S102 -- the task's own code (trusted), before any candidate runs
    except Exception as err:  # noqa: BLE001
        return {"status": "sandbox_error", "detail": f"the task's prefix raised {type(err).__name__}: {err}"[:300],
                "isolation": []}

    isolation = ["rlimits", "scrubbed_env", "temp_dir"]
    uid = job.get("uid")
    if uid is not None:
        isolation.append("own_uid")
    isolation += _enter_namespaces(job.get("namespaces", True))
    if job.get("audit", True):
        isolation.append("audit_hook")
    to_candidate_r, to_candidate_w = os.pipe()
    from_candidate_r, from_candidate_w = os.pipe()
    own = _count_processes(os.getuid()) if uid is None else None
    libc = _libc()  # loaded before the fork
    env = dict(os.environ, DASHRL_SANDBOX_MAX_MESSAGE=str(max_bytes))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-s", "-P", "-B", os.path.abspath(__file__), "candidate",
             str(to_candidate_r), str(from_candidate_w)],
            pass_fds=(to_candidate_r, from_candidate_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            preexec_fn=lambda: _candidate_setup(limits, own, libc),  # noqa: PLW1509
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        return {"status": "sandbox_error", "detail": f"could not start the candidate: {err}", "isolation": isolation}
    finally:
        os.close(to_candidate_r)
        os.close(from_candidate_w)

    def verdict(status: str, detail: str | None = None) -> dict:
        return {"status": status, "detail": detail, "isolation": isolation}

    try:
        try:
            send(to_candidate_w, {"program": job["program"], "entry_point": job["entry_point"],
                                  "audit": job.get("audit", True), "uid": uid})
            loaded = recv(from_candidate_r, max_bytes)
        except (OSError, ValueError) as err:
            loaded = {"load_error": [type(err).__name__, str(err)]}
        if not isinstance(loaded, dict) or not (loaded.get("ready") or "load_error" in loaded):
            return verdict("failed", f"the program ended while loading (exit code {proc.wait()})")
        if "load_error" in loaded:
            name, message = (list(loaded["load_error"]) + ["", ""])[:2]
            return verdict("failed", f"loading the program raised {name}: {message}"[:300])

        candidate = _Candidate(to_candidate_w, from_candidate_r, job["entry_point"], max_bytes)
        namespace[job["entry_point"]] = candidate
        try:
            exec(tests, namespace)  # noqa: S102 -- the task's own tests (trusted)
        except CandidateGone as err:
            return verdict(*_gone(proc, str(err)))
        except AssertionError as err:
            return verdict("failed", f"AssertionError: {err}"[:300] if str(err) else "an assertion failed")
        except Exception as err:  # noqa: BLE001 -- any error in the tests fails the program
            return verdict("failed", f"{type(err).__name__}: {err}"[:300])
        if candidate.gone:
            return verdict(*_gone(proc, candidate.gone))
        if candidate.calls == 0:
            return verdict("sandbox_error", "the tests never called the entry point")
        return verdict("passed")
    finally:
        for fd in (to_candidate_w, from_candidate_r):
            os.close(fd)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def tester_main() -> None:
    job = json.loads(sys.stdin.read())
    nonce = job["nonce"]
    _set_own_limits(job["limits"])
    try:
        result = run_tests(job)
    except BaseException:  # noqa: BLE001 -- report the tester's own failure, never a pass
        result = {"status": "sandbox_error", "detail": traceback.format_exc()[-500:], "isolation": []}
    sys.stdout.write(json.dumps({"nonce": nonce, **result}))
    sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["tester"]:
        tester_main()
    elif sys.argv[1:2] == ["candidate"]:
        candidate_main(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(f"usage: {sys.argv[0]} tester | candidate READ_FD WRITE_FD")
