"""export.py: stock transformers, in a fresh process that cannot import this repository, loads
the exported folder and computes what our model computes."""
import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_cli
from safetensors import SafetensorError

from wikigpt.decoding.load import load_model
from wikigpt.cli import UsageError
from wikigpt.adapt.hf_tokenizer import chat_template, tokenizer_json
from wikigpt.chat.chat_template import Message, render_chat
from wikigpt.tokenizer import Tokenizer

TEXTS = ["Aristotle was a Greek philosopher.", "长江是中国最长的河流。", "emoji 🎉👍🏽 and café, naïve",
         "  spaces\tand\nnew lines  ", "plain text that says <|end|> and <|user|>"]
CONVERSATION = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! 你好"}, {"role": "user", "content": "What is a river?"}]
DIALOGUES = [("Hello", "Hello! How are you today?"), ("你好", "你好！很高兴见到你。")]

# Runs with `python -I` in the export's parent folder: no path to this repository anywhere.
HF_SIDE = r"""
import importlib.util, json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
assert importlib.util.find_spec("model") is None and importlib.util.find_spec("tokenizer") is None
path, texts, conversation, with_model = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4] == "1"
tok = AutoTokenizer.from_pretrained(path)
out = {"ids": [tok(t, add_special_tokens=False).input_ids for t in texts],
       "decoded": [tok.decode(tok(t, add_special_tokens=False).input_ids) for t in texts]}
if tok.chat_template:
    out["chat"] = list(tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False))
if with_model:
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out["arch"] = type(model).__name__
    with torch.no_grad():
        out["logits"] = [model(torch.tensor([[tok.bos_token_id] + ids])).logits[0].tolist() for ids in out["ids"][:2]]
        prompt = torch.tensor([out["chat"]])
        room = min(20, tok.model_max_length - prompt.shape[1])  # within the context (64 here)
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=room, do_sample=False,
                             repetition_penalty=1.0, temperature=None, top_k=None, top_p=None)
    out["greedy"] = gen[0, prompt.shape[1]:].tolist()
print(json.dumps(out))
"""


def hf_side(folder, with_model=True):
    script = folder.parent / "hf_side.py"
    script.write_text(HF_SIDE)
    r = subprocess.run([sys.executable, "-I", script.name, folder.name, json.dumps(TEXTS),
                        json.dumps(CONVERSATION), "1" if with_model else "0"],
                       cwd=folder.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_tokenizer(tok: Tokenizer, hf: dict):
    # a transformers tokenizer reads special-token text as the special tokens (as tiktoken with
    # allowed_special does); ours keeps a document's text plain, and the two agree everywhere else
    assert hf["ids"] == [tok.enc.encode(t, allowed_special="all") for t in TEXTS]
    assert hf["ids"][:4] == [tok.encode(t) for t in TEXTS[:4]]
    assert hf["decoded"] == TEXTS
    conv = [Message(m["role"], m["content"]) for m in CONVERSATION]
    assert hf["chat"] == render_chat(tok, conv, add_generation_prompt=True)[0]


@pytest.fixture(scope="module", params=["modern", "gpt2"])
def chat_export(request, tiny_data, tmp_path_factory):
    """A tiny chat model of each exportable preset, exported."""
    root = tmp_path_factory.mktemp(f"export_{request.param}")
    arch = ["--arch=modern"] if request.param == "modern" else ["--arch=gpt2"]  # their default MLPs
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={root / 'base'}", "--max_steps=30",
                "--eval_interval=30", *TINY, "--block_size=64", *arch)
    assert r.returncode == 0, r.stderr
    dialogues = root / "d.jsonl"
    dialogues.write_text("".join(json.dumps({"prompt": q, "response": a}, ensure_ascii=False) + "\n"
                                 for _ in range(20) for q, a in DIALOGUES), encoding="utf-8")
    r = run_cli("chat_sft.py", f"--init_from={root / 'base' / 'best.pt'}", f"--out_dir={root / 'chat'}",
                f"--sft_data={dialogues}", "--max_steps=20", "--eval_interval=20", "--eot_check=0",
                "--sft_val_fraction=0.2", *TINY, "--block_size=64")
    assert r.returncode == 0, r.stderr
    r = run_cli("export.py", "--ckpt", root / "chat" / "best.pt", "--out", root / "hf")
    assert r.returncode == 0, r.stderr
    return request.param, root / "chat" / "best.pt", root / "hf"


