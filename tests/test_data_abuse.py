"""prepare_wiki.py against hostile or unlucky input: decompression bombs, wikitext that makes
lazy patterns rescan, a page that never finishes cleaning, a dataset path that reads as a URI,
repeated titles, a dump republished under a resumed download, --overwrite on a folder it did not
make, and a crash at any moment."""
import bz2
import gzip
import http.server
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import PROSE, ROOT, dump_xml, page, running

from prepare_wiki import main
from wikigpt.prep.data import load_dataset, read_articles

BOMB = 1 << 30  # 1 GiB of one repeated byte
RUN = 45 << 20  # bz2's run-length step squeezes this many repeated bytes into one ~80-byte stream


def build(source, out, *extra):
    main([str(source), "--out", str(out), "--tokenizer", "bpe:300", "--min_chars", "50",
          "--val_fraction", "0.2", "--workers", "1", *map(str, extra)])
    return load_dataset(out)


# ----- 1. decompression bombs: bounded pieces, a cap on one page -----

MEASURED = """
import json, resource, sys
import prepare_wiki
def peak_kb():
    usage = resource.getrusage
    return max(usage(resource.RUSAGE_SELF).ru_maxrss, usage(resource.RUSAGE_CHILDREN).ru_maxrss)
def cpu_seconds():  # of this process and its ended workers: waiting for a core on a loaded machine is not counted
    me, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + workers.ru_utime + workers.ru_stime
base, t0, code = peak_kb(), cpu_seconds(), 0
try:
    prepare_wiki.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
figures = {"code": code, "seconds": cpu_seconds() - t0, "grew_mb": (peak_kb() - base) / 1024}
print(json.dumps(figures), file=sys.stderr)
"""


# Skipping a 1 GiB bomb takes ~3.5 s of CPU here (decompressing it): the bound leaves room for a
# slower CPU; reading the page whole or quadratically would pass the memory or the time bound.
# CPU time, not wall time: with a third of a core (the other test worker's processes beside it) the
# same run took 12-16 s of wall time and failed a 10 s wall-clock bound.
BOMB_CPU_S = 30


