"""chat_sft.py and chat.py: the template's loss mask, dialogue formats, bad input, SFT, chat."""
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_cli

from wikigpt.chat import sft_data
from wikigpt.chat.sft_config import SFTConfig
from wikigpt.chat.sft_data import _turns, check_conversation, parse_sft_data, read_dialogues
from wikigpt.chat.sft_rows import rows_of
from wikigpt.prep.data import load_dataset
from wikigpt.tokenizer import END_OF_TURN, Tokenizer
from wikigpt.chat.chat_template import Message, render_chat, show_mask
from wikigpt.checkpoint import load_checkpoint, save_checkpoint
from wikigpt.cli import UsageError

RECORDS = {
    "openai": {"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Where is Paris?"},
                            {"role": "assistant", "content": "In France."},
                            {"role": "user", "content": "长江在哪里？"},
                            {"role": "assistant", "content": "在中国。"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi there"},
                                   {"from": "gpt", "value": "Hello! 你好！"}]},
    "alpaca": {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    "pairs": {"prompt": "Say yes", "response": "Yes."},
}
ANSWERS = {"openai": ["In France.", "在中国。"], "sharegpt": ["Hello! 你好！"], "alpaca": ["5"],
           "pairs": ["Yes."]}


@pytest.fixture(scope="module", params=["gpt2", "bpe"])
def tok(request, tiny_data):
    return Tokenizer.from_name("gpt2") if request.param == "gpt2" else load_dataset(tiny_data).tokenizer


@pytest.mark.parametrize("fmt", list(RECORDS))
def test_mask_covers_exactly_the_assistant_turns_and_their_end_tokens(tok, fmt):
    conv = check_conversation(_turns(RECORDS[fmt], "auto"), "")
    ids, mask = render_chat(tok, conv)
    assert len(ids) == len(mask)
    learned, span = [], []
    for i, m in zip(ids, mask):  # collect maximal runs of mask = 1
        if m:
            span.append(i)
        elif span:
            learned.append(span)
            span = []
    if span:
        learned.append(span)
    assert [tok.decode(s) for s in learned] == [a + END_OF_TURN for a in ANSWERS[fmt]]
    assert tok.decode(ids).count(END_OF_TURN) == len(conv)


def test_show_mask_marks_learned_spans(tok):
    conv = check_conversation(_turns(RECORDS["pairs"], "auto"), "")
    assert show_mask(tok, *render_chat(tok, conv)) == "<|user|>Say yes<|end|><|assistant|>[[Yes.<|end|>]]"


def test_each_format_parses_from_a_file(tmp_path):
    path = tmp_path / "mix.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS.values()))
    convs = list(read_dialogues(path, SFTConfig(), []))
    assert [len(c) for c in convs] == [5, 2, 2, 2]
    assert convs[2][0] == Message("user", "Add the numbers.\n\n2 and 3")
    (tmp_path / "arr.json").write_text(json.dumps(list(RECORDS.values())))
    assert list(read_dialogues(tmp_path / "arr.json", SFTConfig(), [])) == convs
    with pytest.raises(UsageError, match="arr.json, item 1: pairs record is missing a field"):
        list(read_dialogues(tmp_path / "arr.json", SFTConfig(sft_format="pairs"), []))


BAD = {
    "broken json": ('{"prompt": oops', "line 2: not valid JSON"),
    "unknown role": (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), "unknown role 'wizard'"),
    "not alternating": (json.dumps({"messages": [{"role": "user", "content": "a"},
                                                 {"role": "user", "content": "b"}]}), "must alternate"),
    "empty answer": (json.dumps({"prompt": "a", "response": "  "}), "empty assistant turn"),
    "unknown format": (json.dumps({"question": "a"}), "unknown format"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_dialogue_records_name_file_and_line(tmp_path, name):
    text, message = BAD[name]
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine", "response": "ok"}\n' + text + "\n")
    with pytest.raises(UsageError, match=re.escape(message)) as e:
        list(read_dialogues(path, SFTConfig(), []))
    assert "bad.jsonl, line 2" in str(e.value) and "--skip_bad_records" in str(e.value)
    skipped = []
    kept = list(read_dialogues(path, SFTConfig(skip_bad_records=True), skipped))
    assert len(kept) == 1 and skipped[0].endswith("bad.jsonl:2")


def test_a_folder_or_a_binary_file_as_dialogues_is_named_as_such(tmp_path, tiny_data):
    """A folder was 'not found'; a token shard or a gzip file 'line 1: not valid JSON ... pass
    --skip_bad_records=true', which would skip every record."""
    import gzip
    with pytest.raises(UsageError, match=r"is a folder: give a JSONL file"):
        list(read_dialogues(tiny_data, SFTConfig(), []))
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "a", "response": "b"}\n'))
    for path, kind in ((next(tiny_data.glob("train_*.bin")), "binary data"), (tmp_path / "d.jsonl.gz", "a gzip file")):
        with pytest.raises(UsageError, match=f"is not text but {kind}") as e:
            list(read_dialogues(path, SFTConfig(skip_bad_records=True), []))
        assert "--skip_bad_records" not in str(e.value)