def test_transformers_computes_what_we_compute(chat_export):
    preset, ckpt, folder = chat_export
    hf = hf_side(folder)
    assert hf["arch"] == {"modern": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel"}[preset]
    model, tok, _ = load_model(ckpt, "cpu")
    check_tokenizer(tok, hf)
    with torch.no_grad():
        for ids, theirs in zip(hf["ids"][:2], hf["logits"]):  # English and Chinese
            ours = model.lm_head(model.hidden_states(torch.tensor([[tok.doc_sep] + ids])))[0, :, :tok.n_vocab]
            assert ours.abs().max() > 0.1  # a trained head, not the zero init
            assert (ours - torch.tensor(theirs)).abs().max() < 1e-4
    prompt = hf["chat"]
    room = min(20, model.cfg.block_size - len(prompt))
    assert room >= 8
    greedy = list(model.generate(prompt, room, temperature=0.0, stop_tokens=tok.stops))
    assert hf["greedy"] == greedy
    config = json.loads((folder / "config.json").read_text())
    assert config["eos_token_id"] == tok.end_of_turn  # generate stops at the end of the turn...
    stops = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert stops[0] == tok.end_of_turn and set(stops) == tok.stops  # ... or at any special token, as ours
    assert "Qwen3" in (folder / "README.md").read_text() or preset == "gpt2"


def test_the_snippets_of_the_model_card_and_the_docs_run(chat_export):
    """The code a user copies from the export's README.md and from docs/export.md, as written, on
    the transformers installed (5.x returns a BatchEncoding unless told return_dict=False)."""
    _, _, folder = chat_export
    card = (folder / "README.md").read_text().split("```python\n")[1].split("```")[0]
    docs = (ROOT / "docs" / "export.md").read_text().split("```python\n")[1].split("```")[0]
    assert "apply_chat_template" in card and "apply_chat_template" in docs
    script = folder.parent / "snippets.py"
    code = card.replace("PATH", repr(folder.name)) + docs.replace("hf/wikigpt-chat", folder.name)
    # as written but for the reply's length: the gpt2 preset's positions end at this test's 64-token context
    script.write_text(re.sub(r"max_new_tokens=\d+", "max_new_tokens=16", code))
    r = subprocess.run([sys.executable, "-I", script.name], cwd=folder.parent, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_gpt2_tokenizer_exports_exactly(tmp_path):
    tok = Tokenizer({"kind": "gpt2"})
    folder = tmp_path / "gpt2tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(tok)))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": chat_template(), "bos_token": "<|endoftext|>"}))
    check_tokenizer(tok, hf_side(folder, with_model=False))


def test_export_refuses_what_it_cannot_do_exactly_and_never_overwrites(tiny_data, tiny_ckpt, tmp_path):
    ckpt = tiny_ckpt  # a base model of the modern preset (SwiGLU): exportable
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tmp_path / 'relu2'}", "--max_steps=1",
                "--eval_interval=1", *TINY, "--mlp=relu2")
    assert r.returncode == 0, r.stderr
    r = run_cli("export.py", "--ckpt", tmp_path / "relu2" / "best.pt", "--out", tmp_path / "x")
    assert r.returncode == 2 and "no exact transformers architecture" in r.stderr and "--mlp=swiglu" in r.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    from export import export

    for overwrite in (False, True):  # --overwrite replaces only what export.py made (in this process: the
        with pytest.raises(UsageError, match="keep.txt.*choose another --out"):  # real runs are above and below)
            export(ckpt, tmp_path / "taken", overwrite=overwrite)
        assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    import convert
    convert.quantise(str(ckpt), tmp_path / "int8.pt")  # dequantised, it would be neither model (a review)
    with pytest.raises(UsageError, match="holds int8 weights: export the float checkpoint"):
        export(tmp_path / "int8.pt", tmp_path / "z")
    assert not (tmp_path / "z").exists()
    (tmp_path / "junk.pt").write_text("junk")
    for bad in (tmp_path / "junk.pt", tmp_path / "missing.pt"):
        r = run_cli("export.py", "--ckpt", bad, "--out", tmp_path / "y")
        assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "y").exists()
    export(ckpt, tmp_path / "hf", dtype="bfloat16")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["eos_token_id"] == load_model(ckpt, "cpu")[1].doc_sep  # a base model ends at a document
    with pytest.raises(UsageError, match="is a file, and a transformers export is a folder"):
        export(ckpt, tmp_path / "hf" / "config.json", overwrite=True)
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == config  # left as it was


