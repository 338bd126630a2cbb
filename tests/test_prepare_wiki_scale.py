"""prepare_wiki.py at dump scale: a dump from a URL, its download resumed; a multistream dump
read in byte ranges by the workers (the same bytes as every other way); an index of another
dump; a run killed mid-way that resumes and writes the same bytes."""
import bz2
import gzip
import hashlib
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import dump_xml, page, run_cli
from test_prepare_wiki import build

from prepare_wiki import main
from wikigpt.prep.ranges import range_plan, write_multistream


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with ETags and HTTP Range support, as Wikimedia's servers do."""
    ranges = []

    def do_GET(self):
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("ETag", f'"{len(data)}"')
        self.send_header("Content-Length", str(len(data) - start))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


def test_url_source_downloads_with_resume(small_dump, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    data = bz2.compress(small_dump.read_bytes())
    (served / "wiki.xml.bz2").write_bytes(data)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "wiki.xml.bz2.part").write_bytes(data[:100])  # an earlier, interrupted download
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    multistream(wordy_pages(50), served / "xwiki-multistream.xml.bz2", per_stream=10)
    try:
        url = f"http://127.0.0.1:{server.server_port}/wiki.xml.bz2"  # the ETag it gave then, beside it:
        (cache / "wiki.xml.bz2.part.json").write_text(json.dumps({"url": url, "validator": f'"{len(data)}"'}))
        ds = build(url, tmp_path / "ds", "--cache_dir", cache)
        build(url.replace("wiki.xml", "xwiki-multistream.xml"), tmp_path / "ms", "--cache_dir", cache)
    finally:
        server.shutdown()
    assert _RangeHandler.ranges == ["bytes=100-", None, None]
    assert (cache / "wiki.xml.bz2").read_bytes() == data
    assert ds.meta["splits"]["train"]["articles"] + ds.meta["splits"]["val"]["articles"] == 12
    index = "xwiki-multistream-index.txt.bz2"  # a multistream dump's index comes with it
    assert (cache / index).read_bytes() == (served / index).read_bytes()



WORDS = ("river valley mill farmer grain autumn winter flour bridge town market church castle "
         "forest hill stone road king queen war peace law trade ship harbour island coast").split()


def wordy_pages(n: int, seed: int = 0) -> list:
    """Articles of varied words (bz2 cannot squeeze them to nothing, so dumps have many
    streams and ranges), plus a redirect and a talk page every 50."""
    rng = random.Random(seed)
    pages = []
    for i in range(n):
        text = f"'''Place {i}''' is a [[place]].\n\n" + " ".join(rng.choice(WORDS) for _ in range(300))
        pages.append(page(f"Place {i}", text + "\n\n== References ==\n{{reflist}}"))
        if i % 50 == 0:
            pages += [page(f"Old {i}", f"#REDIRECT [[Place {i}]]", redirect=f"Place {i}"),
                      page(f"Talk {i}", text, ns=1)]
    return pages


def shards_of(out: Path) -> dict:
    """Digests of the shards, the tokenizer and the kept articles (as text: how the gzip file
    is cut into members follows the source's layout)."""
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
               if p.suffix == ".bin" or p.name in ("tokenizer.json", "knowledge.sqlite")}
    return digests | {"articles": hashlib.sha256(gzip.decompress((out / "articles.jsonl.gz").read_bytes())).hexdigest()}


def multistream(pages: list, path: Path, per_stream: int) -> Path:
    xml = dump_xml(*pages).encode()
    first, last = xml.index(b"<page>"), xml.rindex(b"</page>") + len(b"</page>")
    write_multistream(xml[:first], [p.encode() for p in pages], xml[last:], path, per_stream)
    return path


