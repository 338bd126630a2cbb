"""Damaged or wrong inputs that used to end in a traceback or a misleading message: a cut-short
tokenizer.json, a cut-short sharded checkpoint, a full disk under an index build, a server's
HTML page in place of a dump, `--out .`, an empty source. Each is one paragraph that says what is
wrong and where, exit status 2, and nothing the user had is changed."""
import bz2
import errno
import gzip
import hashlib
import http.server
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import TINY, run_cli

from prepare_wiki import main as prepare_main
from wikigpt.prep.data import load_dataset


def snapshot(folder: Path) -> dict:
    """Every file under a folder (hidden ones too) and its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_paragraph(r, *phrases):
    """A command's refusal: exit 2, no traceback, the phrases said."""
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    for phrase in phrases:
        assert phrase in r.stderr, (phrase, r.stderr[-2000:])


# ----- a dataset's tokenizer.json, cut short or overwritten -----

@pytest.mark.parametrize("damage, said", [
    (lambda b: b[:100], "not valid JSON (Unterminated string"),  # a copy cut short
    (lambda b: b"\xff\xfe", "not valid JSON ('utf-8' codec can't decode byte 0xff"),
    (lambda b: b"[1, 2]", "not a tokenizer this code wrote"),
    (lambda b: b.replace(b'"AA=="', b'"AA<="', 1), "its merges do not make a tokenizer (Error: Incorrect padding)"),
    (lambda b: b.replace(b'["AQ==", 1]', b'["AQ==", 3]', 1), "its merges do not make a tokenizer (ValueError: the "
                                                              "merge ranks are not 0 to N-1, each once)"),
    (lambda b: b.replace(b'"AQ==", 1]', b'"AQ==", 1000]', 1), "its merges do not make a tokenizer (ValueError: "
                                                                "the merge ranks are not 0 to N-1"),  # a gap: silent
], ids=["cut short", "not UTF-8", "not a spec", "a merge not base64", "a rank repeated", "a rank with a gap"])
def test_a_damaged_tokenizer_json_is_named_in_one_line(tiny_data, tmp_path, damage, said):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    path = data / "tokenizer.json"
    path.write_bytes(damage(path.read_bytes()))
    before = snapshot(data)
    r = run_cli("train.py", f"--data={data}", f"--out_dir={tmp_path / 'run'}", "--max_steps=1", *TINY)
    one_paragraph(r, f"{path}: {said}", "re-run prepare_wiki.py --overwrite")
    assert snapshot(data) == before and not (tmp_path / "run").exists()


# ----- a sharded (FSDP) checkpoint folder with a file cut short -----

@pytest.fixture(scope="module")
def fsdp_run(tiny_data, tmp_path_factory):
    """A 2-step run with --shard=fsdp in one process: out/last.dcp (DCP) and out/best.pt."""
    out = tmp_path_factory.mktemp("fsdp")
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={out}", "--max_steps=2", "--eval_interval=2",
                "--shard=fsdp", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.parametrize("cut, said", [("train_state.pt", "cannot read its train_state.pt"),
                                       ("__0_0.distcp", "cannot read its shard files (*.distcp)")])
def test_a_cut_short_sharded_checkpoint_is_one_line_for_convert_and_resume(fsdp_run, tiny_data, tmp_path, cut, said):
    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    shard = run / "last.dcp" / cut
    shard.write_bytes(shard.read_bytes()[:1000])  # a copy that stopped short
    before = snapshot(run)
    r = run_cli("convert.py", "dcp", run / "last.dcp", tmp_path / "full.pt")
    one_paragraph(r, f"{run / 'last.dcp'}: {said}", "truncated, damaged", "best.pt")
    assert not (tmp_path / "full.pt").exists()
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={run}", "--max_steps=4", "--eval_interval=2",
                "--shard=fsdp", "--resume=true", *TINY)
    one_paragraph(r, f"{run / 'last.dcp'}: {said}")
    assert snapshot(run) == before


# ----- a full disk under retrieve.py --build -----

