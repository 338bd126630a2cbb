"""The two decode paths: model.generate (the model's own sampler, for reading; sample.py
--no_cache) and the engine (what serves, chats and samples): the same greedy tokens, one
sliding window, and sample.py streaming token by token."""
import torch

from conftest import run_cli
from model import GPT, GPTConfig, context_window
from sample import continuation
from wikigpt.decoding.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)


def tiny(block_size=32):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, block_size=block_size, n_layer=2, n_head=2, n_embd=32, arch="gpt2")).eval()


def test_the_window_keeps_everything_that_fits_then_the_last_three_quarters():
    assert context_window(list(range(31)), 32) == list(range(31))
    assert context_window(list(range(32)), 32) == list(range(8, 32))
    assert context_window(list(range(100)), 32) == list(range(76, 100))


def test_greedy_generate_gives_the_engines_tokens_past_the_context():
    model = tiny()
    prompt = [5, 17, 42, 9]
    engine = list(continuation(model, prompt, 80, GREEDY))  # 80 tokens: the window slides 3 times
    assert engine == list(model.generate(prompt, 80, temperature=0.0))
    assert engine == list(model.generate(prompt, 80, temperature=0.0, use_cache=False))
    assert len(set(engine)) > 1  # (a model that says one token over and over would prove nothing)


def test_greedy_generate_gives_the_engines_tokens_from_a_prompt_longer_than_the_context():
    model = tiny()
    prompt = [(7 * i) % 300 for i in range(50)]
    assert list(continuation(model, prompt, 30, GREEDY)) == list(model.generate(prompt, 30, temperature=0.0))


def test_both_paths_stop_after_a_stop_token():
    model = tiny()
    first = list(continuation(model, [1, 2, 3], 40, GREEDY))
    stop = first[10]
    expected = first[:first.index(stop) + 1]
    assert list(continuation(model, [1, 2, 3], 40, GREEDY, {stop})) == expected
    assert list(model.generate([1, 2, 3], 40, temperature=0.0, stop_tokens={stop})) == expected


def test_continuation_yields_each_token_before_its_window_is_finished():
    model = tiny()
    forwards = []
    hidden_states = model.hidden_states
    model.hidden_states = lambda *a, **kw: forwards.append(1) or hidden_states(*a, **kw)
    tokens = continuation(model, [1, 2, 3], 20, SamplingParams(), seed=0)
    next(tokens)
    assert len(forwards) == 1  # the prompt's prefill alone: the first token came out of it
    next(tokens)
    assert len(forwards) == 2
    tokens.close()


def test_sample_py_says_how_much_of_a_long_prompt_it_keeps(tiny_ckpt):
    prompt = "The river flows through the valley. " * 20  # well over the tiny model's 32 tokens
    for extra in ([], ["--no_cache"]):
        r = run_cli("sample.py", "--ckpt", tiny_ckpt, "--prompt", prompt, "--max_new_tokens", "4", "--seed", "1",
                    *extra)
        assert r.returncode == 0, r.stderr
        assert "; keeping its last 24)" in r.stderr, r.stderr  # 3/4 of 32: what is really kept
        assert r.stdout.startswith(prompt)


def test_sample_py_greedy_is_the_same_with_and_without_the_engine(tiny_ckpt):
    args = ["sample.py", "--ckpt", tiny_ckpt, "--prompt", "Article 3", "--max_new_tokens", "60",
            "--temperature", "0", "--repetition_penalty", "1"]
    engine, plain = run_cli(*args), run_cli(*args, "--no_cache")
    assert engine.returncode == 0 and plain.returncode == 0, engine.stderr + plain.stderr
    assert engine.stdout == plain.stdout


def test_sample_py_no_cache_refuses_the_knobs_it_would_ignore(tiny_ckpt):
    """--no_cache samples with temperature and top_k only: a top_p or penalty set to something
    else is refused in one line, not silently dropped; defaults and 'off' values still run."""
    args = ["sample.py", "--ckpt", tiny_ckpt, "--prompt", "Article 3", "--max_new_tokens", "4", "--no_cache"]
    for knobs, named in ((["--top_p", "0.5"], "--top_p 0.5"), (["--repetition_penalty", "1.3"], "--repetition_penalty 1.3"),
                         (["--presence_penalty", "0.5", "--frequency_penalty", "-1"],
                          "--presence_penalty 0.5, --frequency_penalty -1")):
        r = run_cli(*args, *knobs)
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        assert r.stderr.strip() == f"error: {named}: --no_cache applies only temperature and top_k (drop --no_cache " \
                                   "to use them).", r.stderr
    r = run_cli(*args, "--temperature", "0.5", "--top_k", "5", "--top_p", "0.95", "--repetition_penalty", "1",
                "--presence_penalty", "0")  # applied, the default, off: nothing ignored
    assert r.returncode == 0, r.stderr


def test_no_command_imports_the_compiler_until_it_compiles():
    """torch._dynamo takes ~1.2 s to import: every sample.py, chat.py, serve.py and eval.py
    process paid it at start (a module-level read of its exception types), compiled or not."""
    commands = ("sample", "chat", "serve", "eval", "train", "chat_sft", "retrieve", "export", "convert", "prune")
    r = run_cli("-c", f"import sys; import {', '.join(commands)}; print('torch._dynamo' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    from wikigpt.decoding.decode import compile_error
    assert compile_error(torch._dynamo.exc.TorchDynamoException("x")) and not compile_error(RuntimeError("x"))