def test_multistream_dump_is_read_in_ranges_and_matches_every_other_way(tmp_path):
    pages = wordy_pages(400)
    xml = dump_xml(*pages).encode()
    dump = multistream(pages, tmp_path / "enwiki-x-pages-articles-multistream.xml.bz2", per_stream=20)
    index = tmp_path / "enwiki-x-pages-articles-multistream-index.txt.bz2"
    offsets = sorted({int(line.split(":")[0]) for line in bz2.decompress(index.read_bytes()).decode().splitlines()})
    plan = range_plan(dump)
    assert plan.starts == [0] + offsets and len(plan.starts) == 1 + 21  # header + 20 page streams
    assert len(list(plan.ranges())) > 4  # several jobs even for a small dump
    (tmp_path / "plain.xml").write_bytes(xml)
    (tmp_path / "one-stream.xml.bz2").write_bytes(bz2.compress(xml))
    assert range_plan(tmp_path / "one-stream.xml.bz2") is None  # read as one stream
    (tmp_path / "src").mkdir()  # streams cut anywhere, as a parallel bzip2 writes them
    cut = tmp_path / "src" / "dump.xml.bz2"
    cut.write_bytes(b"".join(bz2.compress(xml[i:i + 5000]) for i in range(0, len(xml), 5000)))
    assert len(range_plan(cut).starts) == -(-len(xml) // 5000)  # found by scanning
    digests = {}
    for name, src, workers in [("index-1", dump, 1), ("index-2", dump, 2), ("plain", tmp_path / "plain.xml", 2),
                               ("one-stream", tmp_path / "one-stream.xml.bz2", 2), ("cut", cut, 2)]:
        main([str(src), "--out", str(tmp_path / name), "--min_chars", "50", "--val_fraction", "0.1",
              "--workers", str(workers), "--shard_tokens", "20000"])
        digests[name] = shards_of(tmp_path / name)
    assert len(digests["index-1"]) > 4  # several shards
    assert all(d == digests["index-1"] for d in digests.values())
    meta = json.loads((tmp_path / "cut" / "meta.json").read_text())
    assert meta["dropped"] == {"redirect": 8, "not_article": 8}
    assert meta["splits"]["train"]["articles"] + meta["splits"]["val"]["articles"] == 400


def test_an_index_of_another_dump_falls_back_to_scanning(tmp_path, capsys):
    dump = multistream(wordy_pages(100), tmp_path / "a-multistream.xml.bz2", per_stream=10)
    main([str(dump), "--out", str(tmp_path / "with-index"), "--workers", "1"])
    multistream(wordy_pages(60, seed=1), tmp_path / "b-multistream.xml.bz2", per_stream=7)
    os.replace(tmp_path / "b-multistream-index.txt.bz2", tmp_path / "a-multistream-index.txt.bz2")
    capsys.readouterr()
    main([str(dump), "--out", str(tmp_path / "scanned"), "--workers", "1"])
    err = capsys.readouterr().err
    assert "warning: the index a-multistream-index.txt.bz2 does not match a-multistream.xml.bz2" in err
    assert "Finding the streams by scanning instead" in err
    assert shards_of(tmp_path / "scanned") == shards_of(tmp_path / "with-index")


@pytest.mark.parametrize("layout", ["index", "cut anywhere"])
def test_a_killed_run_resumes_and_writes_the_same_bytes(tmp_path, layout):
    if layout == "index":  # streams of 20 pages and their index
        dump = multistream(wordy_pages(1500), tmp_path / "enwiki-multistream.xml.bz2", per_stream=20)
    else:  # 4 kB streams: a page is cut between ranges, and between saved parts (the carry)
        xml = dump_xml(*wordy_pages(1500)).encode()
        dump = tmp_path / "cut.xml.bz2"
        dump.write_bytes(b"".join(bz2.compress(xml[i:i + 4000]) for i in range(0, len(xml), 4000)))
    args = [dump, "--min_chars", "50", "--val_fraction", "0.1", "--workers", "1", "--checkpoint_mb", "0.02",
            "--shard_tokens", "50000"]
    assert run_cli("prepare_wiki.py", *args, "--out", tmp_path / "whole").returncode == 0
    work = tmp_path / ".resumed.partial"
    proc = subprocess.Popen([sys.executable, "prepare_wiki.py", *map(str, args), "--out", tmp_path / "resumed"],
                            cwd=Path(__file__).parent.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:  # kill it as soon as it has saved some progress
        try:
            saved = json.loads((work / "progress.json").read_text())
        except (OSError, ValueError):
            continue
        if saved.get("clean", {}).get("parts", 0) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert "cleaned" not in saved and not (tmp_path / "resumed").exists()
    assert layout == "index" or saved["clean"]["carry"]  # bytes of an unfinished page were carried over
    r = run_cli("prepare_wiki.py", *args, "--out", tmp_path / "resumed")
    assert r.returncode == 0, r.stderr
    assert f"resuming after {saved['clean']['jobs']} jobs" in r.stdout
    assert shards_of(tmp_path / "resumed") == shards_of(tmp_path / "whole")
    assert not work.exists()
    r = run_cli("prepare_wiki.py", *args, "--out", tmp_path / "resumed")  # a finished one is kept
    assert r.returncode == 2 and "--overwrite" in r.stderr
