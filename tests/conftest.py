"""Shared test setup: the repository root, tiktoken pointed at the offline cache, helpers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forked_commands import CommandForks
from wikigpt.run.cores import usable_cores

ROOT = Path(__file__).resolve().parent.parent  # on sys.path through pyproject.toml's pytest settings

# The machines that run the tests reach no internet: tiktoken's GPT-2 files come from the
# cache folder beside the repository (tests and CI only; users download them as usual).
_cache = ROOT.parent / "shared" / "tiktoken-cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _cache.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_cache)

# Loopback only, whatever the machine: torchrun's rendezvous looks its own hostname up (a name
# not in /etc/hosts retried forever), and the HTTP clients of the tests would go through a proxy
# set in the environment
os.environ.setdefault("PET_LOCAL_ADDR", "127.0.0.1")  # torchrun's --local_addr
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))

# Two workers on two cores, each with torch's default of one thread per core, ran 4 threads on 2
# cores (and their subprocesses more): the suite took 9 min 25 s, and 7 min 33 s - 8 min 9 s with
# OMP_NUM_THREADS=1. Each worker (and the processes it starts) gets its share of the cores,
# unless the thread count is set already (the suite is also run with it set, as a check).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _workers and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cores() // _workers))

# Libraries the tests import in this process set variables that tests/forked_commands.py counts as
# startup variables: torch its TORCHINDUCTOR_CACHE_DIR (to its default, /tmp/torchinductor_<user>)
# the first time a test compiles, scikit-learn and joblib KMP_DUPLICATE_LIB_OK and KMP_INIT_AT_FORK
# (read by Intel's OpenMP, which no library here loads) as they are imported. From then on every
# command of that worker saw a startup variable changed and started a new interpreter instead of a
# fork, ~2 s more each: ~120 commands of a whole run, 18 of test_train.py run alone. Set to
# those values before any command runs, they no longer change (test_forked_commands.py checks it).
from torch._inductor.runtime.cache_dir_utils import cache_dir  # noqa: E402

cache_dir()  # the variable if it is set, else torch's default (the folder made), now in os.environ
os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "True")  # sklearn/__init__.py's values
os.environ.setdefault("KMP_INIT_AT_FORK", "FALSE")
STARTUP_ENV = dict(os.environ)  # what the commands' fork server starts with


# The files that take longest first (seconds on the 2-core machine, a fresh clone's compile cache:
# docs/tests.md): `make test` hands whole files to 2 workers in this order (with
# --no-loadscope-reorder: pytest-xdist otherwise orders files by their number of tests, and
# test_demo.py's one 80-s test ran last, alone, while the other worker idled).
LONGEST_FIRST = ("test_train.py", "test_eval.py", "test_train_resume.py", "test_demo.py", "test_prune.py",
                 "test_gpu_paths.py", "test_chat_sft.py", "test_serve.py", "test_export.py", "test_lora_quant.py",
                 "test_crash_safety.py", "test_retrieve.py", "test_server_abuse.py", "test_data_abuse.py")


def pytest_collection_modifyitems(items):
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


_commands = CommandForks(ROOT)


def run_cli(*args, cwd=None, timeout=600, input=None, env=None) -> subprocess.CompletedProcess:
    """Run one of the project's scripts as a user would: a real process of its own (forked from
    one that has imported torch already: tests/forked_commands.py)."""
    return _commands.run(args, cwd or ROOT, {**os.environ, **(env or {})}, input, timeout)


def two_machines(args_of, timeout=300) -> list[tuple[int, str, str]]:
    """train.py under two torchrun launchers (one process each) meeting through a c10d rendezvous
    on 127.0.0.1, as two machines would; args_of(rank): its arguments on each. (returncode,
    stdout, stderr) of each; launchers still running at the timeout (a hang) are killed whole."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=wikigpt-test", "train.py",
         *map(str, args_of(rank))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout) for p in nodes]
    finally:  # nothing left running for the next tests
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(p.returncode, out, err) for p, (out, err) in zip(nodes, outs)]


def page(title, text, ns=0, redirect=None):
    red = f'<redirect title="{redirect}" />' if redirect else ""
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{red}"
            f"<revision><id>2</id><text xml:space=\"preserve\">{esc}</text></revision></page>")


def dump_xml(*pages):
    return ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">'
            "<siteinfo><sitename>Wikipedia</sitename></siteinfo>" + "".join(pages) + "</mediawiki>")


PROSE = ("The river flows through the valley and past the old mill, where the farmers of the "
         "region once brought their grain every autumn to be ground into flour for the winter. ")


@pytest.fixture
def small_dump(tmp_path):
    """A small plain-XML dump: 12 articles plus pages that must be dropped."""
    pages = [page(f"Article {i}", f"'''Article {i}''' is number {i}. " + PROSE * 4) for i in range(12)]
    pages += [page("Talk page", PROSE * 3, ns=1), page("Old name", "#REDIRECT [[Article 1]]",
                                                        redirect="Article 1"),
              page("Mercury (disambiguation)", "'''Mercury''' may refer to:\n* a planet\n" + PROSE * 3),
              page("Copy of article 3", "'''Article 3''' is number 3. " + PROSE * 4)]
    path = tmp_path / "dump.xml"
    path.write_text(dump_xml(*pages), encoding="utf-8")
    return path


TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
        "--eval_tokens=512", "--log_interval=1", "--warmup_steps=2", "--compile=false", "--lr=0.01"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small real dataset (prepare_wiki on a built dump, bpe:300) shared by the tests."""
    from prepare_wiki import main as prepare

    root = tmp_path_factory.mktemp("tiny")
    pages = [page(f"Article {i}", f"'''Article {i}''' is about topic {i}. " + PROSE * (3 + i % 4))
             for i in range(30)]
    (root / "dump.xml").write_text(dump_xml(*pages), encoding="utf-8")
    prepare([str(root / "dump.xml"), "--out", str(root / "data"), "--tokenizer", "bpe:300",
             "--min_chars", "50", "--val_fraction", "0.2", "--workers", "1"])
    return root / "data"


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_data, tmp_path_factory):
    """A tiny pretrained checkpoint (20 steps) for the sampling and SFT tests."""
    out = tmp_path_factory.mktemp("tiny_ckpt")
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={out}", "--max_steps=20",
                "--eval_interval=10", *TINY)
    assert r.returncode == 0, r.stderr
    return out / "last.pt"


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "(name)", which may hold spaces
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Running, not a zombie (a zombie holds no files; whoever adopted it reaps it)."""
    s = proc_stat(pid)
    return s is not None and s[0] != "Z"
