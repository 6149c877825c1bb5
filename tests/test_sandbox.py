"""The code sandbox (dashrl.grading.sandbox + dashrl/grading/sandbox_runner.py): verdicts, isolation, hostile programs.

Every hostile program here is written so that getting away with it would make it "passed": the
tests assert it is not, and that the host is unharmed (files kept, no connection made, no process
left behind). Layers are also tested alone (audit hook off) where the machine provides the OS-level
ones (root: own uid; namespaces).
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from dashrl.config.params import SandboxLimits
from dashrl.grading import sandbox_runner
from dashrl.grading.sandbox import SandboxJob, _parse_verdict, run_job, run_programs

LIMITS = SandboxLimits(timeout_s=4.0, cpu_s=4, memory_mb=512, file_size_mb=4, max_processes=8, workers=2)
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
GOOD_ADD = "def add(a, b):\n    return a + b\n"


def run(program: str, tests: str = ADD_TESTS, entry: str = "add", prefix: str = "", limits: SandboxLimits = LIMITS,
        **layers: bool):
    return run_job(SandboxJob(program, prefix, tests, entry), limits, **layers)


@pytest.fixture(scope="module")
def layers() -> tuple[str, ...]:
    """The isolation layers this machine gives (probed with a good program)."""
    result = run(GOOD_ADD)
    assert result.status == "passed", result
    return result.isolation


def sandbox_processes(grace_s: float = 3.0) -> list[int]:
    """Pids of live (non-zombie) processes of the sandbox's uids (root), after a grace period for
    processes that were sent SIGKILL a moment ago to finish exiting."""
    deadline = time.monotonic() + grace_s
    while True:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if 60000 <= os.stat(f"/proc/{entry}").st_uid < 66000:
                        with open(f"/proc/{entry}/stat") as f:
                            state = f.read().rsplit(")", 1)[1].split()[0]
                        if state != "Z":  # a zombie holds no resources; init reaps it
                            pids.append(int(entry))
                except OSError:
                    pass
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


# ----------------------------------------------------------------------------- verdicts


def test_plain_verdicts():
    assert run(GOOD_ADD).status == "passed"
    wrong = run("def add(a, b):\n    return a - b\n")
    assert (wrong.status, wrong.detail) == ("failed", "an assertion failed")
    assert run("def add(a, b) return a").status == "syntax_error"
    missing = run("def plus(a, b):\n    return a + b\n")
    assert missing.status == "failed" and "does not define a function 'add'" in missing.detail
    raising = run("def add(a, b):\n    raise ValueError('no')\n")
    assert raising.status == "failed" and "ValueError: no" in raising.detail


def test_values_cross_exactly():
    """Return values reach the tests as the same plain data (types included)."""
    program = (
        "def f(kind):\n"
        "    return {'int': 2**70, 'float': 0.1, 'nan': float('nan'), 'complex': 1-2j, 'bytes': b'\\x00a',\n"
        "            'tuple': (1, (2, 'x')), 'set': {1, 2}, 'frozenset': frozenset({'a'}), 'dict': {(1, 2): [None, True]},\n"
        "            'list': [[1.5], []]}[kind]\n"
    )
    tests = (
        "import math\n"
        "assert f('int') == 2**70 and type(f('int')) is int\n"
        "assert f('float') == 0.1 and type(f('float')) is float\n"
        "assert math.isnan(f('nan'))\n"
        "assert f('complex') == 1-2j\n"
        "assert f('bytes') == b'\\x00a'\n"
        "assert f('tuple') == (1, (2, 'x')) and type(f('tuple')[1]) is tuple\n"
        "assert f('set') == {1, 2} and type(f('set')) is set\n"
        "assert type(f('frozenset')) is frozenset\n"
        "assert f('dict') == {(1, 2): [None, True]}\n"
        "assert f('list') == [[1.5], []]\n"
        "assert f(kind='int') == 2**70\n"
    )
    assert run(program, tests, "f").status == "passed"


def test_codec_round_trip_and_refusals():
    values = [None, True, 0, -(2**80), 1.5, float("inf"), 2 + 3j, "é", b"\xff", [1, [2]], (1,), {1}, frozenset({2}), {"a": (1,)}]
    for value in values:
        assert sandbox_runner.decode(sandbox_runner.encode(value)) == value
    assert type(sandbox_runner.decode(sandbox_runner.encode(1.0))) is float

    class Sneaky(int):
        def __eq__(self, other):
            return True

    for bad in (Sneaky(3), [Sneaky(3)], object(), len, (x for x in ()), {1: Sneaky(1)}):
        with pytest.raises(sandbox_runner.PlainDataError):
            sandbox_runner.encode(bad)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(sandbox_runner.PlainDataError):
        sandbox_runner.encode(deep)
    with pytest.raises(sandbox_runner.PlainDataError):
        sandbox_runner.decode({"zz": 1})


def test_prefix_helpers_and_check_style_tests():
    """HumanEval style: the prefix defines helpers, the tests define check(candidate) and call it."""
    prefix = "def helper(x):\n    return 2 * x\n\ndef double(x):\n    '''Return helper(x).'''\n"
    program = prefix + "\n" + "def double(x):\n    return helper(x)\n"
    tests = "def check(candidate):\n    assert candidate(3) == helper(3) == 6\n\ncheck(double)\n"
    assert run(program, tests, "double", prefix=prefix).status == "passed"
    assert run(prefix + "\n    return x\n", tests, "double", prefix=prefix).status == "failed"


def test_tests_that_never_call_the_entry_point_are_a_sandbox_error():
    assert run(GOOD_ADD, "assert True\n").status == "sandbox_error"


def test_verdict_must_carry_the_nonce():
    assert _parse_verdict(b'{"nonce": "other", "status": "passed"}', b"", 0, "mine", 0.1).status == "sandbox_error"
    assert _parse_verdict(b"passed", b"", 0, "mine", 0.1).status == "sandbox_error"
    assert _parse_verdict(b'{"nonce": "mine", "status": "passed"}', b"", 0, "mine", 0.1).status == "passed"


def test_hash_seed_is_fixed():
    """Set iteration order of strings (hence some verdicts) does not change between runs."""
    program = "def f():\n    return ''.join({'alpha', 'beta', 'gamma', 'delta', 'eps'})\n"
    orders = set()
    for _ in range(2):
        tests = "order = f()\nassert sorted(order) == sorted('alphabetagammadeltaeps')\nassert order == 'X'\n"
        result = run(program, tests, "f")
        orders.add(result.detail)
    assert len(orders) == 1


def test_temp_dirs_are_removed():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "dashrl-sandbox-*")))
    run("import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\n" + GOOD_ADD)
    run("def add(a, b):\n    while True: pass\n", limits=SandboxLimits(timeout_s=1.0, cpu_s=2, workers=1))
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "dashrl-sandbox-*"))) == before


def test_isolation_layers_on_this_machine(layers):
    assert {"rlimits", "scrubbed_env", "temp_dir", "audit_hook"} <= set(layers)
    if os.geteuid() == 0:
        assert "own_uid" in layers


# ----------------------------------------------------------------------------- hostile programs


def test_infinite_loops_time_out_and_the_pool_goes_on():
    limits = SandboxLimits(timeout_s=2.0, cpu_s=5, workers=2)
    jobs = [
        SandboxJob("while True:\n    pass\n", "", ADD_TESTS, "add"),
        SandboxJob(GOOD_ADD, "", ADD_TESTS, "add"),
        SandboxJob("def add(a, b):\n    while True:\n        pass\n", "", ADD_TESTS, "add"),
        SandboxJob("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ndef add(a, b):\n    while True: pass\n",
                   "", ADD_TESTS, "add"),
        SandboxJob(GOOD_ADD, "", ADD_TESTS, "add"),
    ]
    results = run_programs(jobs, limits)
    assert [r.status for r in results] == ["timeout", "passed", "timeout", "timeout", "passed"]


def test_cpu_limit_alone_stops_a_busy_program():
    result = run("def add(a, b):\n    while True: pass\n", limits=SandboxLimits(timeout_s=30.0, cpu_s=1, workers=1))
    assert result.status == "timeout" and "CPU" in result.detail


@pytest.mark.parametrize("audit", [True, False])
def test_fork_bomb(audit, layers):
    if not audit and not ({"own_uid", "pid_namespace"} & set(layers)):
        pytest.skip("no OS-level process limit on this machine without the audit hook")
    bomb = "import os\ndef add(a, b):\n    while True:\n        os.fork()\n"
    result = run(bomb, audit=audit, limits=SandboxLimits(timeout_s=3.0, cpu_s=3, max_processes=8, workers=1))
    assert result.status != "passed"
    assert sandbox_processes() == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


@pytest.mark.parametrize("audit", [True, False])
def test_huge_allocation(audit):
    result = run("def add(a, b):\n    block = bytearray(10 * 2**30)\n    return a + b\n", audit=audit)
    assert result.status == "failed" and "MemoryError" in result.detail


@pytest.mark.parametrize("audit", [True, False])
def test_huge_file_writes(audit, tmp_path, layers):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(outside, 0o777)  # world-writable: only the file-size limit and the audit hook stand in the way
    for target in ("big.bin", str(outside / "big.bin")):
        program = (
            "def add(a, b):\n"
            f"    with open({target!r}, 'wb') as f:\n"
            "        for _ in range(64):\n"
            "            f.write(bytes(2**20))\n"
            "    return a + b\n"
        )
        assert run(program, audit=audit).status == "failed"
    written = outside / "big.bin"
    assert not written.exists() or written.stat().st_size <= LIMITS.file_size_mb * 2**20


@pytest.mark.parametrize("audit", [True, False])
def test_deleting_files_outside_the_temp_dir(audit, tmp_path, layers):
    if not audit and "own_uid" not in layers:
        pytest.skip("without the audit hook only a separate uid protects the user's files")
    os.chmod(tmp_path, 0o755)
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    attempts = [
        f"import os\ndef add(a, b):\n    return os.system('rm -rf {tmp_path}')\n",
        f"import os\ndef add(a, b):\n    os.remove({str(victim)!r})\n    return 0\n",
        f"import shutil\ndef add(a, b):\n    shutil.rmtree({str(tmp_path)!r})\n    return 0\n",
        f"import subprocess\ndef add(a, b):\n    return subprocess.call(['rm', '-f', {str(victim)!r}])\n",
        f"def add(a, b):\n    open({str(victim)!r}, 'w').write('gone')\n    return 0\n",
    ]
    for program in attempts:
        assert run(program, "assert add(1, 2) == 0\n", audit=audit).status == "failed", program
    assert victim.read_text() == "precious"


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("DASHRL_TEST_SECRET", "s3cret")
    program = "import os\ndef f():\n    return os.environ.get('DASHRL_TEST_SECRET')\n"
    assert run(program, "assert f() == 's3cret'\n", "f").status == "failed"
    assert run(program, "assert f() is None\n", "f").status == "passed"
    home = "import os\ndef f():\n    return os.environ['HOME'] == os.getcwd() and os.getcwd().startswith('/tmp')\n"
    assert run(home, "assert f() is True\n", "f").status == "passed"


@pytest.mark.parametrize("audit", [True, False])
def test_no_network(audit, layers):
    if not audit and "network_namespace" not in layers:
        pytest.skip("without the audit hook only a network namespace blocks sockets")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    connections = []

    def accept() -> None:
        for _ in range(40):
            try:
                connections.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        program = (
            "import socket\n"
            "def f():\n"
            f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    s.sendall(b'hello')\n"
            "    return 1\n"
        )
        assert run(program, "assert f() == 1\n", "f", audit=audit).status == "failed"
    finally:
        thread.join()
        server.close()
    assert connections == []


@pytest.mark.parametrize(
    "program",
    [
        "import sys\nsys.exit(0)\n",  # exit before the tests
        "import os\nos._exit(0)\n",
        "import sys\ndef add(a, b):\n    sys.exit(0)\n",  # exit inside the call
        "import os\ndef add(a, b):\n    os._exit(0)\n",
        "def add(a, b):\n    raise KeyboardInterrupt\n",
        # objects that claim equality with anything
        "class Any:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
        "def add(a, b):\n    return Any()\n",
        "class Three(int):\n    def __eq__(self, other): return True\ndef add(a, b):\n    return Three(0)\n",
        "class L(list):\n    def __eq__(self, other): return True\ndef add(a, b):\n    return L()\n",
        # patching what the tests use
        "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\ndef add(a, b):\n    return 0\n",
        "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\ndef add(a, b):\n    return 0\n",
        "import math\nmath.isclose = lambda *a, **k: True\ndef add(a, b):\n    return 0\n",
        # claiming success on the output
        "print('passed')\nprint('{\"status\": \"passed\", \"nonce\": \"x\"}')\nimport sys\nsys.stdout.flush()\nsys.exit(0)\n",
        "import os\nfor fd in range(3, 40):\n    try:\n        os.write(fd, b'{\"status\": \"passed\"}')\n    except OSError:\n        pass\n"
        "def add(a, b):\n    return 0\n",
        # starving the tester
        "def add(a, b):\n    return list(range(5 * 10**6))\n",
        "def add(a, b):\n    x = []\n    for _ in range(10**5):\n        x = [x]\n    return x\n",
    ],
)
def test_reward_hacks_never_pass(program):
    tests = "import math\nassert add(1, 2) == 3\nassert math.isclose(abs(add(2, 2) - 4), 0)\n"
    result = run(program, tests)
    assert result.status in ("failed", "timeout"), (result, program)


def test_a_hostile_batch_leaves_nothing_behind(layers):
    """Mixed hostile and good jobs in one pool: good ones pass, nothing is left running."""
    hostile = [
        "import os\nwhile True:\n    os.fork()\n",
        "def add(a, b):\n    while True: pass\n",
        "import os\nos.setsid()\ndef add(a, b):\n    while True: pass\n",
        "x = bytearray(2**34)\n",
    ]
    jobs = [SandboxJob(p, "", ADD_TESTS, "add") for p in hostile] + [SandboxJob(GOOD_ADD, "", ADD_TESTS, "add")] * 3
    results = run_programs(jobs, SandboxLimits(timeout_s=2.0, cpu_s=3, memory_mb=512, max_processes=8, workers=2))
    assert [r.status for r in results[len(hostile):]] == ["passed"] * 3
    assert all(r.status != "passed" for r in results[: len(hostile)])
    assert sandbox_processes() == []


def test_runner_is_standalone():
    """The runner imports only the standard library (it runs as a script, outside the package)."""
    code = f"import runpy, sys; sys.argv = ['x']; sys.path = [p for p in sys.path if 'site-packages' not in p]\n" \
           f"import importlib.util; spec = importlib.util.spec_from_file_location('r', {str(sandbox_runner.__file__)!r}); " \
           f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)"
    assert subprocess.run([sys.executable, "-s", "-c", code]).returncode == 0
