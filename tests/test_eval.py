"""Metrics logs, loss plots, text scores and eval.py's report."""
import json
import math
import os
import re
import signal
import stat
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, dump_xml, page, run_cli, PROSE
from PIL import Image

from wikigpt.knowledge import scores
from wikigpt.checkpoint import load_checkpoint, save_checkpoint
from wikigpt.run.runlog import MetricsLog, is_loss_plot, read_metrics

DIALOGUES = [("Hello", "Hello! How are you today?"), ("What is a river?", "A river is a stream of water."),
             ("你好", "你好！很高兴见到你。"), ("Thanks", "You are welcome.")]


def write_dialogues(path, repeat):
    path.write_text("".join(json.dumps({"prompt": q, "response": a}, ensure_ascii=False) + "\n"
                            for _ in range(repeat) for q, a in DIALOGUES), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """A tiny base model and a chat model fine-tuned from it, with their metrics files."""
    root = tmp_path_factory.mktemp("eval_runs")
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={root / 'base'}", "--max_steps=20",
                "--eval_interval=10", *TINY, "--block_size=64")
    assert r.returncode == 0, r.stderr
    r = run_cli("chat_sft.py", f"--init_from={root / 'base' / 'best.pt'}", f"--out_dir={root / 'chat'}",
                f"--sft_data={write_dialogues(root / 'd.jsonl', 30)}", "--max_steps=30", "--eval_interval=15",
                "--eot_check=0", "--sft_val_fraction=0.1", *TINY, "--block_size=64")
    assert r.returncode == 0, r.stderr
    return root


def evaluate(*args, out):
    return run_cli("eval.py", "--max_examples=8", "--max_new_tokens=16", "--eval_tokens=512", "--device=cpu",
                   *args, "--out", out)  # later options win


# ----------------------------------------------------------------------------------------
# metrics.jsonl and loss.png

def test_training_writes_metrics_rows_and_a_loss_plot(runs):
    rows = read_metrics(runs / "base")
    train = [r for r in rows if r["type"] == "train"]
    evals = [r for r in rows if r["type"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 21))  # log_interval=1
    assert [r["step"] for r in evals] == [0, 10, 20]
    for key in ("tokens", "loss", "lr", "tok_per_s", "mfu", "elapsed"):
        assert all(isinstance(r[key], float | int) for r in train), key
    assert evals[-1]["tokens"] == 20 * 4 * 64 and evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert all(r["kind"] == "sft" for r in read_metrics(runs / "chat"))
    png = Image.open(runs / "chat" / "loss.png")
    assert png.format == "PNG" and png.text["Description"] == "runs: chat"


def test_metrics_survive_a_kill_and_resume_without_duplicated_or_missing_steps(tiny_data, tmp_path):
    args = [sys.executable, "train.py", f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=400",
            "--eval_interval=25", *TINY]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill it after a checkpoint, mid-interval
        done = [r["step"] for r in read_metrics(tmp_path)] if (tmp_path / "metrics.jsonl").is_file() else []
        if done and max(done) >= 60:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: raise max_steps"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in read_metrics(tmp_path))
    assert 60 <= killed_at < 400
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=400",
                "--eval_interval=25", *TINY, "--resume=true")
    assert r.returncode == 0, r.stderr
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows if r["type"] == "train"] == list(range(1, 401))
    assert [r["step"] for r in rows if r["type"] == "eval"] == list(range(0, 401, 25))
    elapsed = [r["elapsed"] for r in rows]
    assert elapsed == sorted(elapsed)  # the resumed run's clock goes on from the kept rows


def test_a_fresh_run_starts_a_new_metrics_file_and_resume_drops_rows_past_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, "pretrain")
    for step in range(1, 6):
        log.log("train", step, float(step), loss=1.0)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "step": 6, "lo')  # a line cut short by a kill
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    resumed = MetricsLog(tmp_path, "pretrain", resume_step=3)
    resumed.log("train", 4, 0.5, loss=0.9)
    assert [(r["step"], r["elapsed"]) for r in resumed.rows()] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 3.5)]
    MetricsLog(tmp_path, "pretrain")
    assert read_metrics(tmp_path) == []