def test_an_empty_dialogue_file_is_named(tmp_path):
    """An empty --sft_data file was "no train conversations: give more dialogue data", naming no file."""
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("none.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(UsageError, match=f"dialogue file .*{name} is empty"):
            list(read_dialogues(tmp_path / name, SFTConfig(skip_bad_records=True), []))


def test_a_utf8_bom_is_read_past_and_invalid_utf8_still_refused(tmp_path):
    """Windows editors start a file with a BOM: it was refused as "line 1: not valid JSON
    (Unexpected UTF-8 BOM ...)"."""
    bom = b"\xef\xbb\xbf"
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS.values()).encode()
    (tmp_path / "plain.jsonl").write_bytes(lines)
    expected = list(read_dialogues(tmp_path / "plain.jsonl", SFTConfig(), []))
    (tmp_path / "bom.jsonl").write_bytes(bom + lines)
    (tmp_path / "bom.json").write_bytes(bom + json.dumps(list(RECORDS.values())).encode())
    for name in ("bom.jsonl", "bom.json"):
        assert list(read_dialogues(tmp_path / name, SFTConfig(), [])) == expected
    (tmp_path / "bad.jsonl").write_bytes(bom + lines + b'{"prompt": "\xff"}\n')
    with pytest.raises(UsageError, match=r"bad.jsonl, line 5: not valid JSON \('utf-8' codec can't decode"):
        list(read_dialogues(tmp_path / "bad.jsonl", SFTConfig(), []))


def test_sft_data_weights_parse():
    assert parse_sft_data("a.jsonl, b.json:0.5") == [(Path("a.jsonl"), 1.0), (Path("b.json"), 0.5)]
    assert parse_sft_data(r"C:\data\chat.jsonl") == [(Path(r"C:\data\chat.jsonl"), 1.0)]
    for weight in ("0", "-1", "nan", "inf", "1e9"):  # inf and nan were a traceback, 1e9 a billion copies on disk
        with pytest.raises(UsageError, match=f"--sft_data a.jsonl:{weight}: the weight .* above 0 and at most 100"):
            parse_sft_data(f"b.json:0.5,a.jsonl:{weight}")


def test_long_conversations_are_cut_at_turns_and_no_row_is_all_masked(tok):
    rng = random.Random(0)
    words = ["river", "mill", "grain", "长江", "flour", "winter", "?", "!"]
    for _ in range(200):
        n = rng.randint(1, 6)
        conv = [Message("system", "Be kind.")] if rng.random() < 0.5 else []
        for _ in range(n):
            conv += [Message("user", " ".join(rng.choices(words, k=rng.randint(1, 40)))),
                     Message("assistant", " ".join(rng.choices(words, k=rng.randint(1, 40))))]
        max_len = rng.randint(12, 80)
        for ids, mask in rows_of(tok, conv, max_len, Counter()):
            assert len(ids) <= max_len and any(mask)
            assert ids[0] == tok.doc_sep
            if len(ids) < max_len:  # not cut inside a turn: ends with an end-of-turn token
                assert ids[-1] == tok.end_of_turn


# ----- real runs

