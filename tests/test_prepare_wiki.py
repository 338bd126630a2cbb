"""prepare_wiki.py: cleaning, sources, splitting, shards, determinism and bad input."""
import bz2
import gzip
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PROSE, dump_xml, page, run_cli

import prepare_wiki
from wikigpt.prep.data import HEADER, DatasetError, load_dataset, open_shard, read_articles
from wikigpt.knowledge.graph import write_knowledge
from prepare_wiki import main
from wikigpt.prep.facts import facts
from wikigpt.prep.wikitext import CleanSettings, clean_wikitext, lead_bold

ENGLISH = """{{Infobox river|name=Test|length=12 km}}
'''Testriver''' is a river<ref name="a">{{cite web|url=http://x.org|title=Source}}</ref> in [[Utopia|the land of Utopia]].<ref>Plain ref text</ref>
[[File:River.jpg|thumb|A caption with [[link]]]]
It is 12&nbsp;km long. <!-- hidden comment --> It has <span style="color:red">red water</span>.
See [http://example.com the website] or http://bare.example.com for more.

== History ==
The river was <b>named</b> in 1900.{{citation needed}}
{| class="wikitable"
|-
| Table cell || 42
|}
* A list item about the [[Mill (grinding)|mill]].

== See also ==
* [[Other river]]

== References ==
{{reflist}}
[[Category:Rivers]]
[[de:Testfluss]]
"""

CHINESE = """{{Infobox}}
'''长江'''是[[亚洲]]第一长河<ref>引用</ref>，全长约6300公里。{{noteTag|注}}

== 历史 ==
长江流域是中华文明的发源地之一。

== 参考文献 ==
{{reflist}}
[[Category:河流]]
[[en:Yangtze]]
"""


def clean(title, text, min_chars=10):
    article, reason = clean_wikitext(title, text, CleanSettings(min_chars=min_chars))
    assert reason is None, reason
    return article[1]


def test_cleaning_keeps_prose_and_removes_markup():
    text = clean("Testriver", ENGLISH)
    assert text.startswith("Testriver is a river in the land of Utopia.")
    assert "It is 12 km long. It has red water." in text
    assert "See the website or for more." in text
    assert "History\nThe river was named in 1900." in text  # heading kept as a plain line
    assert "A list item about the mill." in text
    for gone in ("Infobox", "cite", "Plain ref", "caption", "thumb", "hidden comment", "Table cell",
                 "42", "http", "Other river", "Rivers", "Testfluss", "{{", "[[", "<", "'''",
                 "See also", "References"):
        assert gone not in text, gone


def test_dashes_written_as_templates_keep_the_numbers_they_join_apart():
    text = clean("The War", "'''The War''' (1775{{ndash}}1783) was long{{snd}}eight years. {{cite web|url=x}}")
    assert text == "The War (1775–1783) was long – eight years."  # not "(17751783)"
    infobox = "{{Infobox war\n|date = April 19, 1775{{snds}}September 3, 1783\n}}"
    assert dict(facts(infobox))["date"] == "April 19, 1775 – September 3, 1783"


def test_a_lead_gives_its_subjects_other_names_in_bold():
    lead = ("{{hatnote|'''Tar''' is another thing}}\n'''Asphalt''' ({{IPA|x}}), also known as '''bitumen''', is "
            "sticky. It is '''commonly referred to as''' pitch.\n\nLater '''Roads''' are paved.")
    found = {}
    clean_wikitext("Asphalt", lead, CleanSettings(min_chars=10), found)
    assert found["bold"] == ["Asphalt", "bitumen"]  # the first paragraph's names; not a bold phrase, not later ones
    assert lead_bold("'''''Atlas Shrugged''''' is a novel. The '''[[ray-finned fish|ray-finned fishes]]''' swim.") == \
        ["Atlas Shrugged", "ray-finned fishes"]


def test_cleaning_chinese_inserts_no_spaces_and_drops_reference_sections():
    text = clean("长江", CHINESE)
    assert text == "长江是亚洲第一长河，全长约6300公里。\n\n历史\n长江流域是中华文明的发源地之一。"