def test_plot_overlays_several_runs(runs, tmp_path):
    out = tmp_path / "both.png"
    r = run_cli("eval.py", "plot", runs / "base", runs / "chat", "--out", out)
    assert r.returncode == 0, r.stderr
    Image.open(out).verify()  # a whole, valid PNG
    assert Image.open(out).text["Description"] == "runs: base, chat"
    r = run_cli("eval.py", "plot", tmp_path / "nothing", "--out", out)
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr
    photo = tmp_path / "holiday.png"  # a PNG of the user's: never replaced by a plot
    Image.new("RGB", (4, 4)).save(photo)
    before = photo.read_bytes()
    from eval import main as eval_main  # in this process: the command's exit is run_main's, tested above
    from wikigpt.cli import UsageError
    with pytest.raises(UsageError, match="is not one eval.py wrote"):
        eval_main(["plot", str(runs / "base"), "--out", str(photo)])
    assert photo.read_bytes() == before
    eval_main(["plot", str(runs / "base"), "--out", str(out)])  # our own plot: replaced
    assert Image.open(out).text["Description"] == "runs: base"
    shutil.copy(out, tmp_path / "curves.PNG")  # ours under any name, a photo under ours is not
    assert is_loss_plot(tmp_path / "curves.PNG") and not is_loss_plot(photo)
    for name in ("a", "b"):  # two runs of one folder name were both "run"; one given twice was drawn twice
        shutil.copytree(runs / "base", tmp_path / name / "run")
    eval_main(["plot", str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run"), str(tmp_path / "a" / "run"), "--out", str(out)])
    assert Image.open(out).text["Description"] == "runs: a/run, b/run"


# ----------------------------------------------------------------------------------------
# Text scores

def test_bleu_chrf_and_rouge_on_known_pairs():
    same = ["the cat sat on the mat today"]
    assert scores.bleu(same, same) == pytest.approx(100) and scores.chrf(same, same) == pytest.approx(100)
    assert scores.rouge_l(same[0], same[0]) == pytest.approx(1.0)
    assert scores.bleu(["a b c d"], ["w x y z"]) == 0 and scores.chrf(["abc"], ["xyz"]) == 0
    assert scores.rouge_l("a b c", "x y z") == 0
    # Chinese is scored by characters: 7 characters, 6 shared in order
    hyp, ref = "我很喜欢这只猫", "我很喜欢这只狗"
    assert scores.bleu([hyp], [ref]) == pytest.approx(100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25)
    assert scores.rouge_l(hyp, ref) == pytest.approx(6 / 7)


def test_distinct_and_loops():
    assert scores.distinct(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert scores.distinct(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert scores.loops("I am a bot I am a bot I am a bot")
    assert not scores.loops("I am a bot and I like to talk about rivers")
    assert scores.loops("好的好的好的好的好的")  # characters for Chinese


# ----------------------------------------------------------------------------------------
# eval.py

def test_report_scores_base_and_chat_side_by_side_and_is_deterministic(runs, tmp_path):
    args = ["--ckpt", runs / "base" / "best.pt", "--ckpt", runs / "chat" / "best.pt",
            "--sft_data", write_dialogues(tmp_path / "test.jsonl", 2)]
    r = evaluate(*args, out=tmp_path / "a" / "report.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    table = {row["metric"]: row["values"] for row in report["rows"]}
    base_bpb, chat_bpb = table["val bits per byte"]
    assert 0 < base_bpb < 10 and 0 < chat_bpb < 10
    assert table["val perplexity"][0] == pytest.approx(math.exp(table["val loss (nats per token)"][0]))
    for metric in ("held-out assistant-token loss", "BLEU (0-100)", "chrF (0-100)", "ROUGE-L F",
                   "distinct-1", "replies that loop (share)", "replies ending their turn (share)",
                   "replies leaking a role token (share)", "mean reply length (tokens)"):
        assert table[metric][0] is None and table[metric][1] is not None, metric  # base: no chat rows
    assert any(n.startswith("base/best.pt is a base") for n in report["notes"])
    assert "| metric | base/best.pt | chat/best.pt |" in r.stdout
    assert (tmp_path / "a" / "report.md").read_text().count("|") > 40
    assert evaluate(*args, out=tmp_path / "b" / "report.json").returncode == 0
    again = json.loads((tmp_path / "b" / "report.json").read_text())
    report["settings"].pop("out"), again["settings"].pop("out")
    assert again == report


def test_a_chat_model_that_learned_its_replies_scores_high_on_them(runs, tiny_data, tmp_path):
    r = evaluate("--ckpt", runs / "chat" / "best.pt", "--sft_data", write_dialogues(tmp_path / "t.jsonl", 1),
                 "--data", tiny_data,
                 "--temperature=0", "--repetition_penalty=1", "--max_new_tokens=60", out=tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    table = {row["metric"]: row["values"][0] for row in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert table["chrF (0-100)"] > 50 and table["replies ending their turn (share)"] == 1.0


def test_two_checkpoints_of_one_name_keep_their_own_columns(runs, tiny_data, tmp_path):
    """a/chat/best.pt and b/chat/best.pt were both labelled chat/best.pt, and the second's chat
    scores were shown under both columns."""
    ckpt = load_checkpoint(runs / "chat" / "best.pt")
    ckpt["model"] = {k: v * 0.5 if v.is_floating_point() else v for k, v in ckpt["model"].items()}  # another model
    (tmp_path / "b" / "chat").mkdir(parents=True)
    save_checkpoint(tmp_path / "b" / "chat" / "best.pt", ckpt)
    r = evaluate("--ckpt", runs / "chat" / "best.pt", "--ckpt", tmp_path / "b" / "chat" / "best.pt",
                 "--sft_data", write_dialogues(tmp_path / "t.jsonl", 1), "--data", tiny_data, "--max_examples=2",
                 out=tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [c["label"] for c in report["checkpoints"]] == [f"{runs.name}/chat/best.pt", "b/chat/best.pt"]
    losses = next(row["values"] for row in report["rows"] if row["metric"] == "held-out assistant-token loss")
    assert losses[0] != losses[1]  # (one label: the second model's loss in both columns)
    same = runs / "chat" / ".." / "chat" / "best.pt"  # one checkpoint given twice: one column (it had two, labelled //...)
    r = evaluate("--ckpt", runs / "chat" / "best.pt", "--ckpt", same, "--data", tiny_data, "--bpb_only",
                 "--eval_tokens=512", out=tmp_path / "same.json")
    assert r.returncode == 0, r.stderr
    assert [c["label"] for c in json.loads((tmp_path / "same.json").read_text())["checkpoints"]] == ["chat/best.pt"]


@pytest.fixture(scope="module")
def other_tokenizer_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("other_tok")
    pages = [page(f"Topic {i}", f"'''Topic {i}''' is a subject. " + PROSE * 3) for i in range(20)]
    (root / "dump.xml").write_text(dump_xml(*pages), encoding="utf-8")
    r = run_cli("prepare_wiki.py", root / "dump.xml", "--out", root / "data", "--tokenizer", "bpe:320",
                "--min_chars", "50", "--val_fraction", "0.2", "--workers", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("train.py", f"--data={root / 'data'}", f"--out_dir={root / 'out'}", "--max_steps=4",
                "--eval_interval=4", *TINY)
    assert r.returncode == 0, r.stderr
    return root / "out" / "best.pt"


def test_different_tokenizers_compare_by_bits_per_byte_only(runs, other_tokenizer_ckpt, tiny_data, tmp_path):
    args = ["--ckpt", runs / "base" / "best.pt", "--ckpt", other_tokenizer_ckpt, "--data", tiny_data]
    r = evaluate(*args, out=tmp_path / "r.json")
    assert r.returncode == 2 and "different tokenizers" in r.stderr and "--bpb_only" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "r.json").exists()
    r = evaluate(*args, "--bpb_only", out=tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    rows = report["rows"]
    assert [row["metric"] for row in rows] == ["val bits per byte"]
    assert all(0 < v < 10 for v in rows[0]["values"])
    # the other checkpoint learned from another dataset: tiny_data's val articles are not known to be unseen by it
    said = [n for n in report["notes"] if n.startswith("data:")]
    assert len(said) == 1 and f"{tiny_data} is not the dataset out/best.pt trained on" in said[0], report["notes"]


def test_a_copy_of_the_training_data_is_the_same_dataset_and_a_path_not_found_is_said_as_such(runs, tiny_data, tmp_path):
    """The checkpoints' dataset is told by what it holds (meta.json less where and when it was made),
    not by its path: a copy, made again from another source path, gets no "not the dataset" note;
    a relative recorded path is read from where eval.py runs, and where it is not found the note says
    that this cannot be told (it said "not the dataset" before); a dataset with other splits gets it."""
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "source": "/elsewhere/dump.xml", "made_from": "0" * 16,
                                                "seconds": 9.9, "generation": 7}))  # the same dump made again
    relative = load_checkpoint(runs / "chat" / "best.pt")
    relative["train_config"]["data"] = tiny_data.name  # as a run started in tiny_data's parent records it
    save_checkpoint(tmp_path / "relative.pt", relative)

    def data_notes(ckpt, cwd):
        r = run_cli(ROOT / "eval.py", "--bpb_only", "--eval_tokens=512", "--device=cpu", "--ckpt", ckpt, "--data", copy,
                    "--out", tmp_path / "r.json", cwd=cwd)
        assert r.returncode == 0, r.stderr
        return [n for n in json.loads((tmp_path / "r.json").read_text())["notes"] if n.startswith("data:")]

    for ckpt, cwd in ((runs / "chat" / "best.pt", tmp_path), (runs / "base" / "best.pt", tmp_path),
                      (tmp_path / "relative.pt", tiny_data.parent)):
        assert data_notes(ckpt, cwd) == [], ckpt
    unknown = data_notes(tmp_path / "relative.pt", tmp_path)
    assert len(unknown) == 1 and "cannot be told (the folder recorded is not found from here)" in unknown[0], unknown
    meta["splits"]["val"]["articles"] += 1  # other articles in val: another dataset
    (copy / "meta.json").write_text(json.dumps(meta))
    assert "is not the dataset chat/best.pt trained on" in data_notes(runs / "chat" / "best.pt", tmp_path)[0]


def test_a_folder_as_out_is_refused_before_the_evaluation(runs, tmp_path):
    r = evaluate("--ckpt", runs / "chat" / "best.pt", out=tmp_path)
    assert r.returncode == 2 and "is a folder: give a file path" in r.stderr and "Traceback" not in r.stderr
    assert "val bits per byte" not in r.stdout  # refused before any work


def test_dtype_chooses_the_weights_the_report_is_measured_with(runs, tiny_data, tmp_path):
    bpb = {}
    for dtype in ("float32", "bfloat16"):
        r = evaluate("--ckpt", runs / "base" / "best.pt", "--data", tiny_data, "--bpb_only", "--dtype", dtype,
                     out=tmp_path / f"{dtype}.json")
        assert r.returncode == 0, r.stderr
        report = json.loads((tmp_path / f"{dtype}.json").read_text())
        assert report["settings"]["dtype"] == dtype
        assert not any(n.startswith("data:") for n in report["notes"])  # its own dataset: nothing to say
        bpb[dtype] = report["rows"][0]["values"][0]
    # bf16 keeps 8 bits of mantissa: the same model, close but not bit-identical losses
    assert bpb["bfloat16"] != bpb["float32"] and bpb["bfloat16"] == pytest.approx(bpb["float32"], rel=0.02)


def test_a_malformed_dialogue_record_stops_with_advice_that_works(runs, tiny_data, tmp_path):
    dialogues = write_dialogues(tmp_path / "t.jsonl", 1)
    dialogues.write_text(dialogues.read_text() + "{not json\n")
    r = evaluate("--ckpt", runs / "chat" / "best.pt", "--sft_data", dialogues, "--data", tiny_data,
                 out=tmp_path / "r.json")
    assert r.returncode == 2 and "line 5: not valid JSON" in r.stderr and "--skip_bad_records=true" in r.stderr
    r = evaluate("--ckpt", runs / "chat" / "best.pt", "--sft_data", dialogues, "--data", tiny_data,
                 "--skip_bad_records=true", "--max_examples=2", out=tmp_path / "r.json")  # as the advice says
    assert r.returncode == 0, r.stderr
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert any("chat: 4 conversations" in n and "1 malformed record(s) skipped" in n for n in notes), notes


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "empty_dialogues", "dialogues_too_long", "bad_option",
                                  "no_dataset"])
def test_bad_input_is_a_clear_error(runs, tiny_data, tmp_path, case):
    ckpt = runs / "chat" / "best.pt"
    extra = ["--data", tiny_data]
    if case == "missing":
        ckpt = tmp_path / "nope.pt"
    elif case == "not_a_checkpoint":
        ckpt = tmp_path / "junk.pt"
        ckpt.write_text("not a checkpoint")
    elif case == "empty_dialogues":
        (tmp_path / "empty.jsonl").write_text("")
        extra += ["--sft_data", tmp_path / "empty.jsonl"]
    elif case == "dialogues_too_long":  # none fits the context: np.stack of nothing, after the pretraining rows
        (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": "word " * 500, "response": "Yes."}) + "\n")
        extra += ["--sft_data", tmp_path / "long.jsonl"]
    elif case == "bad_option":
        extra += ["--max_examples=0"]
    else:  # a run whose dataset folder is gone (chat_sft.py records its base's folder: tiny_data)
        gone = load_checkpoint(ckpt)
        assert gone["train_config"]["data"] == str(tiny_data)
        gone["train_config"]["data"] = str(tmp_path / "deleted")
        ckpt = tmp_path / "gone.pt"
        save_checkpoint(ckpt, gone)
        extra = []
    r = evaluate("--ckpt", ckpt, *extra, out=tmp_path / "r.json")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error:") or "error:" in r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr and not (tmp_path / "r.json").exists()
    if case == "dialogues_too_long":
        assert "none of the 1 conversations" in r.stderr and "pretraining:" not in r.stderr  # said before the work
    assert ckpt.is_file() or case == "missing"  # nothing of the user's is touched


def test_a_base_checkpoint_alone_gets_the_pretraining_rows_with_a_note(runs, tmp_path):
    r = evaluate("--ckpt", runs / "base" / "best.pt", out=tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert {row["section"] for row in report["rows"]} == {"pretraining"}
    assert any("base (pretrained) checkpoint" in n for n in report["notes"])


# ----------------------------------------------------------------------------------------
# Output files (wikigpt/cli.output_file): eval.py's report and plot, convert.py, prune.py

def test_output_file_refuses_links_pipes_devices_and_a_file_above(tmp_path):
    from wikigpt.cli import UsageError, output_file

    (tmp_path / "r.json").write_text("old")
    (tmp_path / "link.json").symlink_to("r.json")
    (tmp_path / "dangling.json").symlink_to("nowhere.json")
    os.mkfifo(tmp_path / "fifo.json")
    os.mknod(tmp_path / "sock", stat.S_IFSOCK | 0o644)
    cases = {tmp_path / "link.json": "link.json is a symbolic link (to r.json)",
             tmp_path / "dangling.json": "dangling.json is a symbolic link (to nowhere.json)",
             tmp_path / "fifo.json": "fifo.json is a named pipe (FIFO)", tmp_path / "sock": "sock is a socket",
             Path("/dev/null"): "/dev/null is a device",
             tmp_path / "r.json" / "x.json": "r.json is a file, where a folder should be",
             tmp_path / "fifo.json" / "x" / "y.json": "fifo.json is a named pipe (FIFO), where a folder should be"}
    for path, what in cases.items():
        with pytest.raises(UsageError, match=re.escape(what) + ".*nothing was changed"):
            output_file(path, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "fifo.json", "link.json", "r.json", "sock"]
    assert (tmp_path / "r.json").read_text() == "old" and os.readlink(tmp_path / "link.json") == "r.json"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.json").st_mode)
    assert output_file(tmp_path / "r.json", "--out") == tmp_path / "r.json"  # a regular file: the command's rule
    assert output_file(tmp_path / "new" / "r.json", "--out").parent.is_dir()  # its folder is made
    with pytest.raises(UsageError, match="ends with a slash, as a folder does"):  # was written as a file named "newer"
        output_file(f"{tmp_path / 'newer'}/", "--out")
    assert not (tmp_path / "newer").exists()


def test_eval_out_never_replaces_an_input_or_a_file_eval_did_not_write(tmp_path):
    from eval import main as eval_main
    from wikigpt.cli import UsageError

    ckpt, notes, metrics = tmp_path / "best.pt", tmp_path / "README.md", tmp_path / "metrics.jsonl"
    for path, text in ((ckpt, "weights"), (notes, "# my notes"), (metrics, '{"step": 1}\n')):
        path.write_text(text)
    cases = {("--out", str(ckpt)): "is one of the inputs", ("--out", str(tmp_path / "r.md")): "give the .json path",
             ("--out", str(tmp_path / "README.json")): "README.md exists and is not one eval.py wrote"}
    for out, message in cases.items():
        with pytest.raises(UsageError, match=message):
            eval_main(["--ckpt", str(ckpt), *out])
    with pytest.raises(UsageError, match="is one of the inputs"):
        eval_main(["plot", str(tmp_path), "--out", str(metrics)])
    (tmp_path / "b").mkdir()  # another run's metrics, a note starting with a blank line: never a plot's --out
    other, note = tmp_path / "b" / "metrics.jsonl", tmp_path / "notes.md"
    other.write_text('{"type": "train", "kind": "pretrain", "step": 1}\n')
    note.write_text("\n# notes\n")
    for out in (other, note):
        with pytest.raises(UsageError, match="is not one eval.py wrote"):
            eval_main(["plot", str(tmp_path), "--out", str(out)])
    assert other.read_text().startswith('{"type"') and note.read_text() == "\n# notes\n"
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04\xff\xfe")  # a checkpoint given as a run: no metrics
    with pytest.raises(UsageError, match="holds no metrics: give a run's out_dir"):
        eval_main(["plot", str(tmp_path / "model.pt"), "--out", str(tmp_path / "loss.png")])
    assert [p.read_text() for p in (ckpt, notes, metrics)] == ["weights", "# my notes", '{"step": 1}\n']
    (tmp_path / "c").mkdir()  # a run's own loss.png (redrawn by its training) was replaced by the comparison
    shutil.copy(other, tmp_path / "c" / "metrics.jsonl")
    eval_main(["plot", str(tmp_path / "c"), "--out", str(tmp_path / "own.png")])
    shutil.copy(tmp_path / "own.png", tmp_path / "c" / "loss.png")  # as its training drew it
    with pytest.raises(UsageError, match=r"is in the folder of the run .*c, whose training draws its own loss.png"):
        eval_main(["plot", str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(tmp_path / "c" / "loss.png")])
    assert (tmp_path / "c" / "loss.png").read_bytes() == (tmp_path / "own.png").read_bytes()
    eval_main(["plot", str(tmp_path / "c"), "--out", str(tmp_path / "c" / "loss.png")])  # the run's own, redrawn: yes
    drawn = (tmp_path / "c" / "loss.png").read_bytes()
    for runs in ([tmp_path / "b"], [tmp_path / "b", tmp_path]):  # another run's plot, that run not drawn: no
        with pytest.raises(UsageError, match=r"is the loss plot of the run .*c, which its training draws"):
            eval_main(["plot", *map(str, runs), "--out", str(tmp_path / "c" / "loss.png")])
    assert (tmp_path / "c" / "loss.png").read_bytes() == drawn
    (tmp_path / "stray.pt").write_bytes(b"weights")  # a checkpoint beside the plot does not make a run
    eval_main(["plot", str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(tmp_path / "d" / "loss.png")])
    (tmp_path / "d" / "stray.pt").write_bytes(b"weights")
    eval_main(["plot", str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(tmp_path / "d" / "loss.png")])
    with pytest.raises(UsageError, match=r"the plot is a PNG; give a path ending in .png"):  # PNG bytes in x.pdf before
        eval_main(["plot", str(tmp_path / "b"), "--out", str(tmp_path / "x.pdf")])
    assert not (tmp_path / "x.pdf").exists()


def test_a_read_only_folder_or_a_full_disk_is_one_line_and_other_os_errors_keep_their_traceback(capsys):
    import errno
    from wikigpt.cli import run_main

    def full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/last.pt")
    with pytest.raises(SystemExit) as stop:
        run_main(full_disk)
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: No space left on device: /runs/x/last.pt. Check the path, its "
                                       "permissions and the free space.\n")

    def reset(argv):
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    with pytest.raises(ConnectionResetError):  # a socket, or a bug: not a user's path
        run_main(reset)


def test_ctrl_c_says_interrupted_and_only_a_run_that_writes_checkpoints_speaks_of_them(capsys):
    from wikigpt.cli import CHECKPOINTS_INTACT, RUN_INTERRUPTED, run_main

    def pressed(argv):
        raise KeyboardInterrupt
    for message in ("interrupted.", CHECKPOINTS_INTACT, RUN_INTERRUPTED):  # serve.py and chat.py; prune.py; train.py
        with pytest.raises(SystemExit) as stop:
            run_main(pressed, *([message] if message != "interrupted." else []))
        assert stop.value.code == 130 and capsys.readouterr().err == message + "\n"
    assert RUN_INTERRUPTED.endswith("Continue the run: the same command with --resume=auto.")
    for command, message in (("train.py", "RUN_INTERRUPTED"), ("chat_sft.py", "RUN_INTERRUPTED"),
                             ("prune.py", "CHECKPOINTS_INTACT")):
        assert f"run_main(main, {message})" in (ROOT / command).read_text(), command


def bounded_cli(*args):
    """A real run that must end: a command opening a named pipe would wait for a writer forever."""
    try:
        return run_cli(*args, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, args))} did not end within 60 s")


def entry_kinds(folder):
    """What each entry of folder is, not following links: a link's target, else its file type."""
    return {p.name: os.readlink(p) if p.is_symlink() else stat.S_IFMT(os.lstat(p).st_mode) for p in folder.iterdir()}


def test_commands_refuse_a_link_pipe_or_file_above_as_their_output_before_any_work(tiny_ckpt, tiny_data, tmp_path,
                                                                                     capsys):
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "notes.md").write_text("my notes")
    (tmp_path / "report.md").symlink_to("notes.md")  # eval.py writes report.md beside report.json
    (tmp_path / "mine.png").write_bytes(b"my picture")
    (tmp_path / "plot.png").symlink_to("mine.png")
    (tmp_path / "dangling.pt").symlink_to("nowhere.pt")
    (tmp_path / "plain").write_text("mine")
    before = entry_kinds(tmp_path)
    import convert
    import eval as eval_py
    import prune
    from wikigpt.cli import UsageError

    ev = ["--ckpt", tiny_ckpt, "--data", tiny_data, "--bpb_only", "--eval_tokens=512", "--device=cpu"]
    r = bounded_cli("eval.py", *ev, "--out", tmp_path / "fifo.json")  # one real run: one line, no traceback, no hang
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "fifo.json is a named pipe (FIFO)" in lines[0], r.stderr
    cases = [(eval_py.main, [*ev, "--out", tmp_path / "report.json"], "report.md is a symbolic link (to notes.md)"),
             (eval_py.main, ["plot", tiny_ckpt.parent, "--out", tmp_path / "plot.png"], "plot.png is a symbolic link"),
             (convert.main, ["int8", tiny_ckpt, tmp_path / "dangling.pt"], "dangling.pt is a symbolic link"),
             (prune.main, ["--ckpt", tiny_ckpt, "--keep_layers", "1", "--device", "cpu", "--out",
                           tmp_path / "plain" / "small.pt"], "plain is a file, where a folder should be")]
    for main, args, what in cases:  # each command once, in this process: the kinds of entry are output_file's (above)
        with pytest.raises(UsageError, match=re.escape(what)):
            main(list(map(str, args)))
        assert "measuring importance" not in capsys.readouterr().out  # prune.py: refused before its calibration
    assert entry_kinds(tmp_path) == before and (tmp_path / "notes.md").read_text() == "my notes"
    assert (tmp_path / "mine.png").read_bytes() == b"my picture" and (tmp_path / "plain").read_text() == "mine"
    eval_py.main(["plot", str(tiny_ckpt.parent), "--out", str(tmp_path / "new" / "loss.png")])  # a new folder is made
    Image.open(tmp_path / "new" / "loss.png").verify()


def test_the_loss_plot_is_drawn_at_most_once_a_minute_and_at_the_end(tiny_data, tmp_path, monkeypatch):
    """Drawn at every eval, loss.png took ~0.5 s each (and 1.3 s to import matplotlib): most of a
    short run's evals. Now at the first eval, at an eval a minute after the last drawing, and at the end."""
    import train

    from wikigpt.run import train_log
    drawn = []
    monkeypatch.setattr(train_log, "plot_runs", lambda runs, out: drawn.append([r["step"] for r in runs[0][1]
                                                                                 if r["type"] == "eval"]))
    train.main([f"--data={tiny_data}", f"--out_dir={tmp_path / 'a'}", "--max_steps=4", "--eval_interval=1", *TINY])
    assert drawn == [[0], [0, 1, 2, 3, 4]]  # 5 evals in seconds: the first, then one drawing at the end
    drawn.clear()
    monkeypatch.setattr(train_log, "PLOT_EVERY_S", 0)  # a long run: every eval is a minute after the last
    train.main([f"--data={tiny_data}", f"--out_dir={tmp_path / 'b'}", "--max_steps=2", "--eval_interval=1", *TINY])
    assert drawn == [[0], [0, 1], [0, 1, 2]]  # and nothing again at the end: no eval since


def test_a_kill_between_the_reports_two_files_never_leaves_the_old_md_beside_the_new_json(tmp_path, monkeypatch):
    """report.json is written, then report.md: killed between, the .md of an earlier evaluation (other
    checkpoints) stood beside the new .json as if it were its rendering."""
    import eval as eval_py
    monkeypatch.setattr(eval_py, "format_table", lambda report: f"| {report['checkpoints'][0]['label']} |")
    out = tmp_path / "report.json"
    eval_py.write_report({"notes": [], "checkpoints": [{"label": "old"}]}, out)
    real = eval_py.write_text

    def killed_at_the_md(path, text):
        if path.suffix == ".md":
            raise KeyboardInterrupt
        real(path, text)
    monkeypatch.setattr(eval_py, "write_text", killed_at_the_md)
    with pytest.raises(KeyboardInterrupt):
        eval_py.write_report({"notes": [], "checkpoints": [{"label": "new"}]}, out)
    assert json.loads(out.read_text())["checkpoints"] == [{"label": "new"}] and not out.with_suffix(".md").exists()


def test_the_legends_of_many_runs_go_below_the_axes_not_over_the_curves():
    """Two legend entries a run on the loss axes: 12 runs' legend inside them covered the curves."""
    from wikigpt.run.runlog import draw_runs

    def run(i):
        rows = [{"type": "train", "tokens": s * 1000, "loss": 5 / s ** 0.5 + i / 10} for s in range(1, 20)]
        return f"out/run_{i}", rows + [{"type": "eval", "tokens": 5000, "val_loss": 3.0, "val_bpb": 1.0}]

    for n, below in ((3, False), (5, True), (12, True)):
        fig = draw_runs([run(i) for i in range(n)])
        fig.draw_without_rendering()  # lays the figure out, as saving it does: the extents below are where things are
        for ax in fig.axes:
            legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
            label = ax.xaxis.label.get_window_extent()  # "tokens seen", under the tick labels
            assert (legend.y1 <= label.y0) == below, (n, legend, label)  # below the axes and their labels
            assert box.height > 100  # the axes keep their room
