"""Keys and values a slot already holds, reused instead of prefilled again: the n choices of one
prompt (one prefill, copied), and a prompt that starts with what a slot holds (a chat's next turn:
the last prompt and reply), whatever joined, left or was cancelled in between (the engine itself:
test_engine.py; through a live server: test_serve.py)."""
import math
import random

import pytest
import torch
from test_engine import GREEDY, tiny_model

import wikigpt.decoding.engine as engine_module
from wikigpt.decoding.engine import Engine, Request
from wikigpt.decoding.generate import generate
from wikigpt.decoding.sampling import SamplingParams


def counted_prefills(monkeypatch, model) -> list:
    """The number of tokens of each prefill (a forward into a slot) the model runs from now on."""
    runs, real = [], model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda idx, cache=None: (
        runs.append(idx.size(1)) if getattr(cache, "slot", None) is not None else None, real(idx, cache))[1])
    return runs


def test_the_choices_of_one_prompt_share_its_prefill_and_draw_their_own_tokens(monkeypatch):
    """n choices of one prompt: one prefill, then copies of its keys and values (8 choices of a
    950-token prompt were 8 prefills); each choice gets the tokens a prefill of its own gives."""
    model = tiny_model()
    prompt, other = list(range(1, 41)), list(range(100, 120))

    def run(share: bool):
        engine, prefills = Engine(model, n_slots=8, compile=False), counted_prefills(monkeypatch, model)
        if not share:
            monkeypatch.setattr(engine, "shared_prefill", lambda req, slot: None)
        reqs = [Request(prompt, 12, SamplingParams(temperature=1.0), seed=i) for i in range(4)]
        reqs.insert(2, Request(other, 12, SamplingParams(temperature=1.0), seed=9))  # another prompt between
        for r in reqs:
            engine.add(r)
        while engine.active:
            engine.step()
        counted = list(prefills)
        engine.add(Request(other[::-1], 2))  # into slot 0, which held `prompt`: slot 0 holds it no more;
        engine.step()  # a step's padding rows write only the last position, which no prompt reaches
        assert engine.prefilled[tuple(prompt)][0] == ({1, 3, 4} if share else {4})  # (unshared: the last prefill's)
        assert tuple(other[::-1]) in engine.prefilled
        return [r.tokens for r in reqs], counted
    (shared, prefills), (own, own_prefills) = run(True), run(False)
    assert prefills == [40, 20] and own_prefills == [40, 40, 20, 40, 40]
    assert shared == own  # the copied keys and values are the prefill's own
    assert len({tuple(t) for t in shared}) == 5  # each choice drew its own tokens


def test_a_prompt_stays_shared_while_any_slot_holds_it_and_after_its_holders_leave_until_their_slots_are_taken(
        monkeypatch):
    model = tiny_model()
    prefills = counted_prefills(monkeypatch, model)
    engine, prompt = Engine(model, n_slots=4, compile=False), list(range(1, 31))
    first, second = Request(prompt, 2, seed=0), Request(prompt, 12, seed=1)
    engine.add(first), engine.add(second)
    while not first.finished:
        engine.step()
    third = Request(prompt, 2, seed=2)  # the slot that prefilled it has left; the copy in slot 1 lends it
    engine.add(third)
    assert prefills == [30] and third.slot == 0
    for k in engine.cache.k:
        assert torch.equal(k[third.slot, :, :30], k[second.slot, :, :30])
    own = [k[second.slot, :, :30].clone() for k in engine.cache.k]  # the prompt's keys, by its prefill
    while engine.active:
        engine.step()
    lone = Request(prompt, 1, seed=3)  # every slot has left, their first keys are still there: a copy
    engine.add(lone)
    assert lone.finished  # it ended at its first token, so its slot left too...
    last = Request(prompt, 1, seed=4)
    engine.add(last)  # ... and the next choice copies its keys, no step having run
    assert prefills == [30] and all(torch.equal(k[last.slot, :, :30], o) for k, o in zip(engine.cache.k, own))
    engine.add(Request([7, 8, 9], 5))  # into slot 0
    engine.step()  # a step without the other slots that hold it: their padding rows leave its keys as they are
    again = Request(prompt, 1, seed=5)
    engine.add(again)
    assert prefills == [30, 3] and all(torch.equal(k[again.slot, :, :30], o) for k, o in zip(engine.cache.k, own))
    while engine.active:
        engine.step()
    for i in range(4):  # every slot taken by another prompt: nothing holds it any more
        engine.add(Request([10 + i, 11, 12], 5))
    engine.step()
    while engine.active:
        engine.step()
    engine.add(Request(prompt, 1, seed=6))
    assert prefills == [30, 3, 3, 3, 3, 3, 30]