def write_dialogues(path, n=120):
    rows = [{"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def val_losses(stdout):
    return [float(v) for v in re.findall(r"step \d+: val loss (\d+\.\d+)", stdout)]


@pytest.fixture(scope="module")
def tiny_chat(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat")
    data = write_dialogues(tmp / "d.jsonl")
    r = run_cli("chat_sft.py", f"--init_from={tiny_ckpt}", f"--out_dir={tmp / 'chat'}",
                f"--sft_data={data}", "--max_steps=30", "--eval_interval=15", "--sft_val_fraction=0.2",
                "--eot_check=5", *TINY)
    assert r.returncode == 0, r.stderr
    return tmp / "chat" / "best.pt", r.stdout


def test_sft_lowers_held_out_assistant_loss(tiny_chat):
    _, stdout = tiny_chat
    losses = val_losses(stdout)
    assert losses[-1] < losses[0] - 0.5, losses  # step 0 is the base model on the same rows
    assert re.search(r"reply ends with <\|end\|> within 128 tokens: \d+%", stdout)
    assert load_checkpoint(tiny_chat[0])["kind"] == "sft"


def test_the_end_of_turn_check_skips_a_question_that_fills_the_context(tiny_chat):
    """A row cut to fit the context ends with its question: its <|assistant|> at the context's
    end left no room for a reply, and the check after training (eot_check, on by default) ended
    chat_sft.py in a traceback after its checkpoints were written."""
    import numpy as np

    from chat_sft import end_of_turn_rate
    from wikigpt.chat.sft_rows import TokenRows
    from wikigpt.decoding.load import load_model
    model, tok, _ = load_model(tiny_chat[0], "cpu")
    user, end, assistant = (tok.special[t] for t in ("<|user|>", "<|end|>", "<|assistant|>"))
    word = tok.encode("Hi")[0]
    full = [user] + [word] * (model.cfg.block_size - 2) + [end, assistant]  # block_size + 1 tokens
    short = [user, word, end, assistant, word, end]
    rows = full + short
    tokens = TokenRows(np.array(rows, dtype=np.uint16), np.zeros(len(rows), dtype=np.uint8),
                       np.array([0, len(full), len(rows)]))
    rate, tried = end_of_turn_rate(model, tok, tokens, n=5, max_new_tokens=4)
    assert tried == 1 and 0.0 <= rate <= 1.0
    assert end_of_turn_rate(model, tok, TokenRows(tokens.tokens[:len(full)], tokens.mask[:len(full)],
                                                  np.array([0, len(full)])), n=5)[1] == 0


# One `chat_sft.py --show_examples=1` run (no --data) that the two tests below read (a chat_sft.py
# start costs ~2 s): the masks it prints, and the dataset it says it takes
@pytest.fixture(scope="module")
def shown(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("shown")
    data = out / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Hi {i}", "response": "Hello."}) + "\n" for i in range(20)))
    r = run_cli("chat_sft.py", f"--init_from={tiny_ckpt}", f"--out_dir={out}", f"--sft_data={data}",
                "--show_examples=1", "--sft_val_fraction=0.2", *TINY)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_show_examples_prints_masks(shown):
    out, stdout = shown
    assert re.search(r"<\|endoftext\|><\|user\|>Hi \d+<\|end\|><\|assistant\|>\[\[Hello\.<\|end\|>\]\]",
                     stdout)
    assert not list(out.glob("*.pt"))  # it only shows, it does not train
    assert sorted(p.name for p in out.iterdir()) == ["d.jsonl"]  # and tokenizes in memory: no sft_tokens-*


def test_show_examples_leaves_an_out_dir_holding_a_run_alone(tiny_ckpt, tmp_path):
    """docs/chat.md's `--show_examples=1` after a run was refused ("holds a run already ...
    --overwrite=true"): showing rows claimed out_dir and tokenized into it. Here out_dir holds a
    run, then also a running one's lock, and is neither needed nor changed."""
    from wikigpt.run.lock import lock_folder, release
    out = tmp_path / "chat"
    out.mkdir()
    (out / "best.pt").write_bytes(Path(tiny_ckpt).read_bytes())
    show = ["chat_sft.py", f"--init_from={tiny_ckpt}", f"--out_dir={out}", "--show_examples=2",
            f"--sft_data={write_dialogues(tmp_path / 'd.jsonl', 20)}", "--sft_val_fraction=0.2", *TINY]
    for locked in (False, True):
        held = lock_folder(out) if locked else None
        try:
            r = run_cli(*show)
        finally:
            release(held)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("--- row ") == 2 and "[[" in r.stdout
        assert sorted(p.name for p in out.iterdir()) == ["best.pt"]


def test_sft_takes_the_base_checkpoints_dataset_unless_told_and_says_so(tiny_ckpt, tiny_data, tmp_path, shown):
    data = write_dialogues(tmp_path / "d.jsonl", 20)
    common = [f"--init_from={tiny_ckpt}", f"--out_dir={tmp_path / 'o'}", f"--sft_data={data}", "--show_examples=1", *TINY]
    assert shown[1].splitlines()[0].startswith(f"data: {tiny_data} (the dataset {tiny_ckpt} learned from")
    r = run_cli("chat_sft.py", *common, f"--data={tmp_path / 'nope'}", "--grounded_qa=1")
    assert r.returncode == 2 and f"{tmp_path / 'nope'}: no such folder" in r.stderr  # not "an older prepare_wiki.py"
    assert "older prepare_wiki.py" not in r.stderr and "Traceback" not in r.stderr
    # a new run inside the dataset it reads (its base's: prepare_wiki.py and retrieve.py rebuild that folder whole),
    # checked once that dataset is known (chat_sft.py's default --data was checked before)
    r = run_cli("chat_sft.py", f"--init_from={tiny_ckpt}", f"--out_dir={tiny_data / 'chat'}", f"--sft_data={data}", *TINY)
    assert r.returncode == 2 and f"out_dir {tiny_data / 'chat'} is inside the dataset folder {tiny_data}" in r.stderr
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tiny_data / 'runs'}", *TINY)
    assert r.returncode == 2 and "is inside the dataset folder" in r.stderr
    assert not (tiny_data / "chat").exists() and not (tiny_data / "runs").exists()  # nothing left in it


def test_a_chat_sft_run_resumes_with_its_own_command_whatever_data_wiki_holds(tiny_ckpt, tiny_data, tmp_path):
    """chat_sft.py's dataset is its base's unless given: the resume compared the default data/wiki
    (here another dataset, as prepare_wiki.py's plain run leaves one) with the run's, and refused."""
    import shutil

    here = tmp_path / "cwd"
    other = shutil.copytree(tiny_data, here / "data" / "wiki")
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps(meta | {"options": "another dataset"}))  # what it holds differs
    data = write_dialogues(tmp_path / "d.jsonl", 20)
    command = [ROOT / "chat_sft.py", f"--init_from={tiny_ckpt}", f"--out_dir={tmp_path / 'o'}", f"--sft_data={data}",
               "--max_steps=4", "--eval_interval=2", "--eot_check=0", *TINY]
    first = run_cli(*command, "--stop_after=2", cwd=here)
    assert first.returncode == 0, first.stderr
    r = run_cli(*command, "--resume=auto", cwd=here)
    assert r.returncode == 0 and "resuming" in r.stdout and "done (max_steps) at step 4" in r.stdout, r.stderr


def test_one_shot_reply(tiny_chat):
    r = run_cli("chat.py", "--ckpt", tiny_chat[0], "--prompt", "What is 3 plus 3?", "--seed", "0",
                "--max_new_tokens", "20")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "<|" not in r.stdout


def test_a_reply_ends_where_the_model_starts_the_next_turn_itself(tiny_chat):
    """Every special token ends a reply (Tokenizer.stops) and none is shown: before, a model that
    wrote a word and then "<|user|>" printed "<|user|>" and went on to --max_new_tokens."""
    import io
    from types import SimpleNamespace

    import torch

    from chat import reply
    from wikigpt.decoding.load import load_model

    model, tok, _ = load_model(tiny_chat[0], "cpu")
    word, V = tok.encode(" river")[-1], model.lm_head.weight.shape[0]

    class Head(torch.nn.Module):
        calls = 0

        def forward(self, x):  # (..., C) -> (..., V): the word after the prompt, then a new user turn
            logits = torch.zeros(*x.shape[:-1], V)
            logits[..., word if self.calls == 0 else tok.special["<|user|>"]] = 10.0
            self.calls += 1
            return logits
    model.lm_head = Head()
    args = SimpleNamespace(max_new_tokens=16, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                           seed=0, copy=None, compile=False)
    out = io.StringIO()
    text = reply(model, tok, [Message("user", "What is a river?")], args, out=out)
    assert text == tok.decode([word]).strip() and "<|" not in out.getvalue(), out.getvalue()


def test_repl_answers_two_turns_and_reset_clears_history(tiny_chat):
    script = "What is 3 plus 3?\nWhat is 3 plus 3?\n/reset\n/help\nWhat is 3 plus 3?\n/quit\n"
    r = run_cli("chat.py", "--ckpt", tiny_chat[0], "--temperature", "0", "--max_new_tokens", "16",
                input=script)
    assert r.returncode == 0, r.stderr
    replies = re.findall(r"^bot> (.*)$", r.stdout, re.M)
    assert len(replies) == 3 and "(conversation cleared)" in r.stdout
    assert "(unknown command /help: /reset starts over, /quit leaves)" in r.stdout  # not sent to the model
    assert replies[2] == replies[0]  # after /reset the model sees exactly the first question again


def test_history_is_trimmed_oldest_first_to_fit(tiny_data):
    from wikigpt.chat.chat_template import fit_history
    tok = load_dataset(tiny_data).tokenizer
    history = [Message("system", "Be kind.")]
    for i in range(10):
        history += [Message("user", f"question {i} " * 5), Message("assistant", f"answer {i} " * 5)]
    history.append(Message("user", "last question"))
    ids, kept = fit_history(tok, history, 120)
    assert len(ids) <= 120 and kept[0].role == "system" and kept[-1].content == "last question"
    assert len(kept) < len(history) and kept[1].role == "user"


def test_a_system_message_too_long_is_named_as_what_to_shorten(tiny_data):
    """A long --system (or a server's system message) was reported as 'the last message needs
    N tokens ... Shorten it' when the last message was 'hi'."""
    from wikigpt.chat.chat_template import ContextOverflow, fit_history
    tok = load_dataset(tiny_data).tokenizer
    with pytest.raises(ContextOverflow, match=r"^the system message alone needs \d+ tokens .* only 60 fit"):
        fit_history(tok, [Message("system", "be nice " * 100), Message("user", "hi")], 60)
    with pytest.raises(ContextOverflow, match=r"^the last message needs \d+ tokens with the chat template \(the system "
                                              r"message's \d+ included\), but only 60 fit"):
        fit_history(tok, [Message("system", "Be kind."), Message("user", "hi " * 100)], 60)
    with pytest.raises(ContextOverflow, match=r"^the last message needs \d+ tokens with the chat template, but only 60"):
        fit_history(tok, [Message("user", "hi " * 100)], 60)


# ----- checkpoints that cannot be chat-tuned

def test_sft_refuses_a_non_model_and_a_tokenizer_without_chat_tokens(tiny_ckpt, tmp_path):
    data = write_dialogues(tmp_path / "d.jsonl", 20)
    odd = load_checkpoint(tiny_ckpt)
    odd["kind"] = "optimizer-only"
    save_checkpoint(tmp_path / "odd.pt", odd)
    r = run_cli("chat_sft.py", f"--init_from={tmp_path / 'odd.pt'}", f"--sft_data={data}",
                f"--out_dir={tmp_path / 'o'}", *TINY)
    assert r.returncode == 2 and "is not a wikigpt model checkpoint" in r.stderr
    plain = load_checkpoint(tiny_ckpt)
    plain["tokenizer"] = dict(plain["tokenizer"], special_tokens=["<|endoftext|>"])
    save_checkpoint(tmp_path / "plain.pt", plain)
    for cmd in (["chat_sft.py", f"--init_from={tmp_path / 'plain.pt'}", f"--sft_data={data}",
                 f"--out_dir={tmp_path / 'o'}", *TINY],
                ["chat.py", "--ckpt", tmp_path / "plain.pt", "--prompt", "hi"]):
        r = run_cli(*cmd)
        assert r.returncode == 2 and "no chat tokens" in r.stderr and "Traceback" not in r.stderr


def test_sft_refuses_a_lora_checkpoint_before_writing_anything(tiny_ckpt, tmp_path):
    """A LoRA run's checkpoint as init_from was refused (train.py's build_model) only after the
    dialogues were tokenized into out_dir/sft_tokens-*."""
    lora = load_checkpoint(tiny_ckpt)
    lora["lora"] = {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": "attn", "token_rows": [], "base": "x.pt"}
    save_checkpoint(tmp_path / "lora.pt", lora)
    data = write_dialogues(tmp_path / "d.jsonl", 20)
    r = run_cli("chat_sft.py", f"--init_from={tmp_path / 'lora.pt'}", f"--sft_data={data}", f"--out_dir={tmp_path / 'o'}",
                *TINY)
    assert r.returncode == 2 and "holds LoRA adapters, not a whole model" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # made to be locked, removed as it stayed empty


def test_sft_bad_file_is_a_clear_error_and_nothing_is_written(tiny_ckpt, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    r = run_cli("chat_sft.py", f"--init_from={tiny_ckpt}", f"--sft_data={tmp_path / 'bad.jsonl'}",
                f"--out_dir={tmp_path / 'o'}", *TINY)
    assert r.returncode == 2 and "bad.jsonl, line 2: not valid JSON" in r.stderr
    assert not list((tmp_path / "o").glob("**/*.pt")) and not list((tmp_path / "o").glob("*tmp*"))


def test_builtin_dialogues_have_english_and_chinese():
    sources = {}
    for source, conv in sft_data.builtin_dialogues(""):
        sources.setdefault(source, []).append(conv)
    assert len(sources["chitchat"]) > 4000  # of 7,168: the rest hold a single turn, no reply
    zh = sources["chatterbot-chinese"]
    assert zh and any("你好" in m.content for c in zh for m in c)
    assert all(c[0].role == "user" and c[-1].role == "assistant" for convs in sources.values() for c in convs)


def test_what_does_not_fit_is_counted_not_hidden(tok):
    long_q = [Message("user", "river " * 200), Message("assistant", "Yes.")]
    long_a = [Message("user", "Why?"), Message("assistant", "because " * 200)]
    cuts = Counter()
    assert list(rows_of(tok, long_q, 40, cuts)) == []
    rows = list(rows_of(tok, long_a, 40, cuts))
    assert len(rows) == 1 and len(rows[0][0]) == 40 and any(rows[0][1])
    assert list(rows_of(tok, [Message("system", "be " * 100)] + long_a, 40, cuts)) == []
    assert cuts == {"questions longer than the context: exchange dropped": 1,
                    "answers cut to fit the context": 1,
                    "system turn longer than the context: conversation dropped": 1}


# chat_sft.py, its end-of-turn check telling whether a process group is still up while it runs
SFT_SAYING_ITS_GROUP = """
import chat_sft, torch.distributed
from wikigpt.cli import run_main
real = chat_sft.end_of_turn_rate
def checked_alone(*args, **kwargs):
    print("process group up during the checks:", torch.distributed.is_initialized())
    return real(*args, **kwargs)
chat_sft.end_of_turn_rate = checked_alone
run_main(chat_sft.main)
"""


# chat_sft.py with process groups that end a wait after 2 s, and a first process that tokenizes for 4
SFT_SLOW_TOKENIZING = """
import datetime, functools, os, time
import chat_sft, torch.distributed
from wikigpt.cli import run_main
torch.distributed.init_process_group = functools.partial(torch.distributed.init_process_group,
                                                         timeout=datetime.timedelta(seconds=2))
real = chat_sft.tokenize_dialogues
def slowly(*args):
    time.sleep(4 if os.environ["RANK"] == "0" else 0)
    return real(*args)
chat_sft.tokenize_dialogues = slowly
run_main(chat_sft.main)
"""


def test_the_other_processes_wait_for_process_0_to_tokenize_beyond_the_groups_timeout(tiny_ckpt, tmp_path):
    """Under NCCL, a wait in the training's process group ends after 10 minutes (its watchdog),
    and process 0 may tokenize a large --sft_data for longer: here a group that gives up after 2 s
    and 4 s of tokenizing (the wait was a barrier of that group: 'Timed out')."""
    script = tmp_path / "sft_slow.py"
    script.write_text(SFT_SLOW_TOKENIZING)
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                f"--init_from={tiny_ckpt}", f"--out_dir={tmp_path / 'chat'}",
                f"--sft_data={write_dialogues(tmp_path / 'd.jsonl', 20)}", "--max_steps=1", "--eval_interval=1",
                "--eot_check=0", *TINY, env={"PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 process(es) on cpu" in r.stdout  # both trained on the rows process 0 wrote


def test_sft_under_two_process_torchrun(tiny_ckpt, tmp_path):
    """Trained in step on two processes; process 0's checks after training run with the process
    group gone (the others waited for them in a barrier: NCCL ends such a wait after 10 minutes)."""
    data = write_dialogues(tmp_path / "d.jsonl", 60)
    script = tmp_path / "sft_saying_its_group.py"
    script.write_text(SFT_SAYING_ITS_GROUP)
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                f"--init_from={tiny_ckpt}", f"--out_dir={tmp_path / 'chat'}", f"--sft_data={data}",
                "--max_steps=6", "--eval_interval=3", "--grad_accum=2", "--sft_val_fraction=0.2",
                "--eot_check=2", *TINY, env={"PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "process group up during the checks: False" in r.stdout and "held-out prompts whose reply" in r.stdout
    assert "2 process(es) on cpu" in r.stdout
    assert "weights identical on all 2 processes: yes" in r.stdout
    assert load_checkpoint(tmp_path / "chat" / "best.pt")["kind"] == "sft"