@pytest.mark.parametrize("full", [
    lambda: sqlite3.OperationalError("database or disk is full"),  # SQLite's SQLITE_FULL
    lambda: ValueError("An IO error occurred: 'No space left on device (os error 28) at path \"x\"'"),  # tantivy's
    lambda: OSError(errno.ENOSPC, "No space left on device"),
], ids=["sqlite", "tantivy", "ENOSPC"])
def test_a_full_disk_under_an_index_build_is_one_line_and_keeps_the_old_index(tiny_data, tmp_path, monkeypatch,
                                                                             capsys, full):
    from retrieve import main as retrieve_main
    from wikigpt.cli import run_main
    from wikigpt.knowledge import index_build
    from wikigpt.knowledge.index_build import build_index

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    build_index(data, quiet=True, workers=1)
    before = snapshot(data / "index")

    def disk_full(*args):
        raise full()
    monkeypatch.setattr(index_build._Store, "add", disk_full)  # the first row written to passages.sqlite
    monkeypatch.setattr("sys.argv", ["retrieve.py", "--data", str(data), "--build"])
    with pytest.raises(SystemExit) as stop:
        run_main(retrieve_main)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert f"error: the disk is full: the index build could not write {data / 'index.tmp'}" in err
    assert f"The index in {data / 'index'} was not changed. Free some space and run this again" in err
    assert snapshot(data / "index") == before
    monkeypatch.undo()  # space again: the same command builds the index
    assert build_index(data, quiet=True, workers=1)["generation"] == 2


# ----- a URL that answers with an HTML page -----

class _Pages(http.server.BaseHTTPRequestHandler):
    """A mirror that answers every path with its HTML "not found" page, and status 200."""
    asked = []

    def do_GET(self):
        self.asked.append(self.path)
        body = b"<!DOCTYPE html>\n<html><head><title>Not here</title></head><body>Moved.</body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def html_mirror():
    _Pages.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("name", ["enwiki-latest-pages-articles.xml.bz2", "simplewiki-latest-pages-articles.xml"])