def first_logits(monkeypatch):
    """{request: the logits its first token was drawn from}, for the engines made after this call."""
    seen, real_pick, current = {}, engine_module.pick, []
    monkeypatch.setattr(engine_module, "pick", lambda state, model, rows, logits, k_max: (
        current.append(logits.clone()), real_pick(state, model, rows, logits, k_max))[1])
    real_emitted = Engine.emitted
    monkeypatch.setattr(Engine, "emitted", lambda self, reqs, tokens: (
        [seen.setdefault(r, current[-1]) for r in reqs if not r.tokens], real_emitted(self, reqs, tokens))[1])
    return seen


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_a_chats_next_turn_prefills_only_what_its_slot_does_not_hold(monkeypatch, arch):
    """The next turn's prompt is the last prompt, the reply and the new message: the slot it goes
    back to holds the keys and values of all but the reply's newest token, so only the rest is
    prefilled; its first logits agree with a whole prefill's within ROW_LOGIT_TOLERANCE and its
    greedy reply is the same. A prompt that starts like a decoding stream's copies that part."""
    model, firsts = tiny_model(arch), first_logits(monkeypatch)
    runs = counted_prefills(monkeypatch, model)
    engine, other = Engine(model, n_slots=4, compile=False), Request([9, 8, 7], 30, GREEDY)
    engine.add(Request([1, 2], 30, GREEDY))  # slot 0, then the chat's first turn in slot 1
    first = Request(list(range(20, 40)), 6, GREEDY)
    engine.add(first), engine.add(other)
    while not first.finished:
        engine.step()
    second = Request(first.prompt + first.tokens + [50, 51, 52], 6, GREEDY)
    runs.clear()
    engine.join(second)
    assert second.slot == first.slot and second.filled == 20 + 6 - 1  # its newest token's keys: never written
    branch = Request(other.prompt + other.tokens[:3] + [60], 4, GREEDY)  # starts like the stream in slot 2
    engine.join(branch)
    assert branch.slot == 3 and branch.filled == 3 + 3
    engine.fill()
    assert runs == [4, 1]
    while engine.active:
        engine.step()
    for req in (second, branch):
        alone, runs[:] = Engine(model, n_slots=1, compile=False), []
        again = Request(list(req.prompt), req.max_new_tokens, GREEDY)
        alone.add(again)
        while alone.active:
            alone.step()
        assert runs == [len(req.prompt)]
        torch.testing.assert_close(firsts[req], firsts[again], rtol=0, atol=engine_module.ROW_LOGIT_TOLERANCE)
        assert req.tokens == again.tokens