def test_zhwiki_language_conversion_shows_the_simplified_text_and_never_hides_the_page():
    text = clean("臺北市", "臺北市，通稱-{zh-hans:台北; zh-hant:臺北;}-，位於-{臺灣}-北部。-{H|zh-hans:宏; zh-hant:巨集;}-"
                 "-{T|zh-hans:台北市}--{A|zh-tw:軟體; zh-cn:软件;}-很多。")
    assert text == "臺北市，通稱台北，位於臺灣北部。软件很多。"  # H| and T| add rules and show nothing
    assert clean("甲", "甲是-{zh-hant:乙; zh:丙}-。-{zh-tw:丁; zh-hk:戊}-。", min_chars=1) == "甲是丙。丁。"  # zh, else the first
    assert clean("甲", "甲是-{ 没有闭合的标记。后面的文字还在。") == "甲是 没有闭合的标记。后面的文字还在。"
    facts_of = dict(facts("{{Infobox settlement|通称=-{zh-hans:台北; zh-hant:臺北;}-}}"))
    assert facts_of["通称"] == "台北"
    start = time.perf_counter()
    clean("甲", "甲乙丙丁。" + "-{zh-hans:" * 100_000 + "}-" * 50_000, min_chars=1)
    assert time.perf_counter() - start < 2  # linear: nested and unclosed markup alike
    start = time.perf_counter()
    clean("甲", "甲乙丙丁。-{;" + " " * 50_000 + "}-乙", min_chars=1)  # spaces two patterns could share: 50 s before
    assert time.perf_counter() - start < 2
    assert clean("Sets", "Sets A-{x} and B-{y}- are disjoint. " * 3) == ("Sets A-{x} and B-{y}- are disjoint. " * 3).strip()

def test_disambiguation_pages_and_short_articles_are_dropped():
    settings = CleanSettings(min_chars=50)
    assert clean_wikitext("Mercury", "'''Mercury''' may refer to:\n{{disambiguation}}",
                          settings) == (None, "disambiguation")
    assert clean_wikitext("Tiny", "A stub.", settings) == (None, "too_short")


def build(source, out, *extra):
    main([str(source), "--out", str(out), "--tokenizer", "bpe:300", "--min_chars", "50",
          "--val_fraction", "0.2", *map(str, extra)])
    return load_dataset(out)


def docs_of(ds, split):
    """Decode a split back to its documents (each starts with the separator)."""
    tokens = np.concatenate([np.asarray(s) for s in getattr(ds, split)])
    cuts = np.flatnonzero(tokens == ds.tokenizer.doc_sep).tolist() + [len(tokens)]
    assert cuts[0] == 0, "every split must start with a document separator"
    return [ds.tokenizer.decode(tokens[a + 1:b]) for a, b in zip(cuts, cuts[1:])]


def test_the_digests_of_kept_articles_are_found_before_and_after_their_merge(monkeypatch):
    """The duplicate check's memory (prep.jobs.Seen: 8 bytes a digest, a Python set of them took
    ~108 B): every digest added is found, in the newest set or after a merge into the sorted
    array, and none that was not."""
    from wikigpt.prep.jobs import Seen, digest

    monkeypatch.setattr(Seen, "MERGE_EVERY", 7)  # several merges in a few hundred
    seen, texts = Seen(), [f"article {i}" for i in range(300)]
    for i, t in enumerate(texts[:200]):
        assert digest(t) not in seen
        seen.add(digest(t))
        assert all(digest(u) in seen for u in texts[max(0, i - 20):i + 1])
    assert len(seen.sorted) == 196 and len(seen.newest) == 4  # 28 merges of 7
    assert all(digest(t) in seen for t in texts[:200]) and not any(digest(t) in seen for t in texts[200:])


def test_xml_dump_keeps_articles_only_and_round_trips(small_dump, tmp_path, capsys):
    ds = build(small_dump, tmp_path / "ds", "--workers", "1")
    meta = ds.meta
    assert meta["dropped"] == {"not_article": 1, "redirect": 1, "disambiguation": 1, "duplicate": 1}
    # the redirect is kept as an alias of its target, counted in the summary and meta.json
    assert meta["knowledge"]["aliases"] == 1 and meta["knowledge"]["articles"] == 12
    assert re.search(r"knowledge graph: 0 facts from 0 infoboxes, 1 aliases \(of 1 redirects\), \d+ links",
                     capsys.readouterr().out)
    assert meta["splits"]["train"]["articles"] + meta["splits"]["val"]["articles"] == 12
    assert meta["splits"]["val"]["articles"] >= 1
    docs = docs_of(ds, "train") + docs_of(ds, "val")
    assert sorted(d.split("\n")[0] for d in docs) == sorted(f"Article {i}" for i in range(12))
    assert all(d.endswith(PROSE.strip()) for d in docs)  # tokens -> text is lossless
    assert meta["splits"]["train"]["chars_per_token"] > 1.0