def measured_run(source, out, *extra):
    """prepare_wiki in a fresh process: (exit code, CPU seconds of it and its workers, peak memory
    growth in MB of them over what it held after its imports, stderr)."""
    r = subprocess.run([sys.executable, "-c", MEASURED, str(source), "--out", str(out), "--tokenizer", "bpe:300",
                        "--min_chars", "50", "--val_fraction", "0.2", "--workers", "1", *map(str, extra)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    figures = json.loads(r.stderr.strip().splitlines()[-1])
    return figures["code"], figures["seconds"], figures["grew_mb"], r.stderr


@pytest.fixture(scope="module")
def a_run():
    return bz2.compress(b"a" * RUN)


def pages_of_words(n: int, words: int, name: str = "Page") -> list:
    rng = random.Random(name)  # varied words: bz2 cannot squeeze them, so the stream is kilobytes long
    vocab = PROSE.split()
    return [page(f"{name} {i}", " ".join(rng.choice(vocab) for _ in range(words))) for i in range(n)]


def page_bomb(path, a_run, before: list, after: list) -> Path:
    """A multistream .bz2 dump whose page 'Bomb' holds 1 GiB of "a" in its text."""
    xml = dump_xml(*before, "@BOMB@", *after).encode()
    head, tail = xml.split(b"@BOMB@")
    head += b'<page><title>Bomb</title><ns>0</ns><id>9</id><revision><id>9</id><text xml:space="preserve">'
    path.write_bytes(bz2.compress(head) + a_run * (BOMB // RUN + 1) + bz2.compress(b"</text></revision></page>" + tail))
    return path


@pytest.mark.parametrize("where", ["inside one range", "a range starts inside the page"])
def test_a_page_bomb_is_skipped_with_a_warning_in_bounded_time_and_memory(tmp_path, a_run, where):
    before = pages_of_words(3, 40) if where == "inside one range" else pages_of_words(40, 400)
    dump = page_bomb(tmp_path / "bomb.xml.bz2", a_run, before, pages_of_words(3, 40, "After"))
    assert dump.stat().st_size < 100_000  # a tiny file...
    code, seconds, grew_mb, err = measured_run(dump, tmp_path / "out")
    assert code == 0, err[-3000:]
    assert seconds < BOMB_CPU_S and grew_mb < 200, (seconds, grew_mb)  # ...that expands to 1 GiB
    assert "warning: skipped the page 'Bomb'" in err and "4 MiB" in err
    meta = load_dataset(tmp_path / "out").meta
    assert meta["dropped"]["too_large"] == 1
    assert meta["splits"]["train"]["articles"] + meta["splits"]["val"]["articles"] == len(before) + 3


def test_a_stream_of_no_pages_is_refused_in_bounded_time_and_memory(tmp_path, a_run):
    head = dump_xml().encode().replace(b"</mediawiki>", b"")  # a dump's header, then 1 GiB of "a"
    (tmp_path / "garbage.xml.bz2").write_bytes(bz2.compress(head) + a_run * (BOMB // RUN + 1))
    member = gzip.compress(b"a" * (64 << 20), compresslevel=1)  # gzip members concatenate, too
    (tmp_path / "garbage.xml.gz").write_bytes(gzip.compress(head) + member * 16)
    for name in ("garbage.xml.bz2", "garbage.xml.gz"):
        code, seconds, grew_mb, err = measured_run(tmp_path / name, tmp_path / "out")
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert f"{name}: not a MediaWiki dump: more than 4 MiB of XML outside any <page>" in err
        assert seconds < BOMB_CPU_S and grew_mb < 200, (name, seconds, grew_mb)
        assert not (tmp_path / "out").exists()


def test_one_stream_gzip_page_and_jsonl_line_bombs_are_skipped(tmp_path):
    gib = gzip.compress(b"a" * (64 << 20), compresslevel=1) * 16  # gzip members concatenate: 1 GiB in 1 MB
    xml = dump_xml(*pages_of_words(3, 40), "@BOMB@").encode()
    head, tail = xml.split(b"@BOMB@")
    head += b"<page><title>Bomb</title><ns>0</ns><revision><text>"
    tail = b"</text></revision></page>" + tail
    (tmp_path / "bomb.xml.gz").write_bytes(gzip.compress(head) + gib + gzip.compress(tail))
    rows = "".join(json.dumps({"title": f"Doc {i}", "text": f"Doc {i}. {PROSE}"}) + "\n" for i in range(3)).encode()
    head, tail = rows + b'{"title": "Bomb", "text": "', b'"}\n' + rows.replace(b"Doc", b"More")
    (tmp_path / "bomb.jsonl.gz").write_bytes(gzip.compress(head) + gib + gzip.compress(tail))
    for name, kept in (("bomb.xml.gz", 3), ("bomb.jsonl.gz", 6)):
        out = tmp_path / name.split(".")[1]
        code, seconds, grew_mb, err = measured_run(tmp_path / name, out)
        assert code == 0 and seconds < BOMB_CPU_S and grew_mb < 200, (name, code, seconds, grew_mb, err[-2000:])
        assert "warning: skipped the page 'Bomb'" in err
        meta = load_dataset(out).meta
        assert meta["dropped"] == {"too_large": 1}
        assert meta["splits"]["train"]["articles"] + meta["splits"]["val"]["articles"] == kept


def test_an_index_of_one_endless_line_is_not_read_whole(tmp_path, a_run, capsys):
    from wikigpt.prep.ranges import range_plan, write_multistream

    pages = pages_of_words(30, 40)
    xml = dump_xml(*pages).encode()
    first, last = xml.index(b"<page>"), xml.rindex(b"</page>") + len(b"</page>")
    dump = tmp_path / "x-multistream.xml.bz2"
    write_multistream(xml[:first], [p.encode() for p in pages], xml[last:], dump, 10)
    (tmp_path / "x-multistream-index.txt.bz2").write_bytes(a_run * (BOMB // RUN + 1))  # 1 GiB, no newline
    t0 = time.monotonic()
    plan = range_plan(dump)
    assert time.monotonic() - t0 < 2 and len(plan.starts) == 5  # header, 3 streams of pages, footer: by scanning
    assert "a line of more than 4096 characters" in capsys.readouterr().err


def test_a_page_over_the_cap_is_skipped_alike_in_every_layout_of_a_dump(tmp_path, capsys):
    from wikigpt.prep.ranges import write_multistream

    block = " ".join(random.Random(0).choice(PROSE.split()) for _ in range(10_000))
    pages = pages_of_words(6, 60) + [page("Huge", block * (5 * 2**20 // len(block)))] + pages_of_words(6, 60, "Late")
    xml = dump_xml(*pages).encode()  # the huge page spans two of plain XML's 4 MiB ranges
    (tmp_path / "plain.xml").write_bytes(xml)
    (tmp_path / "one-stream.xml.bz2").write_bytes(bz2.compress(xml))
    first, last = xml.index(b"<page>"), xml.rindex(b"</page>") + len(b"</page>")
    write_multistream(xml[:first], [p.encode() for p in pages], xml[last:], tmp_path / "x-multistream.xml.bz2", 2)
    for name in ("plain.xml", "one-stream.xml.bz2", "x-multistream.xml.bz2"):
        ds = build(tmp_path / name, tmp_path / f"out-{name}", "--workers", 2)
        assert ds.meta["dropped"] == {"too_large": 1}, name
        assert sorted(r["title"] for r in read_articles(tmp_path / f"out-{name}")) == sorted(
            [f"Page {i}" for i in range(6)] + [f"Late {i}" for i in range(6)]), name
        assert "warning: skipped the page 'Huge': more than 4 MiB of XML" in capsys.readouterr().err


# ----- 2. cleaning in linear time -----

BODY = """'''Testriver''' is a river<ref name="a">{{cite web|url=http://x.org|title=Source}}</ref> in [[Utopia|the land of Utopia]].<ref>Plain ref text</ref>
[[File:River.jpg|thumb|A caption with [[link]]]]
It is {{convert|12|km|mi}} long. <!-- hidden comment --> It has <span style="color:red">red water</span>.
{{Infobox river|name=Test|length=12 km|mouth=[[Sea]]}}
== History ==
The river was <b>named</b> in 1900.{{citation needed}} It flows past the [[Mill (grinding)|mill]].

"""
HOSTILE = {"unclosed comments": "<!-- x ", "unclosed refs": "<ref name=a>x ", "unclosed templates": "{{x|a= ",
           "unclosed infoboxes": "{{Infobox x|a=", "unclosed file links": "[[File:x.jpg|a ",
           "deeply nested templates": None, "unclosed leftover refs": "&lt;ref&gt;x "}
SIZE = 200_000


def cleaning_seconds(text: str) -> float:
    from wikigpt.prep.facts import article_knowledge
    from wikigpt.prep.wikitext import CleanSettings, clean_wikitext

    t0, found = time.perf_counter(), {}
    article, _ = clean_wikitext("Page", text, CleanSettings(), found)
    article_knowledge(text, article[1] if article else "", found)  # the worker's whole work per page
    return time.perf_counter() - t0


def test_pathological_wikitext_cleans_in_linear_time():
    normal = (BODY * (SIZE // len(BODY) + 1))[:SIZE]
    base = min(cleaning_seconds(normal) for _ in range(3))  # the same size of ordinary wikitext
    for name, unit in HOSTILE.items():
        text = "{{a|" * (SIZE // 8) + "}}" * (SIZE // 8) if unit is None else (unit * (SIZE // len(unit) + 1))[:SIZE]
        seconds = cleaning_seconds(text)
        # quadratic took 7 s on 140 kB of "<!--"; a ratio, not an absolute time, so a loaded
        # machine slows both sides alike
        assert seconds < 20 * base, (name, seconds, base)


def test_unclosed_markup_cleans_as_mediawiki_shows_it():
    from wikigpt.prep.wikitext import CleanSettings, clean_wikitext

    def clean(text):
        return clean_wikitext("T", text, CleanSettings(min_chars=1))[0][1]
    assert clean("Kept text. <!-- a comment that never closes\nhides the rest") == "Kept text."  # as MediaWiki
    assert clean("A <ref>cited</ref> fact. An open <ref name=x>tag stays text.") == "A fact. An open tag stays text."
    assert clean("A {{convert|3|km}} walk. {{unclosed|x") == "A 3 km walk. unclosed|x"


# ----- 3. a page that never finishes cleaning -----

@pytest.mark.parametrize("workers, stuck", [(1, True), (2, True), (2, False)])
def test_a_page_that_never_finishes_cleaning_or_crashes_is_skipped_and_named(small_dump, tmp_path, monkeypatch, capsys,
                                                                              workers, stuck):
    from wikigpt.prep import jobs

    real = jobs.clean_wikitext

    def bad_on_article_5(title, *args, **kwargs):  # as a parser that never returns, or crashes, on one page
        if title == "Article 5":
            threading.Event().wait() if stuck else os.kill(os.getpid(), signal.SIGKILL)
        return real(title, *args, **kwargs)
    monkeypatch.setattr(jobs, "clean_wikitext", bad_on_article_5)
    t0 = time.monotonic()
    ds = build(small_dump, tmp_path / "out", "--page_timeout", "1", "--workers", workers)
    assert time.monotonic() - t0 < 20
    said = "its cleaning took more than 1 s" if stuck else "the worker process cleaning it died"
    assert f"warning: skipped the page 'Article 5': {said}" in capsys.readouterr().err
    assert ds.meta["dropped"]["timeout" if stuck else "crashed"] == 1
    kept = sorted(r["title"] for r in read_articles(tmp_path / "out"))
    assert kept == sorted(f"Article {i}" for i in range(12) if i != 5)


# ----- 4. a dataset path with '#' or '?' -----

def test_the_knowledge_graph_opens_read_only_from_a_folder_named_like_a_uri(small_dump, tmp_path):
    from wikigpt.knowledge.graph import Knowledge

    out = tmp_path / "data #1?x"
    build(small_dump, out)
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(out))
    kb = Knowledge.open(out)
    assert kb.title(kb.subject("Article 3")) == "Article 3"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        kb.db.execute("CREATE TABLE t(x)")
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(out))) == before  # no stray file


# ----- 5. two articles of one title -----

def test_an_article_whose_title_repeats_an_earlier_one_is_skipped_early(tmp_path, capsys):
    from wikigpt.knowledge.graph import Knowledge

    rows = [("Twin", "The first twin. "), ("Other", "Another article. "), ("Twin", "The second twin. "),
            ("Third", "A third. ")]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"title": t, "text": x + PROSE}) + "\n" for t, x in rows))
    ds = build(tmp_path / "a.jsonl", tmp_path / "out")
    out = capsys.readouterr().out
    said = "skipped 1 article(s) whose title repeats an earlier one: e.g. 'Twin'"
    assert said in out and out.index(said) < out.index("training bpe")  # found before any tokenizing
    assert ds.meta["dropped"] == {"duplicate_title": 1}
    kept = list(read_articles(tmp_path / "out"))
    assert [r["title"] for r in kept] == ["Twin", "Other", "Third"] and kept[0]["text"].startswith("The first twin.")
    assert ds.meta["splits"]["train"]["articles"] + ds.meta["splits"]["val"]["articles"] == 3
    kb = Knowledge.open(tmp_path / "out")
    assert kb.counts["articles"] == 3 and kb.subject("Twin") == 0


# ----- 6. a resumed download of a file that changed -----

class _Server(http.server.BaseHTTPRequestHandler):
    """One file with an ETag, Range and If-Range as RFC 9110 has them; it can cut a response short."""
    file = (b"", '"v1"')
    cut_after = None  # bytes after which the next response breaks off
    seen = []

    def do_GET(self):
        data, etag = self.file
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        self.seen.append((rng, if_range))
        start = int(rng.split("=")[1].split("-")[0]) if rng and (if_range is None or if_range == etag) else 0
        self.send_response(206 if start else 200)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body, _Server.cut_after = data[start:][:self.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("changed", [False, True])
def test_a_resumed_download_never_splices_two_versions(tmp_path, capsys, changed):
    from wikigpt.prep.download import download
    from wikigpt.prep.dumps import WikiError

    old, new = b"BZh" + os.urandom(3_000_000), b"BZh" + os.urandom(3_000_000)  # a .bz2 starts so (else refused)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/wiki-latest.xml.bz2"
    try:
        _Server.file, _Server.cut_after, _Server.seen = (old, '"v1"'), 2_500_000, []
        with pytest.raises(WikiError, match="Run the same command again"):
            download(url, tmp_path)  # the connection breaks off after 2.5 MB
        if changed:  # "latest" republished in between
            _Server.file = (new, '"v2"')
        path = download(url, tmp_path)
    finally:
        server.shutdown()
    rng, if_range = _Server.seen[1]  # resumed after the bytes it kept, only if still the same file
    assert 0 < int(rng.removeprefix("bytes=").removesuffix("-")) <= 2_500_000 and if_range == '"v1"'
    assert path.read_bytes() == (new if changed else old)
    assert ("starting over" in capsys.readouterr().out) == changed


def test_a_download_that_gets_no_byte_says_so_not_that_it_resumes(tmp_path):
    """A host that cannot be reached said "Run the same command again: it resumes from the 0 bytes
    in ...part", a file that does not exist."""
    from wikigpt.prep.download import download
    from wikigpt.prep.dumps import WikiError
    with socket.socket() as s:  # a loopback port nothing listens on: refused at once, no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WikiError, match=r"failed before any byte came .* Check the URL and this machine's network") as e:
        download(f"http://127.0.0.1:{port}/enwiki.xml.bz2", tmp_path)
    assert "resumes" not in str(e.value) and not list(tmp_path.glob("*.part"))


class _Slow(http.server.BaseHTTPRequestHandler):
    """One file, sent in 10 pieces 0.05 s apart (a download that takes a while); Range ignored."""
    data, requests = b"", []

    def do_GET(self):
        self.requests.append(self.headers.get("Range"))
        self.send_response(200)
        self.send_header("ETag", '"v1"')
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        piece = len(self.data) // 10
        for i in range(0, len(self.data), piece):
            self.wfile.write(self.data[i:i + piece])
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args):
        pass


def test_two_runs_downloading_one_file_into_one_cache_get_it_whole_and_once(tmp_path, capsys):
    """Both wrote NAME.part at once (the second truncated the first's) and each renamed it into
    place: a corrupt dump, cached for good. The second now waits for the first, then uses its file."""
    from wikigpt.prep.download import download

    _Slow.data, _Slow.requests, got = b"BZh" + os.urandom(1_000_000), [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/wiki-latest.xml.bz2"
    runs = [threading.Thread(target=lambda: got.append(download(url, tmp_path))) for _ in range(2)]
    try:
        runs[0].start()
        time.sleep(0.2)  # the first one is downloading
        runs[1].start()
        for run in runs:
            run.join(30)
    finally:
        server.shutdown()
    assert got == [tmp_path / "wiki-latest.xml.bz2"] * 2 and got[0].read_bytes() == _Slow.data
    assert _Slow.requests == [None]  # downloaded once
    assert "waiting for another download of" in capsys.readouterr().out


# ----- 7. --overwrite replaces only what prepare_wiki.py made -----

def test_overwrite_refuses_a_model_export_and_keeps_an_older_dataset_replaceable(small_dump, tmp_path, capsys):
    export = tmp_path / "export"  # what a transformers export holds
    export.mkdir()
    files = {"config.json": b'{"model_type": "gpt2"}', "tokenizer.json": b"{}", "model.safetensors": b"\0" * 64}
    for name, data in files.items():
        (export / name).write_bytes(data)
    with pytest.raises(SystemExit) as e:
        build(small_dump, export, "--overwrite")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "config.json, model.safetensors" in err and "model export" in err
    assert "choose another --out" in err
    assert {p.name: p.read_bytes() for p in export.iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.xml", "export"]
    old = tmp_path / "old"  # a dataset of an older prepare_wiki.py: no marker in its meta.json
    build(small_dump, old)
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("made_by", "files")}))
    assert build(small_dump, old, "--overwrite").meta["made_by"] == "prepare_wiki.py"


# ----- 8. durable: bytes on disk before each rename; a crash leaves no dataset or a whole one -----

def test_every_rename_comes_after_its_bytes_are_on_disk(small_dump, tmp_path, monkeypatch):
    events, real_fsync, real_replace, real_rename = [], os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            files = [str(p) for p in Path(src).rglob("*") if p.is_file()] if Path(src).is_dir() else []
            events.append(("rename", os.path.abspath(src), files))
            return real(src, dst, *args, **kwargs)
        return rename
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))
    build(small_dump, tmp_path / "out", "--checkpoint_mb", "0.001")
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert len(renames) > 8  # parts, knowledge, articles, meta.json, the folder...
    for i in renames:
        _, src, files = events[i]
        synced = {path for kind, path, *_ in events[:i] if kind == "fsync"}
        assert src in synced and set(files) <= synced, (src, set(files) - synced)


def whole_or_absent(out: Path):
    """A dataset folder that is not there, or loads with every file's size as meta.json says."""
    if not out.exists():
        return
    ds = load_dataset(out)
    assert {p.name: p.stat().st_size for p in out.iterdir() if p.name != "meta.json"} == ds.meta["files"]


def test_a_run_killed_at_any_moment_leaves_no_dataset_or_a_whole_one(tmp_path):
    args = [sys.executable, "prepare_wiki.py", "--out", str(tmp_path / "demo"), "--tokenizer", "bpe:300",
            "--workers", "1", "--overwrite", "--checkpoint_mb", "0.05"]
    t0 = time.monotonic()
    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    whole = time.monotonic() - t0
    for seed in range(3):
        if seed != 1:  # a run with no dataset there yet; seed 1 replaces one (--overwrite)
            shutil.rmtree(tmp_path / "demo", ignore_errors=True)
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=random.Random(seed).uniform(0.2, 1.0) * whole)  # a random moment of the run
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        whole_or_absent(tmp_path / "demo")
        r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        whole_or_absent(tmp_path / "demo")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no work folder left behind


# ----- 9. a run killed outright leaves no worker behind

POOL = r"""
import sys, time
from wikigpt.prep.workers import worker_pool
with worker_pool(time.sleep, 2) as pool:
    print(" ".join(str(p.pid) for p in pool.procs), flush=True)
    sys.stdin.readline()  # never comes: the test kills this process here
"""


def test_the_workers_of_a_killed_run_die_with_it():
    """prepare_wiki.py SIGKILLed (the OOM killer's signal): its workers end too. Each worker
    forked after another holds that one's end of its pipe, so none saw its pipe close: they
    waited forever, each holding what it inherited."""
    proc = subprocess.Popen([sys.executable, "-c", POOL], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20  # a bound, not a wait: the kernel's signal comes at once
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if running(p)]
    for p in left:  # not left running after a failure
        os.kill(p, signal.SIGKILL)
    assert not left, "workers outlived the killed run"