def test_prompts_that_share_their_starts_joining_leaving_and_cancelled_in_any_order_get_their_own_logits(
        monkeypatch):
    """Whatever the slots held when a request joined (prompts cut short by a cancel, replies, a
    slot's last position written by padding rows), the keys it reuses are its prompt's: its first
    logits agree with a whole prefill's within ROW_LOGIT_TOLERANCE. 60 requests over 4 slots."""
    model, firsts, rng = tiny_model(), first_logits(monkeypatch), random.Random(0)
    engine, done, reused = Engine(model, n_slots=4, compile=False), [], 0
    stems = [[rng.randrange(1, 300) for _ in range(20)] for _ in range(3)]
    for n in range(60):
        if engine.free_slots:
            base = done[-1].prompt + done[-1].tokens if done and rng.random() < 0.5 else rng.choice(stems)
            req = Request(base[:rng.randrange(1, min(len(base), 55))] + [rng.randrange(1, 300)], rng.randrange(1, 9),
                          SamplingParams(temperature=1.0), seed=n)
            engine.join(req)
            reused += req.filled > 0
            done.append(req)
        if rng.random() < 0.2 and engine.by_slot:
            rng.choice(list(engine.by_slot.values())).cancelled = True
        engine.fill(rng.choice([4, 16, math.inf]))
        engine.step()
    while engine.active:
        engine.fill(), engine.step()
    assert reused > 20
    checked = 0
    for req in (r for r in done if r in firsts):
        alone = Engine(model, n_slots=1, compile=False)
        again = Request(list(req.prompt), 1)
        alone.add(again)
        torch.testing.assert_close(firsts[req], firsts[again], rtol=0, atol=engine_module.ROW_LOGIT_TOLERANCE)
        checked += 1
    assert checked > 40


def test_a_chats_turns_through_generate_prefill_only_their_new_tokens(monkeypatch):
    model = tiny_model()
    runs = counted_prefills(monkeypatch, model)
    prompt = list(range(10, 30))
    reply = list(generate(model, prompt, 8, GREEDY, reuse=True))
    turn = prompt + reply + [40, 41, 42]
    again = list(generate(model, turn, 8, GREEDY, reuse=True))
    assert runs == [20, 4]  # the reply's last token and the new message
    assert again == list(model.generate(turn, 8, temperature=0))


def test_conversations_taking_turns_each_reuse_their_own_last_turn_and_decode_in_the_lowest_slot():
    """Conversations that come back in turns on an idle server: each request takes the lowest slot
    (the decode batch stays narrow), and what the slot's last conversation left there is copied
    to a free slot first, so each next turn finds its own prompt and reply."""
    model = tiny_model()
    engine, held = Engine(model, n_slots=8, compile=False), {}
    for turn in range(3):
        for talk in range(4):  # 4 conversations, one turn each in turn, sharing their first tokens
            prompt = held.get(talk, [1, 2]) + [100 + 10 * talk + turn, 7]
            req = Request(prompt, 5, GREEDY)
            engine.add(req)
            assert req.slot == 0
            assert req.reused == (len(held[talk]) - 1 if talk in held else 2 if turn or talk else 0)
            while engine.active:
                engine.step()
            fresh = Engine(model, n_slots=1, compile=False)
            alone = Request(prompt, 5, GREEDY)
            fresh.add(alone)
            while fresh.active:
                fresh.step()
            assert req.tokens == alone.tokens  # the keys it reused were its own
            held[talk] = prompt + req.tokens


def test_the_choices_of_a_prompt_joined_together_prefill_it_once_after_what_a_slot_holds(monkeypatch):
    """A server joins a request's n choices before it prefills them: the first reuses what a slot
    holds and prefills the rest, in chunks within the budget; the others copy it."""
    model = tiny_model()
    runs = counted_prefills(monkeypatch, model)
    engine = Engine(model, n_slots=8, compile=False)
    engine.add(Request([1, 2, 3, 4], 1))  # leaves [1, 2, 3, 4] in slot 0
    prompt = [1, 2, 3] + list(range(50, 90))
    choices = [Request(prompt, 3, SamplingParams(temperature=1.0), seed=i) for i in range(6)]
    for c in choices:
        engine.join(c)
    runs.clear()
    while any(not c.tokens for c in choices):
        engine.fill(16)
        engine.step()
    assert runs == [16, 16, 8]  # 40 tokens after the 3 reused, once
    assert [c.reused for c in choices] == [3] + [len(prompt)] * 5