def test_a_bpe_tokenizer_learns_from_an_even_sample_of_at_most_tokenizer_chars(small_dump, tmp_path, capsys):
    """BPE training holds every distinct chunk of its text (in Chinese nearly every clause: ~47 MB
    of memory a MB of zhwiki's text, ~80 GB for all of it): it learns from an even sample."""
    from wikigpt.prep.shards import even_sample

    texts = [f"{i:05d}" + "x" * 95 for i in range(10_000)]  # 100 characters each, 1,000,000 in all
    sample = even_sample(iter(texts), 100_000)
    assert 50_000 < sum(map(len, sample)) <= 100_000  # between a half and all of the budget
    tenths = [sum(int(t[:5]) // 1000 == d for t in sample) for d in range(10)]
    assert min(tenths) >= 0.8 * max(tenths), tenths  # from every part of the texts, not the first ones
    assert even_sample(iter(texts[:5]), 100_000) == texts[:5]  # under the budget: all of them
    # a first text longer than the budget halved the level to nothing: every later text was skipped
    assert len(even_sample(iter(["y" * 300] + texts), 2000)) > 10
    # what a run resumes by: the option counts where it changes the output, so that a work folder an older
    # version left (its fingerprint without the option) still resumes under the default
    from wikigpt.prep.workdir import fingerprint

    def options(*extra):
        return fingerprint([small_dump], prepare_wiki.parse_args([str(small_dump), *extra]))["options"]
    assert "tokenizer_chars" not in options("--tokenizer", "bpe:300") | options("--tokenizer_chars", "2000")
    assert options("--tokenizer", "bpe:300", "--tokenizer_chars", "2000")["tokenizer_chars"] == 2000
    ds = build(small_dump, tmp_path / "ds", "--tokenizer_chars", 2000)
    said = re.search(r"training bpe:300 tokenizer on ([\d,]+) characters of the train split \((\d+) articles",
                     capsys.readouterr().out)
    assert said and 0 < int(said[1].replace(",", "")) <= 2000, said  # (each article cut to 2000 / 16 here)
    assert int(said[2]) == ds.meta["splits"]["train"]["articles"]  # 7: each one, cut (a sample past 16 texts)
    assert all(d.endswith(PROSE.strip()) for d in docs_of(ds, "train"))  # tokens -> text still lossless


def test_output_is_identical_for_1_and_2_workers_and_across_runs(small_dump, tmp_path):
    digests = []
    for i, workers in enumerate((1, 2, 2)):
        out = tmp_path / f"ds{i}"
        build(small_dump, out, "--workers", workers, "--shard_tokens", 500)
        names = sorted(p.name for p in out.iterdir() if p.suffix == ".bin")
        assert len(names) > 2  # several shards were written
        digests.append({n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names}
                       | {"tokenizer": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest(),
                          "knowledge": hashlib.sha256((out / "knowledge.sqlite").read_bytes()).hexdigest()})
    assert digests[0] == digests[1] == digests[2]


def test_gpt2_tokenizer_path(small_dump, tmp_path):
    main([str(small_dump), "--out", str(tmp_path / "g"), "--min_chars", "50", "--workers", "1"])
    ds = load_dataset(tmp_path / "g")
    assert ds.tokenizer.name == "gpt2" and ds.tokenizer.n_vocab == 50257 + 4
    assert ds.tokenizer.doc_sep == 50256
    assert docs_of(ds, "train")[0].startswith("Article")


def test_shard_header_is_validated(small_dump, tmp_path):
    ds = build(small_dump, tmp_path / "ds")
    shard = tmp_path / "ds" / ds.meta["shards"]["train"][0]
    n = len(open_shard(shard))
    data = shard.read_bytes()
    assert len(data) == HEADER.size + 2 * n

    (tmp_path / "trunc.bin").write_bytes(data[:-2])
    with pytest.raises(DatasetError, match="truncated"):
        open_shard(tmp_path / "trunc.bin")
    (tmp_path / "foreign.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError, match="not a wikigpt token shard"):
        open_shard(tmp_path / "foreign.bin")
    with pytest.raises(DatasetError, match="vocab size"):
        open_shard(shard, vocab_size=50261)
    shard.write_bytes(data[:-10])  # a damaged dataset is refused as a whole
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(tmp_path / "ds")


def test_bz2_multistream_and_gzip_dumps(small_dump, tmp_path):
    xml = small_dump.read_bytes()
    half = xml.index(b"<page>", len(xml) // 2)
    (tmp_path / "multi.xml-p1p99.bz2").write_bytes(bz2.compress(xml[:half]) + bz2.compress(xml[half:]))
    (tmp_path / "dump.xml.gz").write_bytes(gzip.compress(xml))
    plain = build(small_dump, tmp_path / "a")
    for name in ("multi.xml-p1p99.bz2", "dump.xml.gz"):
        other = build(tmp_path / name, tmp_path / f"out-{name}")
        assert other.meta["splits"] == plain.meta["splits"]


def test_jsonl_parquet_and_wikiextractor_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": str(i), "title": f"Doc {i}", "text": f"Doc {i} text. " + PROSE} for i in range(6)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=2)
    extracted = tmp_path / "extracted" / "AA"
    extracted.mkdir(parents=True)
    (extracted / "wiki_00").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (extracted / "wiki_01").write_text("".join(json.dumps(r) + "\n" for r in rows[3:]))
    results = [build(tmp_path / src, tmp_path / f"o{i}", "--workers", "1")
               for i, src in enumerate(("a.jsonl", "a.parquet", "extracted"))]
    for ds in results:
        docs = docs_of(ds, "train") + docs_of(ds, "val")
        assert sorted(docs) == sorted(f"Doc {i}\n\nDoc {i} text. {PROSE.strip()}" for i in range(6))


def test_default_source_is_the_gensim_sample_end_to_end(tmp_path):
    r = run_cli("prepare_wiki.py", "--out", tmp_path / "demo", "--tokenizer", "bpe:1024")
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path / 'demo'}" in r.stdout and "chars/token" in r.stdout
    ds = load_dataset(tmp_path / "demo")
    assert ds.meta["splits"]["train"]["articles"] > 80
    assert ds.meta["dropped"]["redirect"] > 50
    text = ds.tokenizer.decode(ds.train[0][:20000])
    assert text.startswith("<|endoftext|>Anarchism\n\nAnarchism is a political philosophy") and "{{" not in text and "[[" not in text and "<ref" not in text


def test_overwrite_takes_a_dataset_of_more_than_a_thousand_shards_as_its_own(tmp_path):
    """Shards past 999 are named train_1000.bin: --overwrite read them as files it did not make
    (enwiki at --shard_tokens of ~4.5 M or less) and refused to replace the dataset."""
    from wikigpt.prep.data import MADE_BY, not_replaceable

    (tmp_path / "meta.json").write_text(json.dumps({"made_by": MADE_BY}))
    for name in ("train_000.bin", "train_999.bin", "train_1000.bin", "val_12345.bin"):
        (tmp_path / name).write_bytes(b"")
    assert not_replaceable(tmp_path) is None
    (tmp_path / "train_1000.bin.bak").write_bytes(b"")  # a user's file: still kept from --overwrite
    assert "train_1000.bin.bak" in not_replaceable(tmp_path)


def test_existing_dataset_needs_overwrite_and_survives_a_failed_run(small_dump, tmp_path, capsys,
                                                                    monkeypatch):
    out = tmp_path / "ds"
    build(small_dump, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        build(small_dump, out)
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err

    def crash(*a, **k):  # a crash in the middle of tokenizing, with --overwrite
        raise RuntimeError("killed")

    def slow_knowledge(*a, **k):  # the graph's writer thread still busy when the crash comes
        time.sleep(0.5)
        return write_knowledge(*a, **k)
    monkeypatch.setattr(prepare_wiki, "encode_pass", crash)
    monkeypatch.setattr(prepare_wiki, "write_knowledge", slow_knowledge)
    with pytest.raises(RuntimeError):
        build(small_dump, out, "--overwrite")
    # the crash waited for the writer: no thread is left to race the resumed run's writer
    assert sorted(p.name for p in (tmp_path / ".ds.partial").glob("knowledge.sqlite*")) == ["knowledge.sqlite"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old dataset untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.partial", "ds", "dump.xml"]
    monkeypatch.undo()  # the same command again finishes the run from its saved progress
    capsys.readouterr()
    build(small_dump, out, "--overwrite")
    assert "training bpe" not in capsys.readouterr().out  # cleaned and trained before the crash
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.pop("meta.json") and after == {k: v for k, v in before.items() if k != "meta.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "dump.xml"]  # no temp left


def dataset_bytes(out) -> dict:
    """Every file of a dataset, and its meta.json but for the seconds the run took."""
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    meta = json.loads(files.pop("meta.json"))
    meta.pop("seconds")
    return files | {"meta.json": meta}


def killed_deleting(monkeypatch, name: str, share: float):
    """shutil.rmtree(work/NAME) killed (Ctrl-C) once it has deleted `share` of the folder's files."""
    real = shutil.rmtree

    def rmtree(path, *a, **k):
        if Path(path).name == name:
            files = sorted(Path(path).iterdir())
            assert len(files) >= 2, "too few parts to cut a deletion in half"
            for f in files[:round(share * len(files))]:
                f.unlink()
            raise KeyboardInterrupt
        return real(path, *a, **k)
    monkeypatch.setattr(shutil, "rmtree", rmtree)


def test_a_run_killed_while_it_deletes_its_parts_resumes_to_the_same_bytes(small_dump, tmp_path, monkeypatch):
    """The saved parts (parts/, knowledge-parts/) were deleted before the progress that says they
    are no longer needed: killed then, the re-run built knowledge.sqlite from half of its parts
    (exit 0, article numbers off), from none, or failed forever on parts that are gone."""
    args = ("--checkpoint_mb", "0.002", "--workers", "1")
    build(small_dump, tmp_path / "whole", *args)
    for folder in ("parts", "knowledge-parts"):
        for share in (0.5, 1.0):
            out = tmp_path / f"{folder}-{share}"
            killed_deleting(monkeypatch, folder, share)
            with pytest.raises(SystemExit) as e:
                build(small_dump, out, *args)
            assert e.value.code == 130 and not out.exists()
            monkeypatch.undo()
            build(small_dump, out, *args)  # the same command again
            assert dataset_bytes(out) == dataset_bytes(tmp_path / "whole"), (folder, share)
            assert not (tmp_path / f".{out.name}.partial").exists()


def test_a_work_folder_whose_saved_parts_are_gone_is_reported_deleted_and_started_over(small_dump, tmp_path,
                                                                                       monkeypatch, capsys):
    """As an older version left a run killed while it deleted parts/: "damaged", not a traceback
    on every re-run; the same command then starts over."""
    out, work = tmp_path / "ds", tmp_path / ".ds.partial"

    def killed(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare_wiki.CleanPass, "join", killed)
    with pytest.raises(SystemExit):
        build(small_dump, out, "--checkpoint_mb", "0.002")
    monkeypatch.undo()
    shutil.rmtree(work / "parts")
    with pytest.raises(SystemExit) as e:
        build(small_dump, out, "--checkpoint_mb", "0.002")
    assert e.value.code == 2 and "is damaged" in capsys.readouterr().err and not work.exists()
    build(small_dump, out, "--checkpoint_mb", "0.002")
    assert "Article 3" in {a["title"] for a in read_articles(out)}


def test_overwrite_waits_for_an_index_build_of_the_dataset_and_then_only_publishes(small_dump, tmp_path, capsys):
    """prepare_wiki.py --overwrite swapped a new folder in under a running retrieve.py --build, which
    then failed mid-write ("No such file ... index/wikigpt_index.json"). The build holds the
    dataset folder's lock; the swap now takes it too, or says why not and keeps its work."""
    from wikigpt.run.lock import folder_locked

    out = tmp_path / "ds"
    build(small_dump, out)
    before = dataset_bytes(out)
    with folder_locked(out):  # as retrieve.py --build holds it
        with pytest.raises(SystemExit) as e:
            build(small_dump, out, "--overwrite", "--seed", "7")
        assert e.value.code == 2 and "an index build of it (retrieve.py --build) is running" in capsys.readouterr().err
        assert dataset_bytes(out) == before  # untouched
    build(small_dump, out, "--overwrite", "--seed", "7")
    assert "publishing it" in capsys.readouterr().out  # the work was kept: only published
    assert json.loads((out / "meta.json").read_text())["seed"] == 7


def test_a_run_killed_before_its_publish_only_publishes(small_dump, tmp_path, monkeypatch, capsys):
    """The dataset whole in the work folder (meta.json written), killed before or during its
    publish (the fsync of the whole tree): the re-run called it "an unfinished run of another
    command", deleted it and redid every pass (hours at full scale)."""
    build(small_dump, tmp_path / "whole")

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare_wiki, "publish", killed)
    with pytest.raises(SystemExit):
        build(small_dump, tmp_path / "ds")
    monkeypatch.undo()
    capsys.readouterr()
    build(small_dump, tmp_path / "ds")
    said = capsys.readouterr().out
    assert "publishing it" in said and "training bpe" not in said and "cleaned" not in said, said
    assert dataset_bytes(tmp_path / "ds") == dataset_bytes(tmp_path / "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "dump.xml", "whole"]
    with pytest.raises(SystemExit):  # another command: that dataset is not its own, so not published
        monkeypatch.setattr(prepare_wiki, "publish", killed)
        build(small_dump, tmp_path / "ds", "--overwrite")
    monkeypatch.undo()
    build(small_dump, tmp_path / "ds", "--overwrite", "--seed", "7")
    assert "publishing it" not in capsys.readouterr().out
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["seed"] == 7


def test_a_run_killed_after_its_swap_does_not_publish_the_old_dataset_back(small_dump, tmp_path, monkeypatch):
    """--overwrite swaps the new folder and the old one: until it is deleted, the work folder
    holds the old dataset, whole and of the same command, but older."""
    out = tmp_path / "ds"
    build(small_dump, out)
    real = shutil.rmtree

    def killed_deleting_the_old(path, *a, **k):
        if Path(path).name == ".ds.partial":
            raise KeyboardInterrupt
        return real(path, *a, **k)
    monkeypatch.setattr(shutil, "rmtree", killed_deleting_the_old)
    with pytest.raises(SystemExit):
        build(small_dump, out, "--overwrite")
    monkeypatch.undo()
    assert json.loads((out / "meta.json").read_text())["generation"] == 2  # the new one is there
    build(small_dump, out, "--overwrite")
    assert json.loads((out / "meta.json").read_text())["generation"] == 3  # not the old one (1) back


def test_overwrite_replaces_only_a_dataset(small_dump, tmp_path, capsys):
    run = tmp_path / "out" / "chat"  # a training run's folder, named as --out by mistake
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"weights")
    with pytest.raises(SystemExit) as e:
        build(small_dump, run, "--overwrite")
    assert e.value.code == 2 and "not a dataset folder" in capsys.readouterr().err
    assert (run / "best.pt").read_bytes() == b"weights" and sorted(p.name for p in run.parent.iterdir()) == ["chat"]
    mine = tmp_path / "mine"  # a dataset it made, with the user's own files put in it since
    build(small_dump, mine)
    (mine / "my_questions.jsonl").write_text("hand-written")
    (mine / "run1").mkdir()
    (mine / "run1" / "best.pt").write_bytes(b"weights")
    with pytest.raises(SystemExit) as e:
        build(small_dump, mine, "--overwrite")
    assert e.value.code == 2 and "my_questions.jsonl, run1, which prepare_wiki.py did not make" in capsys.readouterr().err
    assert (mine / "my_questions.jsonl").read_text() == "hand-written" and (mine / "run1" / "best.pt").is_file()
    half = tmp_path / "half"  # a dataset whose meta.json was lost: --overwrite rebuilds it, as data.py advises
    build(small_dump, half)
    (half / "meta.json").unlink()
    build(small_dump, half, "--overwrite")
    assert (half / "meta.json").is_file()


def test_overwrite_keeps_a_users_file_put_in_the_index_or_the_work_folders(small_dump, tmp_path, capsys):
    """Only the top level was looked at: an int8.pt or a report put in index/ went with the index."""
    ds = tmp_path / "ds"
    build(small_dump, ds)
    index = ds / "index"
    (index / "titles").mkdir(parents=True)  # what retrieve.py --build writes there
    for name in ("wikigpt_index.json", "passages.sqlite", "passages.sqlite-journal", "lead_ids.i64",
                 "data.csc.index.npy"):
        (index / name).write_bytes(b"x")
    for mine in (index / "int8.pt", ds / "parts" / "notes.txt"):
        mine.parent.mkdir(exist_ok=True)
        mine.write_text("mine")
        with pytest.raises(SystemExit) as e:
            build(small_dump, ds, "--overwrite")
        said = f"{mine.parent.name}/{mine.name}, which prepare_wiki.py did not make"
        assert e.value.code == 2 and said in capsys.readouterr().err
        assert mine.read_text() == "mine" and (index / "wikigpt_index.json").is_file()
        mine.unlink()
    build(small_dump, ds, "--overwrite")  # the index's own files and the folders' parts only: replaced
    assert (ds / "meta.json").is_file() and not index.exists()


def test_a_link_or_a_file_above_as_out_is_refused_and_left_alone(small_dump, tmp_path, capsys):
    dataset = tmp_path / "ds"
    build(small_dump, dataset)
    before = sorted(p.name for p in dataset.iterdir())
    (tmp_path / "link").symlink_to(dataset)  # --overwrite would have replaced the link's folder, then crashed
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "plain").write_text("x")
    for out, says in (("link", "is a symbolic link"), ("dangling", "is a symbolic link"), ("plain/d", "plain is a file")):
        with pytest.raises(SystemExit) as e:
            build(small_dump, tmp_path / out, "--overwrite")
        assert e.value.code == 2 and says in capsys.readouterr().err, out
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in dataset.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]  # nothing half-made left behind


def test_a_half_written_folder_does_not_load(small_dump, tmp_path):
    out = tmp_path / "ds"
    build(small_dump, out)
    (out / "meta.json").unlink()  # what a run killed before its last step leaves
    with pytest.raises(DatasetError, match="not a complete dataset"):
        load_dataset(out)
    with pytest.raises(DatasetError, match="is a file, not a dataset folder"):  # --data naming a file
        load_dataset(small_dump)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")  # any folder: no advice to --overwrite it
    with pytest.raises(DatasetError, match=r"other is not a dataset folder \(no meta.json, shards or tokenizer\)"):
        load_dataset(tmp_path / "other")


def test_a_dataset_without_its_tokenizer_says_so(small_dump, tmp_path):
    out = tmp_path / "ds"
    build(small_dump, out)
    (out / "tokenizer.json").unlink()  # a folder copied without it
    with pytest.raises(DatasetError, match="has no tokenizer.json.*prepare_wiki.py --overwrite"):
        load_dataset(out)


def test_an_out_inside_the_source_folder_is_refused(small_dump, tmp_path, capsys):
    """Every file of a source folder is read as articles: a dataset inside it would be read
    as source by its own re-run."""
    with pytest.raises(SystemExit) as e:
        build(small_dump.parent, small_dump.parent / "data")
    assert e.value.code == 2 and "is inside the source folder" in capsys.readouterr().err
    assert not (small_dump.parent / "data").exists()


# ----- bad input: one clear paragraph, exit code 2, no traceback, nothing written -----

def bad_inputs(tmp_path, small_dump):
    xml = small_dump.read_bytes()
    big = dump_xml(*[page(f"P{i}", PROSE * 4) for i in range(400)]).encode()
    half = big.index(b"<page>", len(big) // 2)  # a 2-stream dump whose second stream is cut
    (tmp_path / "trunc.xml.bz2").write_bytes(bz2.compress(big[:half]) + bz2.compress(big[half:])[:-200])
    (tmp_path / "malformed.xml").write_bytes(xml.replace(b"</page>", b"</pag>", 3))
    (tmp_path / "latin1.xml").write_bytes(xml.replace(b"valley", "vallée".encode("latin-1")))
    (tmp_path / "other.xml").write_text("<html><body>hello</body></html>")
    (tmp_path / "bad.jsonl").write_text('{"title": "a", "text": "b"}\n{"title": oops}\n')
    (tmp_path / "notbz2.bz2").write_bytes(b"BZh9 this is not bzip2 data at all" * 10)
    (tmp_path / "stubs.xml").write_text(dump_xml(page("A", "tiny"), page("B", "tiny too")))
    (tmp_path / "notes.txt").write_text("Aristotle was a philosopher.\nPlato was his teacher.\n")
    return {
        "missing": ([str(tmp_path / "nope.xml")], "no such file"),
        "truncated bz2": ([str(tmp_path / "trunc.xml.bz2")], re.compile(r"ends early \(truncated "
                                                                        r"download\?\) after [1-9]\d+ pages \([1-9]\d+ of them articles\)")),
        "malformed xml": ([str(tmp_path / "malformed.xml")], re.compile(r"malformed.xml: at byte 9\d\d: malformed XML \(mismatched tag\)")),
        "non-utf8": ([str(tmp_path / "latin1.xml")], "not UTF-8"),
        "not a dump": ([str(tmp_path / "other.xml")], "not a MediaWiki dump"),
        "bad jsonl": ([str(tmp_path / "bad.jsonl")], "bad.jsonl:2: not valid JSON"),
        "plain text": ([str(tmp_path / "notes.txt")], re.compile(r"notes.txt: not a source this tool reads: "
                                                               r"it starts with text \('Aristotle was a philosopher.'\)\. "
                                                               r"Expected a MediaWiki XML dump")),
        "not bz2": ([str(tmp_path / "notbz2.bz2")], "decompress"),
        "empty result": ([str(tmp_path / "stubs.xml")], "0 article(s) left after cleaning"),
        "vocab too big": ([str(small_dump), "--tokenizer", "bpe:70000"], "out of range"),
        "vocab unknown": ([str(small_dump), "--tokenizer", "sentencepiece"], "unknown tokenizer"),
        "val fraction": ([str(small_dump), "--val_fraction", "1.5"], "--val_fraction"),
        # a train split of none was published (exit 0), a shard per article at 0, -1 stopped at once
        # blaming the dump, and 10^5 workers were all started
        "no train article": ([str(small_dump), "--val_fraction", "0.999"], "none in train: lower --val_fraction"),
        "shard tokens": ([str(small_dump), "--shard_tokens", "0"], "--shard_tokens must be at least 1, got 0"),
        "tokenizer chars": ([str(small_dump), "--tokenizer", "bpe:300", "--tokenizer_chars", "0"],
                            "--tokenizer_chars must be positive, got 0"),  # was: an empty sample, no merges learned
        "max articles negative": ([str(small_dump), "--max_articles", "-1"], "--max_articles must be 0 (all) or more"),
        "max articles one": ([str(small_dump), "--max_articles", "1"], "Raise --max_articles (now 1)"),
        "workers": ([str(small_dump), "--workers", "100000"], "--workers must be 1 to"),
        "ftp url": (["ftp://example.invalid/x.xml.bz2"], "only https:// (and http://) URLs are downloaded"),  # was
        # "ftp:/example.invalid/x.xml.bz2: no such file or folder"
    }


def test_each_bad_input_gets_a_clear_error(small_dump, tmp_path, capsys):
    for name, (argv, message) in bad_inputs(tmp_path, small_dump).items():
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", str(out)] + ([] if "--workers" in argv else ["--workers", "1"]))
        err = capsys.readouterr().err
        assert e.value.code == 2, name
        assert re.search(r"(^|\n)error: ", err), (name, err)  # on a line of its own, after any bar
        assert (message.search(err) if isinstance(message, re.Pattern) else message in err), (name, err)
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], name


def test_bad_input_as_a_real_process_has_no_traceback(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"title": "a", "text": "b"}\nnot json\n')
    r = run_cli("prepare_wiki.py", tmp_path / "bad.jsonl", "--out", tmp_path / "o")
    assert r.returncode == 2
    assert "bad.jsonl:2: not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_gpt2_without_its_download_says_what_to_do_before_any_work(small_dump, tmp_path):
    offline = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"), "HTTPS_PROXY": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}  # a refused loopback port: no network
    r = run_cli("prepare_wiki.py", small_dump, "--out", tmp_path / "o", "--tokenizer", "gpt2", env=offline)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "GPT-2's encoding" in r.stderr and "TIKTOKEN_CACHE_DIR" in r.stderr and "bpe:8192" in r.stderr
    assert "cleaned" not in r.stdout and not (tmp_path / "o").exists()  # refused before any work


def test_progress_off_a_terminal_is_a_few_plain_lines(small_dump, tmp_path):
    import io

    from wikigpt.run.progress import progress_bar

    log = io.StringIO()  # not a terminal, like a CI log or `make demo > log`
    bar = progress_bar(total=5000, file=log, desc="clean", unit="B")
    for _ in range(5000):
        bar.update(1)
    bar.close()
    assert "\r" not in log.getvalue() and 1 <= len(log.getvalue().splitlines()) <= 3
    assert "5000/5000" in log.getvalue().splitlines()[-1]
    r = run_cli("prepare_wiki.py", small_dump, "--out", tmp_path / "o", "--tokenizer", "bpe:300")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout + r.stderr and "clean" in r.stderr
