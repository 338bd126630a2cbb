"""The tests' command runner (tests/forked_commands.py): a command forked from a Python that has
imported torch behaves as one started in a new interpreter."""
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from forked_commands import CommandForks

SCRIPT = r'''
import atexit, os, sys, threading, time
from pathlib import Path

atexit.register(lambda: print("atexit ran", flush=True))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", flush=True))).start()
print("argv", sys.argv[1:])
print("cwd", os.getcwd())
print("path0", sys.path[0] == str(Path(__file__).parent))
print("file", Path(__file__).name, __name__)
print("env", os.environ.get("FORK_TEST_VALUE"))
print("stdin", sys.stdin.read().strip())
print("to stderr", file=sys.stderr)
what = sys.argv[1]
if what == "raise":
    def inner():
        raise ValueError("bad value")
    inner()
if what == "exit3":
    sys.exit(3)
if what == "exit-text":
    sys.exit("a message")
if what == "sleep":
    time.sleep(60)
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "command.py"
    path.write_text(SCRIPT)
    return path


def both(script, what, cwd, **kw):
    """The same command through a fork and through a new interpreter."""
    env = {**os.environ, "FORK_TEST_VALUE": "seen", "WIKIGPT_TEST_FORK": "1"}  # (also in a suite run with it 0)
    forks = CommandForks(ROOT)
    forked = forks.run([script, what], cwd, env, "typed in", 60)
    assert forks.server is not None  # it did go through the fork server
    fresh = subprocess.run([sys.executable, str(script), what], cwd=cwd, env=env, input="typed in",
                           capture_output=True, text=True, timeout=60)
    return forked, fresh


@pytest.mark.parametrize("what,code", [("ok", 0), ("exit3", 3), ("exit-text", 1), ("raise", 1)])
def test_a_forked_command_exits_and_prints_as_a_new_interpreter_does(script, tmp_path, what, code):
    forked, fresh = both(script, what, tmp_path)
    assert forked.returncode == fresh.returncode == code
    assert forked.stdout == fresh.stdout  # argv, folder, sys.path[0], __file__, env, stdin, threads, atexit
    assert f"cwd {tmp_path}" in forked.stdout and "env seen" in forked.stdout and "stdin typed in" in forked.stdout
    assert forked.stdout.index("thread finished") < forked.stdout.index("atexit ran")
    if what == "raise":  # the traceback starts at the script, as Python's own: not in the fork server
        assert forked.stderr.splitlines()[:2] == fresh.stderr.splitlines()[:2]
        assert "forked_commands" not in forked.stderr and "runpy" not in forked.stderr
        assert forked.stderr.strip().endswith("ValueError: bad value")
    else:
        assert forked.stderr == fresh.stderr


def test_a_forked_command_past_its_timeout_is_killed(script, tmp_path):
    forks = CommandForks(ROOT)
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        forks.run([script, "sleep"], tmp_path, {**os.environ, "WIKIGPT_TEST_FORK": "1"}, "", 2)
    assert time.monotonic() - t0 < 30
    assert forks.run([script, "ok"], tmp_path, dict(os.environ), "", 60).returncode == 0  # and the server goes on
    assert forks.server.poll() is None


def test_what_python_or_torch_read_as_they_start_gets_a_new_interpreter(script, tmp_path):
    forks = CommandForks(ROOT)
    for changed in ({"PYTHONHASHSEED": "5"}, {"OMP_NUM_THREADS": "7"}):
        assert not forks.forkable([script], {**os.environ, **changed})
    assert forks.forkable([script], {**os.environ, "WIKIGPT_API_KEY": "x", "WIKIGPT_TEST_FORK": "1"})
    assert not forks.forkable(["-m", "pytest"], dict(os.environ))
    assert not forks.forkable([script], {**os.environ, "WIKIGPT_TEST_FORK": "0"})


def test_what_the_tests_import_and_compile_in_process_changes_no_startup_variable():
    """torch's first compile in a test's process set TORCHINDUCTOR_CACHE_DIR in os.environ, and
    importing scikit-learn KMP_DUPLICATE_LIB_OK and KMP_INIT_AT_FORK: every command after it was
    a new interpreter (conftest.py sets them first)."""
    import joblib  # noqa: F401
    import sklearn  # noqa: F401
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from conftest import STARTUP_ENV

    cache_dir()  # what a compile calls first
    forks = CommandForks(ROOT)
    forks.server, forks.server_env = object(), STARTUP_ENV  # as the fork server started by the first command
    assert forks.forkable(["train.py"], dict(os.environ))