def test_overwrite_replaces_an_earlier_export_and_nothing_else(tiny_ckpt, tmp_path):
    from export import export

    run = tmp_path / "run"  # a training run's folder: checkpoints, metrics, plot
    shutil.copytree(tiny_ckpt.parent, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for out in (run, run / "best.pt"):
        with pytest.raises(UsageError, match=r"holds (files|a file) export.py did not write.*choose another --out"):
            export(tiny_ckpt, out, overwrite=True, format="gguf" if out.is_file() else "hf")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing deleted or changed

    hf = export(tiny_ckpt, tmp_path / "hf")
    with pytest.raises(UsageError, match="holds an earlier export: pass --overwrite"):
        export(tiny_ckpt, hf, dtype="bfloat16")
    export(tiny_ckpt, hf, dtype="bfloat16", overwrite=True)  # an earlier export is replaced
    assert json.loads((hf / "config.json").read_text())["torch_dtype"] == "bfloat16"
    (hf / "notes.txt").write_text("my notes")  # a user's file in it: no longer only an export
    with pytest.raises(UsageError, match=r"export.py did not write \(notes.txt\)"):
        export(tiny_ckpt, hf, overwrite=True)
    assert (hf / "notes.txt").read_text() == "my notes"

    gguf_file = export(tiny_ckpt, tmp_path / "m.gguf", format="gguf")
    export(tiny_ckpt, gguf_file, dtype="float16", overwrite=True, format="gguf")
    assert gguf_file.read_bytes()[:4] == b"GGUF"
    (tmp_path / "other.gguf").write_text("not a model")
    with pytest.raises(UsageError, match=r"a file export.py did not write \(not a GGUF file.*choose another --out"):
        export(tiny_ckpt, tmp_path / "other.gguf", overwrite=True, format="gguf")
    assert (tmp_path / "other.gguf").read_text() == "not a model"
    (tmp_path / "empty").mkdir()  # an empty folder is taken as it is
    assert (export(tiny_ckpt, tmp_path / "empty") / "config.json").is_file()


def test_every_exported_file_has_the_mode_the_users_umask_gives(tiny_ckpt, tmp_path):
    from export import export

    for umask in (0o022, 0o077):
        before = os.umask(umask)
        try:
            hf = export(tiny_ckpt, tmp_path / f"hf{umask:o}")
            gguf_file = export(tiny_ckpt, tmp_path / f"m{umask:o}.gguf", format="gguf")
        finally:
            os.umask(before)
        modes = {p.name: p.stat().st_mode & 0o777 for p in [*hf.iterdir(), gguf_file]}
        assert set(modes.values()) == {0o666 & ~umask}, modes  # model.safetensors was 0600 under 022


def test_gguf_holds_the_same_tensors_tokenizer_and_template(chat_export, tmp_path):
    preset, ckpt, folder = chat_export
    out = tmp_path / "model.gguf"
    r = run_cli("export.py", "--ckpt", ckpt, "--out", out)  # the format follows the .gguf name
    if preset == "gpt2":  # llama.cpp's GPT-2 uses the tanh GELU: refused rather than approximated
        assert r.returncode == 2 and "tanh" in r.stderr and not out.exists()
        return
    assert r.returncode == 0, r.stderr
    assert f"llama-cli -m {out} --jinja -cnv" in r.stdout  # a chat model: its template, a conversation
    base = run_cli("export.py", "--ckpt", ckpt.parent.parent / "base" / "best.pt", "--out", tmp_path / "b.gguf")
    assert base.returncode == 0 and "--jinja" not in base.stdout and '-p "Aristotle was"' in base.stdout, base.stderr
    import gguf

    reader = gguf.GGUFReader(out)
    field = {name: f.contents() for name, f in reader.fields.items()}
    model, tok, _ = load_model(ckpt, "cpu")
    c = model.cfg
    assert field["general.architecture"] == "qwen3" and field["qwen3.block_count"] == c.n_layer
    assert field["qwen3.context_length"] == c.block_size and field["qwen3.attention.head_count"] == c.n_head
    assert field["tokenizer.ggml.eos_token_id"] == tok.end_of_turn and field["tokenizer.ggml.add_bos_token"] is False
    assert field["tokenizer.ggml.eot_token_id"] == tok.end_of_turn
    assert "tokenizer.ggml.eot_token_id" not in gguf.GGUFReader(tmp_path / "b.gguf").fields  # a base model has no turns
    assert field["tokenizer.chat_template"] == chat_template()
    hf_tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = sorted(hf_tok["model"]["vocab"], key=hf_tok["model"]["vocab"].get) + list(tok.special)
    assert field["tokenizer.ggml.tokens"] == vocab and len(vocab) == tok.n_vocab
    assert field["tokenizer.ggml.merges"] == [" ".join(m) for m in hf_tok["model"]["merges"]]
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 11 * c.n_layer
    head = tensors["output.weight"]
    assert [int(d) for d in head.shape] == [c.n_embd, tok.n_vocab]  # GGUF lists dims innermost first
    assert torch.equal(torch.from_numpy(head.data.copy()).view(tok.n_vocab, c.n_embd),
                       model.lm_head.weight[:tok.n_vocab])
    assert torch.equal(torch.from_numpy(tensors["blk.0.ffn_gate.weight"].data.copy()),
                       model.blocks[0].mlp.c_fc.weight[:model.blocks[0].mlp.c_proj.in_features])


# llama-3's split pattern, which llama.cpp's "llama-bpe" pre-tokenizer applies
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def test_our_trained_bpe_splits_text_like_llama3(tiny_data):
    import regex

    from wikigpt.prep.data import read_articles

    ours = Tokenizer.load(tiny_data / "tokenizer.json").enc._pat_str
    texts = [a["text"] for a in read_articles(tiny_data, "train")] + TEXTS + [
        "It's DON'T we'LL\n\n\n  x", "a\r\n\r\nb  \n", "123456789 ½ ٣٤", "中文，标点。English!", "  \t\n end ", "...!!??"]
    for text in texts:
        assert regex.findall(ours, text) == regex.findall(LLAMA3_SPLIT, text), text


# ----------------------------------------------------------------------------------------
# --out that is no plain file or folder: refused in one line, nothing written or deleted

def export_cli(ckpt, out, *more):
    """A real run, bounded: export.py reading a named pipe would block until a writer came."""
    try:
        return run_cli("export.py", "--ckpt", ckpt, "--out", out, *more, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"export.py --out {out} {' '.join(more)} did not end within 60 s")


def tree_state(folder):
    """Every entry under folder, not following links: its kind, and its link target or bytes."""
    state = {}
    for path in sorted(folder.rglob("*")):
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            state[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISREG(mode):
            state[str(path)] = ("file", path.read_bytes())
        else:
            state[str(path)] = (stat.S_IFMT(mode), None)
    return state


def assert_refused(r, *words):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr  # one clear line, no traceback
    assert all(w in lines[0] for w in words), (words, lines[0])


def test_out_that_is_a_link_pipe_device_or_socket_is_refused_and_left_alone(tiny_ckpt, tmp_path):
    from export import export

    export(tiny_ckpt, tmp_path / "prev")
    export(tiny_ckpt, tmp_path / "prev.gguf", format="gguf")
    (tmp_path / "plain.txt").write_text("mine")
    os.mkfifo(tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo.gguf")
    os.mknod(tmp_path / "sock", stat.S_IFSOCK | 0o644)
    for name, target in (("link_to_export", "prev"), ("link.gguf", "prev.gguf"), ("link_to_file", "plain.txt"),
                         ("dangling", "nowhere"), ("link_to_fifo", "fifo")):
        (tmp_path / name).symlink_to(target)
    before = tree_state(tmp_path)
    cases = [("fifo", ["--overwrite"], "a named pipe (FIFO)"), ("fifo.gguf", [], "a named pipe (FIFO)"),
             ("link_to_export", ["--overwrite"], "a symbolic link (to prev)"),
             ("link.gguf", ["--overwrite"], "a symbolic link (to prev.gguf)"),
             ("link_to_file", ["--format", "gguf", "--overwrite"], "a symbolic link (to plain.txt)"),
             ("dangling", [], "a symbolic link (to nowhere)"), ("link_to_fifo", [], "a symbolic link (to fifo)"),
             ("sock", ["--overwrite"], "a socket")]
    r = export_cli(tiny_ckpt, tmp_path / "fifo", "--overwrite")  # one real run: one line, no traceback, no hang
    assert_refused(r, f"--out {tmp_path / 'fifo'} is a named pipe (FIFO)", "nothing was changed")
    for name, more, what in cases[1:] + [("/dev/null", ["--overwrite"], "a device")]:  # the rest in this process
        with pytest.raises(UsageError, match=re.escape(f"--out {tmp_path / name} is {what}")):
            export(tiny_ckpt, tmp_path / name, overwrite="--overwrite" in more, format="gguf" if "gguf" in more else "hf")
    assert tree_state(tmp_path) == before  # no target replaced, no link deleted, no temporary left
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_out_under_a_file_is_refused_and_a_new_folder_above_is_made(tiny_ckpt, tmp_path):
    from export import export

    (tmp_path / "plain").write_text("mine")
    for out, format in ((tmp_path / "plain" / "hf", "hf"), (tmp_path / "plain" / "m.gguf", "gguf")):
        with pytest.raises(UsageError, match=re.escape(f"--out {out}: {tmp_path / 'plain'} is a file")):
            export(tiny_ckpt, out, format=format)
    assert [p.name for p in tmp_path.iterdir()] == ["plain"] and (tmp_path / "plain").read_text() == "mine"
    gguf_file = export(tiny_ckpt, tmp_path / "new" / "deeper" / "m.gguf", format="gguf")
    assert gguf_file.read_bytes()[:4] == b"GGUF"


def test_out_that_names_the_current_or_parent_folder_is_refused(tiny_ckpt, tmp_path, monkeypatch):
    """`--out .` in an empty folder ended in a traceback (a ValueError of its temporary's name) after
    the model had loaded; renamed into place, the export would have replaced the shell's folder."""
    from export import export

    monkeypatch.chdir(tmp_path)
    for out, format, example in ((".", "hf", "hf"), ("", "gguf", "model.gguf"), ("..", "hf", "../hf")):
        with pytest.raises(UsageError, match=re.escape(f"names no folder or file of its own: give one, e.g. --out {example}")):
            export(tiny_ckpt, out, format=format)
    assert list(tmp_path.iterdir()) == []
    assert_refused(export_cli(tiny_ckpt, "."), "--out . names no folder or file of its own")


def test_out_that_cannot_be_read_is_refused(tiny_ckpt, tmp_path, monkeypatch):
    """What a user who may not read --out meets (root reads everything: the error is simulated)."""
    from export import export

    locked_folder, locked_file = tmp_path / "secret", tmp_path / "locked.gguf"
    locked_folder.mkdir()
    (locked_folder / "x").write_text("x")
    locked_file.write_text("x")
    real_iterdir, real_open = Path.iterdir, Path.open

    def denied(real):
        def call(self, *args, **kwargs):
            if self in (locked_folder, locked_file):
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)
        return call

    monkeypatch.setattr(Path, "iterdir", denied(real_iterdir))
    monkeypatch.setattr(Path, "open", denied(real_open))
    for out, format in ((locked_folder, "hf"), (locked_file, "gguf")):
        with pytest.raises(UsageError, match=r"cannot be read \(Permission denied\).*choose another --out"):
            export(tiny_ckpt, out, overwrite=True, format=format)
    monkeypatch.undo()
    assert (locked_folder / "x").read_text() == "x" and locked_file.read_text() == "x"


# ----------------------------------------------------------------------------------------
# Two exports to one --out, an --overwrite cut short, a full disk

def whole_export(out: Path) -> dict:
    """What `out` holds, checked whole: a folder's config, or a GGUF file's bytes."""
    from export import not_an_export

    assert out.exists() and not_an_export(out) is None, f"{out}: no whole export there"
    if out.is_file():
        return {"gguf": out.read_bytes()}
    assert (out / "model.safetensors").stat().st_size > 0 and (out / "README.md").is_file()
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("format", ["hf", "gguf"])
def test_an_export_another_run_finished_meanwhile_is_neither_deleted_nor_mixed_with_this_one(
        tiny_ckpt, tmp_path, monkeypatch, format):
    """Two export.py runs to one new --out: each writes a temporary of its own (it was one fixed
    name, which the second run deleted under the first), and the one that finishes second is
    refused, without deleting or replacing the other's (it was: put_in_place deleted --out)."""
    import export

    out = tmp_path / ("m.gguf" if format == "gguf" else "hf")
    writer = "write_gguf" if format == "gguf" else "write_hf_folder"
    real = getattr(export, writer)

    def other_run_finishes_meanwhile(tmp, *args):
        real(tmp, *args)  # this run's export is written: the other run publishes its own now
        monkeypatch.setattr(export, writer, real)
        export.export(tiny_ckpt, out, dtype="float16", format=format)
    monkeypatch.setattr(export, writer, other_run_finishes_meanwhile)
    with pytest.raises(UsageError, match=re.escape(f"{out} was written by another run while this one worked")):
        export.export(tiny_ckpt, out, format=format)
    theirs = whole_export(out)
    expected = export.export(tiny_ckpt, tmp_path / f"alone.{format}", dtype="float16", format=format)
    assert theirs == whole_export(expected)  # the other run's export, as it wrote it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, expected.name])  # no temporary left


def test_what_a_killed_export_left_is_cleared_and_a_running_ones_is_not(tiny_ckpt, tmp_path):
    from export import export

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".hf.{dead.stdout.strip()}-0badc0de.tmp-export"  # a finished process's
    live = tmp_path / f".hf.{os.getpid()}-feedf00d.tmp-export"  # this one's: an export in progress
    users = tmp_path / ".hf.2024-12-01.tmp-export"  # a user's name of that shape: "2024" is no pid
    for folder in (stale, live, users):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
    export(tiny_ckpt, tmp_path / "hf")
    assert not stale.exists() and live.exists() and users.exists()


class Killed(BaseException):
    """A SIGKILL at that point, as far as what is on disk goes (no `except Exception` catches it)."""


@pytest.mark.parametrize("format, killed_at", [("hf", "wikigpt.prep.workdir._exchange"), ("hf", "shutil.rmtree"),
                                               ("gguf", "os.replace")])
def test_an_overwrite_killed_at_any_rename_or_delete_leaves_a_whole_export(tiny_ckpt, tmp_path, monkeypatch,
                                                                          format, killed_at):
    """--overwrite swaps the new export in, in one step: killed at its first rename or delete,
    --out holds the old export or the new one, whole (it deleted the old one, then renamed the
    new one in: killed between the two, --out held nothing)."""
    from export import export

    out = export(tiny_ckpt, tmp_path / ("m.gguf" if format == "gguf" else "hf"), format=format)
    old = whole_export(out)
    new = whole_export(export(tiny_ckpt, tmp_path / f"new.{format}", dtype="float16", format=format))
    with monkeypatch.context() as m:
        def kill(*args, **kwargs):
            m.undo()  # once: what runs after a kill is not this process's any more
            raise Killed(killed_at)
        m.setattr(killed_at, kill)
        with pytest.raises(Killed):  # the swap (a folder), the old one's deletion after it, the rename (a file)
            export(tiny_ckpt, out, dtype="float16", overwrite=True, format=format)
    assert whole_export(out) in (old, new)


@pytest.mark.parametrize("format, writer, error", [
    ("hf", "safetensors.torch.save_file",
     lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")),
    ("hf", "export.write_json", lambda: OSError(errno.ENOSPC, "No space left on device")),
    ("gguf", "gguf.GGUFWriter.write_tensors_to_file", lambda: OSError("262144 requested and 33368 written"))],
    ids=["safetensors", "json", "gguf"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tiny_ckpt, tmp_path, monkeypatch, format, writer,
                                                                 error):
    """What each writer raised on a full disk (a small tmpfs): safetensors its own error, a json
    file an OSError with an errno, gguf (numpy's tofile) an OSError without one: each was a
    traceback. Now one line naming --out; nothing is left at --out or beside it, and an earlier
    export that --overwrite could not replace stays as it was."""
    from export import export

    def full_disk(*args, **kwargs):
        raise error()
    out = tmp_path / ("m.gguf" if format == "gguf" else "hf")
    said = rf"^could not write {re.escape(str(out))}: [^\n]+ make room"
    with monkeypatch.context() as m:
        m.setattr(writer, full_disk)
        with pytest.raises(UsageError, match=said):
            export(tiny_ckpt, out, format=format)
    assert list(tmp_path.iterdir()) == []
    before = whole_export(export(tiny_ckpt, out, format=format))
    monkeypatch.setattr(writer, full_disk)
    with pytest.raises(UsageError, match=said):
        export(tiny_ckpt, out, dtype="float16", overwrite=True, format=format)
    assert [p.name for p in tmp_path.iterdir()] == [out.name] and whole_export(out) == before
