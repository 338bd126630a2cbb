"""The README's main command, `make demo`, end to end at a tiny scale (same steps, tiny model)."""
import re
import subprocess
import sys

from conftest import ROOT

from wikigpt.knowledge.natural import load_natural


def test_full_demo_at_tiny_scale(tmp_path):
    tiny = "--n_layer=1 --n_head=2 --n_embd=32 --compile=false --eval_tokens=2048"
    r = subprocess.run(
        ["make", "--no-print-directory", "demo-steps", f"PY={sys.executable}",
         f"DEMO_DATA={tmp_path / 'data'}", f"DEMO_OUT={tmp_path / 'out'}",
         f"PRETRAIN_ARGS={tiny} --block_size=128 --max_steps=6 --eval_interval=3",
         "SFT_ARGS=--compile=false --eval_tokens=2048 --max_steps=4 --eval_interval=2",
         "EVAL_ARGS=--eval_tokens=2048 --max_examples=6 --max_new_tokens=24"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"== {step}" in out
    assert re.search(r"indexed [\d,]+ passages of 98 articles", out)  # the search index
    assert "wrote" in out and "chars/token" in out  # the dataset
    assert out.count("Aristotle was") >= 1  # the pretrained sample
    assert "dialogues:" in out  # SFT
    assert "you> 你好" in out and "(conversation cleared)" in out  # the scripted chat
    assert len(re.findall(r"^bot> ", out, re.M)) == 5 + 5  # 5 Wikipedia questions with --rag, one a follow-up
    assert re.search(r"^  \[1\] Aristotle: article lead  https://en.wikipedia.org/wiki/Aristotle$", out, re.M)
    # the knowledge graph, its threshold, and answers from the right evidence (copied: any model size)
    assert re.search(r"knowledge graph: [1-9][\d,]* facts from [1-9]\d* infoboxes, [1-9]\d* aliases", out)
    assert "'not found' below an evidence score of" in out
    assert "confidence trained on all of dev" in out and "threshold" in out and "on the confidence)" in out  # learned
    assert re.search(r"^bot> Andorra la Vella$", out, re.M)  # the fact, copied and stopped at its end
    assert re.search(r'^  \[1\] Andorra: infobox field "capital"  https://en.wikipedia.org/wiki/Andorra$', out, re.M)
    # the follow-up names no country: the entity carries over from the question before it
    assert re.search(r"^you> What currency does it use\?\nbot> Euro$", out, re.M)
    assert re.search(r'^  \[1\] Andorra: infobox field "currency"  https://en.wikipedia.org/wiki/Andorra$', out, re.M)
    assert re.search(r'^  \[1\] Albania: section "Economy"  https://en.wikipedia.org/wiki/Albania$', out, re.M)
    assert re.search(r"^bot> 我的资料里没有这个问题的答案。", out, re.M)  # honest "not found", in the question's language
    assert (tmp_path / "out" / "chat" / "best.pt").is_file()
    # the report: base and chat side by side, with the knowledge rows, and the loss curves
    assert "| metric | demo/best.pt | chat/best.pt |" in out
    for metric in ("val bits per byte", "held-out assistant-token loss", "chrF", "retrieval recall@5",
                   "answer F1 with retrieval", "fact accuracy with retrieval, copying", "section F1 with retrieval",
                   "out-of-corpus abstained with retrieval, copying"):
        assert re.search(rf"^\| {re.escape(metric)}.*\| [\d.]+ \|$", out, re.M), metric
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "chat" / "loss.png").is_file()
    assert "Knowledge, per kind of question" in (tmp_path / "out" / "report.md").read_text()
    # the hand-written questions (bench/natural_qa, dev split): the evidence reader's rows
    dev = load_natural("dev")  # every answerable question and follow-up turn of the split, read
    assert re.search(rf"^natural questions \({len(dev.questions)} answerable; 'not found' below [\d.]+;", out, re.M)
    turns = sum(len(c["turns"]) - 1 for c in dev.conversations)
    assert re.search(rf"^  follow-up turns right [\d.]+ \(\d+/{turns}, wrong \d+\)", out, re.M)
    for kind in ("lead", "fact", "section", "out-of-corpus", "abstention"):  # the per-kind table, printed
        assert re.search(rf"^  {kind} ", out, re.M), kind
    assert f"wrote {tmp_path / 'out' / 'loss.png'} (2 runs)" in out


def test_make_serve_passes_its_options_to_serve_py(tmp_path):
    """make serve had no way to change the port (8000 taken: a user had to find serve.py's command)."""
    r = subprocess.run(["make", "-n", "--no-print-directory", "serve", f"PY={sys.executable}",
                        f"DEMO_DATA={tmp_path}", "SERVE_ARGS=--port 8001 --slots 2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"serve.py --ckpt out/chat/best.pt --port 8001 --slots 2" in r.stdout  # (no index there: the model alone)