def test_an_html_page_for_a_dump_is_not_cached(html_mirror, tmp_path, capsys, name):
    cache, url = tmp_path / "cache", f"{html_mirror}/{name}"
    for _ in range(2):  # it used to be kept: the second run said "using cached" and blamed the dump
        with pytest.raises(SystemExit) as stop:
            prepare_main([url, "--out", str(tmp_path / "ds"), "--cache_dir", str(cache), "--tokenizer", "bpe:300"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "Traceback" not in err
        assert f"downloading {url}: the server sent an HTML page ('<!DOCTYPE html>')" in err
        assert "Nothing was kept in the cache" in err
        assert sorted(p.name for p in cache.iterdir()) == [name + ".lock"]  # no dump, no .part
    assert _Pages.asked == [f"/{name}"] * 2 and not (tmp_path / "ds").exists()  # downloaded again, each time


@pytest.mark.parametrize("name,content,refused", [
    ("d.xml.gz", b"<mediawiki xmlns=...>", False),  # a .gz sent with Content-Encoding: gzip arrives unpacked
    ("d.jsonl.bz2", b'{"title": "A", "text": "B"}', False),
    ("d.xml", b"\xef\xbb\xbf  <mediawiki>", False), ("d.xml.bz2", b"BZh91AY&SY", False),
    ("d.xml.gz", b"<!DOCTYPE html><html>Not found</html>", True), ("d.xml", b"<html><body>login", True),
    ("d.xml.bz2", b"Service unavailable", True)])
def test_a_download_is_kept_when_its_content_is_readable_whatever_its_name(tmp_path, name, content, refused):
    """The readers tell a source by its content: only an HTML page, or bytes no reader takes, is refused."""
    from wikigpt.prep.download import unlike_its_name
    (tmp_path / name).write_bytes(content)
    assert bool(unlike_its_name(tmp_path / name, tmp_path / name)) == refused


def test_an_html_page_cached_by_an_older_version_is_named_with_how_to_fix_it(tmp_path, capsys):
    cache, name = tmp_path / "cache", "enwiki-latest-pages-articles.xml.bz2"
    cache.mkdir()
    page = b"<html><body>Service unavailable</body></html>"
    (cache / name).write_bytes(page)
    url = f"http://127.0.0.1:9/{name}"  # never asked: the cached file is used
    with pytest.raises(SystemExit) as stop:
        prepare_main([url, "--out", str(tmp_path / "ds"), "--cache_dir", str(cache), "--tokenizer", "bpe:300"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert f"{cache / name}, the cached download of {url}, is an HTML page ('<html><body>" in err
    assert f"Delete {cache / name} and run this again" in err
    assert (cache / name).read_bytes() == page and not (tmp_path / "ds").exists()  # the user deletes it


# ----- prepare_wiki.py --out . -----

def test_out_dot_works_beside_the_folder_and_can_overwrite_it_again(small_dump, tmp_path, monkeypatch, capsys):
    """`--out .` made its work folder `..partial` inside the output folder, then refused the folder
    for holding it, and every later --overwrite too."""
    here = tmp_path / "here"
    here.mkdir()
    for _ in range(2):  # an empty folder, then the dataset it became
        monkeypatch.chdir(here)  # (again: the folder the process was in was swapped out)
        prepare_main([str(small_dump), "--out", ".", "--overwrite", "--tokenizer", "bpe:300", "--min_chars", "50",
                      "--workers", "1"])
        assert f"note: {here}, the folder this was run in, is replaced by a new one" in capsys.readouterr().out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.xml", "here"]  # no work folder left
        assert not any(p.name.endswith(".partial") for p in here.iterdir())
        assert load_dataset(here).meta["splits"]["train"]["articles"] > 0


# ----- an empty source -----

@pytest.mark.parametrize("name, content", [("empty.xml", b""), ("empty.xml.bz2", b""),
                                           ("nothing.xml.bz2", bz2.compress(b"")), ("blank.jsonl", b"\n\n")])
def test_an_empty_source_is_said_to_be_empty(tmp_path, capsys, name, content):
    source = tmp_path / name
    source.write_bytes(content)
    with pytest.raises(SystemExit) as stop:
        prepare_main([str(source), "--out", str(tmp_path / "ds"), "--tokenizer", "bpe:300"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert f"{source}: the file is empty (no text in it, even once decompressed)" in err, err
    assert "article(s) left after cleaning" not in err
    assert source.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_folder_of_empty_files_is_said_to_be_empty(tmp_path, capsys):
    folder = tmp_path / "extracted"
    folder.mkdir()
    for name in ("wiki_00", "wiki_01"):
        (folder / name).write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        prepare_main([str(folder), "--out", str(tmp_path / "ds"), "--tokenizer", "bpe:300"])
    assert stop.value.code == 2
    assert f"{folder}: every file in the folder is empty" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


# ----- a damaged compressed source of articles (JSON lines, parquet) -----

def articles_jsonl(n: int = 2000) -> bytes:
    # hashes: text that compresses little, so that the damage falls past the decompressor's first read
    return b"\n".join(b'{"title": "Article %d", "text": "Article %d is about %s."}'
                      % (i, i, hashlib.sha256(b"%d" % i).hexdigest().encode()) for i in range(n))


def damaged_parquet() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [f"Article {i} is about the number {i} and its many uses. " * 20 for i in range(600)]
    out = io.BytesIO()
    pq.write_table(pa.table({"title": [f"A{i}" for i in range(600)], "text": rows}), out, row_group_size=100)
    data = bytearray(out.getvalue())
    at = len(data) * 2 // 5  # inside the third row group's compressed pages
    data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    return bytes(data)


@pytest.mark.parametrize("name, content, said", [
    ("cut.jsonl.gz", gzip.compress(articles_jsonl())[:-200], "the compressed file ends early (truncated download?)"),
    ("bad-crc.jsonl.gz", gzip.compress(articles_jsonl())[:-8] + b"\0" * 8, "cannot read this as a compressed "
                                                                           "JSON-lines file (CRC check failed"),
    ("flipped.parquet", damaged_parquet(), "of 6 is damaged"),
])
def test_a_damaged_compressed_source_is_one_line_and_loses_nothing(tmp_path, capsys, name, content, said):
    source = tmp_path / name
    source.write_bytes(content)
    with pytest.raises(SystemExit) as stop:
        prepare_main([str(source), "--out", str(tmp_path / "ds"), "--tokenizer", "bpe:300"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{source}: " in err and said in err and "Download it again" in err, err
    assert "Traceback" not in err and source.read_bytes() == content and not (tmp_path / "ds").exists()


def another_last_merge(data: bytes) -> bytes:
    """tokenizer.json with its last merge's bytes changed into others (one base64 letter): a
    tokenizer still, silently another one."""
    at = data.rindex(b'["') + 2
    return data[:at] + (b"B" if data[at:at + 1] != b"B" else b"C") + data[at + 1:]


@pytest.mark.parametrize("damage", [lambda b: b[:len(b) // 2], lambda b: b.replace(b'"AA=="', b'"AA<="', 1),
                                    another_last_merge], ids=["cut short", "not base64", "another merge"])
def test_a_damaged_tokenizer_in_an_interrupted_runs_work_folder_is_trained_again(small_dump, tmp_path, monkeypatch,
                                                                                  capsys, damage):
    import prepare_wiki

    def crash(*a, **k):  # killed after the tokenizer was trained and saved
        raise RuntimeError("killed")
    out, args = tmp_path / "ds", [str(small_dump), "--out", str(tmp_path / "ds"), "--tokenizer", "bpe:300"]
    monkeypatch.setattr(prepare_wiki, "encode_pass", crash)
    with pytest.raises(RuntimeError):
        prepare_main(args)
    monkeypatch.undo()
    saved = tmp_path / ".ds.partial" / "tokenizer.json"
    first = saved.read_bytes()
    saved.write_bytes(damage(first))
    assert saved.read_bytes() != first
    capsys.readouterr()
    prepare_main(args)  # the same command resumes
    captured = capsys.readouterr()
    assert f"note: {saved}, saved by this run before it stopped, is damaged: training the tokenizer again." \
        in captured.err
    assert "training bpe:300 tokenizer" in captured.out and "Traceback" not in captured.err
    assert (out / "tokenizer.json").read_bytes() == first and load_dataset(out).meta["splits"]["train"]["articles"] > 0


# ----- a checkpoint with a flipped bit -----

def test_a_checkpoint_with_a_flipped_bit_is_refused_naming_the_entry(tiny_ckpt, tmp_path):
    import zipfile

    from wikigpt.checkpoint import load_checkpoint
    from wikigpt.cli import UsageError
    damaged = tmp_path / "best.pt"
    data = bytearray(tiny_ckpt.read_bytes())
    with zipfile.ZipFile(tiny_ckpt) as z:  # the largest tensor's bytes: where a weight sits
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    header = data[entry.header_offset:entry.header_offset + 30]  # a zip local header: the name and extra follow
    start = entry.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    data[start + entry.file_size // 2] ^= 0x01  # (stored, not compressed: torch.save's)
    damaged.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=f"the checkpoint is damaged: its entry {entry.filename} fails the checksum or"):
        load_checkpoint(damaged)
    r = run_cli("sample.py", "--ckpt", str(damaged), "--prompt", "hi", "--max_new_tokens", "2")
    assert r.returncode == 2 and "fails the checksum" in r.stderr and "Traceback" not in r.stderr
    assert load_checkpoint(tiny_ckpt)["model"]  # the same bytes unflipped load
    # a weight's local header: its name's length flipped, torch.load read the weight from elsewhere, silently
    header = bytearray(tiny_ckpt.read_bytes())
    header[entry.header_offset + 26] ^= 0x01
    damaged.write_bytes(bytes(header))
    with pytest.raises(UsageError, match=f"its entry {entry.filename} fails the checksum or the header"):
        load_checkpoint(damaged)
    # the first entry's header, and the zip64 end record's disk number (zipfile raised from is_zipfile): one line
    for at, bit in ((26, 0x01), (26, 0x80), (bytes(data).rindex(b"PK\x06\x07") + 4, 0x01)):
        header = bytearray(tiny_ckpt.read_bytes())
        header[at] ^= bit
        damaged.write_bytes(bytes(header))
        with pytest.raises(UsageError, match="cannot read the checkpoint|fails the checksum"):
            load_checkpoint(damaged)


def test_a_checkpoint_saved_without_checksums_loads(tiny_ckpt, tmp_path):
    import torch

    from wikigpt.checkpoint import load_checkpoint
    from wikigpt.run.durable import failed_checksum
    ckpt, plain = torch.load(tiny_ckpt, weights_only=True), tmp_path / "no_crc.pt"
    torch.serialization.set_crc32_options(False)  # every entry's CRC written as 0
    try:
        torch.save(ckpt, plain)
    finally:
        torch.serialization.set_crc32_options(True)
    assert failed_checksum(plain) is None and load_checkpoint(plain)["model"].keys() == ckpt["model"].keys()


def test_a_bad_line_inside_a_compressed_source_says_it_may_be_damage(tmp_path, capsys):
    source = tmp_path / "bad.jsonl.gz"
    source.write_bytes(gzip.compress(articles_jsonl(20) + b"\n{not json\n"))
    with pytest.raises(SystemExit):
        prepare_main([str(source), "--out", str(tmp_path / "ds"), "--tokenizer", "bpe:300"])
    err = capsys.readouterr().err
    assert f"{source}:21: not valid JSON" in err and "if it was downloaded or copied, do that again" in err
