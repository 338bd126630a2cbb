"""Replies are valid UTF-8 whatever a byte-level BPE model emits: the engine follows each reply
with a UTF-8 state (the tokenizer's table of which token may come next), across sample.py's windows
and after a prompt that ends inside a character (the server and chat.py decode through it)."""
from test_engine import tiny_model

from wikigpt.decoding.generate import generate
from wikigpt.decoding.sampling import SamplingParams


def test_replies_are_always_valid_utf8_with_the_tokenizer(tiny_data):
    from wikigpt.prep.data import load_dataset

    tok = load_dataset(tiny_data).tokenizer  # byte-level: any byte sequence is one step away
    model = tiny_model()  # random weights: they pick bytes with no regard for UTF-8
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0)
    prompt = tok.encode("你好，世界")

    def text(seed, constrained):
        ids = list(generate(model, prompt, 40, params, seed=seed, tok=tok if constrained else None))
        return tok.decode(ids).rstrip("\ufffd")  # a reply cut by max_tokens may end inside a character
    assert any("\ufffd" in text(seed, False) for seed in range(10))  # unconstrained: broken characters
    assert not any("\ufffd" in text(seed, True) for seed in range(10))


def test_text_past_the_context_stays_valid_utf8_where_a_window_ends_inside_a_character(tiny_data):
    """sample.py goes on past the context in windows, each a new request: one that started as if
    its prompt ended between characters broke the character the last window had begun (a review
    found U+FFFD in a long sample). Here windows of 8 tokens over random weights, and a request
    whose prompt ends inside a character."""
    from sample import continuation
    from wikigpt.prep.data import load_dataset

    tok = load_dataset(tiny_data).tokenizer
    model = tiny_model()
    model.cfg.block_size = 8
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0)
    prompt = tok.encode("你好")
    for seed in range(6):
        ids = list(continuation(model, prompt, 60, params, seed=seed, tok=tok))
        assert "\ufffd" not in tok.decode(prompt + ids).rstrip("\ufffd"), seed
    byte = {tok.enc.decode_single_token_bytes(i): i for i in range(tok.n_vocab)}
    cut = prompt + [byte[b"\xe4"]]  # the first byte of a three-byte character
    assert tok.utf8_state_after(cut) == 2 and tok.utf8_state_after(prompt) == 0
    for seed in range(6):
        ids = list(generate(model, cut, 6, params, seed=seed, tok=tok, utf8_state=tok.utf8_state_after(cut)))
        assert "\ufffd" not in tok.decode(cut + ids).rstrip("\ufffd"), seed


def test_the_utf8_table_follows_real_text_and_refuses_broken_bytes(tiny_data):
    from wikigpt.prep.data import load_dataset

    tok = load_dataset(tiny_data).tokenizer  # bpe:300: every byte is a token
    table = tok.utf8_table(320)
    state = 0
    for i in tok.encode("Grüße aus 北京 🎉 नमस्ते"):
        state = int(table[state, i])
        assert state >= 0
    assert state == 0
    byte = {tok.enc.decode_single_token_bytes(i): i for i in range(tok.n_vocab)}
    assert table[0, byte[b"\x80"]] == -1 and table[1, byte[b"\x80"]] == 0  # continuation: only when awaited
    assert table[2, byte[b"a"]] == -1  # a new character may not start inside one
    assert table[0, byte[b"\xe0"]] == 4 and table[4, byte[b"\x91"]] == -1  # overlong E0 91
    assert table[0, byte[b"\xc0"]] == -1 and table[0, byte[b"\xff"]] == -1  # never UTF-8
