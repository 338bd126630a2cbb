"""
Chat fine-tuning (SFT): teach a pretrained Wiki-GPT to answer in turns.

    python chat_sft.py config/sft_demo.toml                        # built-in dialogues (en + zh)
    python chat_sft.py config/sft_demo.toml --sft_data=my.jsonl,alpaca.json:0.5
    python chat_sft.py config/sft_demo.toml --show_examples=2      # look at rows and loss masks
    torchrun --standalone --nproc_per_node=8 chat_sft.py config/sft_demo.toml --init_from=...

Dialogue files (JSONL, or a JSON array), format detected per record or forced by sft_format:
    openai    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
    sharegpt  {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}
    alpaca    {"instruction": "...", "input": "...", "output": "..."}
    pairs     {"prompt": "...", "response": "..."}
The model learns only the assistant's tokens and its end-of-turn token (wikigpt/chat/chat_template.py).
Training itself is train.py's loop; the dialogue batches come from wikigpt/chat/sft_data.py (files,
split) and wikigpt/chat/sft_rows.py (rows, packing).
"""
import json
import os
from datetime import timedelta
from pathlib import Path

import torch

from train import resolve_resume, resumable_checkpoint, starting_point, train
from wikigpt.knowledge import wikiqa
from wikigpt.batches import batch_plan
from wikigpt.checkpoint import refuse_unrunnable
from wikigpt.decoding.load import load_model
from wikigpt.cli import RUN_INTERRUPTED, UsageError, load_config, run_main
from wikigpt.chat.sft_config import SFTConfig
from wikigpt.run.dist import setup_dist
from wikigpt.run.resume import check_start, keep_checkpoint_shape
from wikigpt.run.durable import write_text
from wikigpt.decoding.generate import generate
from wikigpt.chat.chat_template import show_mask
from wikigpt.knowledge.retrieval import Index
from wikigpt.decoding.sampling import CHAT_DEFAULTS
from wikigpt.chat.sft_rows import SFTBatches, TokenRows, first_train_rows, tokenize_dialogues, val_set
from wikigpt.tokenizer import ASSISTANT, Tokenizer


def end_of_turn_rate(model, tok: Tokenizer, rows: TokenRows, n: int, max_new_tokens=128, seed=0) -> tuple[float, int]:
    """(share of held-out first questions whose sampled reply ends with <|end|> in time, how many
    were tried). A question that fills the context leaves no room for a reply: not tried."""
    ended, tried = 0, 0
    for i in range(len(rows)):
        if tried == n:
            break
        ids, _ = rows.row(i)
        ids = [int(t) for t in ids]
        if tok.special[ASSISTANT] not in ids:
            continue
        prompt = ids[:ids.index(tok.special[ASSISTANT]) + 1]  # up to the first answer
        if len(prompt) >= model.cfg.block_size:  # a row cut to fit the context: its answer starts at its end
            continue
        reply = list(generate(model, prompt, max_new_tokens, CHAT_DEFAULTS, tok.stops, seed + i))
        ended += reply[-1:] == [tok.end_of_turn]
        tried += 1
    return ended / max(tried, 1), tried


def chat_model(cfg: SFTConfig, start, say: bool) -> tuple[dict, Tokenizer]:
    """(checkpoint, tokenizer) of the model to fine-tune, refused here if it cannot be; cfg.data
    set to the dataset it learned from unless given (said when `say`)."""
    ckpt = start.checkpoint
    if ckpt is None:
        raise UsageError("chat_sft.py needs a pretrained model: set init_from (e.g. "
                         "--init_from=out/demo/best.pt) or resume=true.")
    if ckpt.get("kind") not in ("pretrain", "sft"):
        raise UsageError(f"{cfg.init_from} is not a wikigpt model checkpoint (kind {ckpt.get('kind')!r}).")
    if not start.resume:  # LoRA adapters or int8 weights: train.py's build_model would refuse them later
        refuse_unrunnable(ckpt, cfg.init_from, "init_from")
    learned_from = ckpt.get("train_config", {}).get("data", "")
    if "data" not in cfg.keys_set and learned_from:  # chat.py --rag and eval.py then find the same folder
        cfg.data = learned_from
        if say:
            print(f"data: {cfg.data} (the dataset {cfg.init_from or 'the run'} learned from; --data=FOLDER "
                  "to choose another)")
    tok = Tokenizer(ckpt["tokenizer"])
    if not tok.has_chat_tokens():
        raise UsageError(f"{cfg.init_from}: its tokenizer has no chat tokens (<|user|>, <|assistant|>, "
                         "<|end|>...). Pretrain on a dataset made by this version of prepare_wiki.py.")
    return ckpt, tok


def show_examples(cfg: SFTConfig):
    """Print the first show_examples train rows with their loss masks, tokenized in memory: out_dir
    is only read (the checkpoint a resume would start from), so it needs no --overwrite."""
    if int(os.environ.get("RANK", "0")):  # under torchrun: process 0 shows, the others would repeat it
        return
    resume = cfg.resume == "true" or (cfg.resume == "auto" and resumable_checkpoint(cfg) is not None)
    ckpt, tok = chat_model(cfg, starting_point(cfg, resume), say=True)
    rows = first_train_rows(cfg, tok, ckpt["model_config"]["block_size"], cfg.show_examples)
    if not rows:
        raise UsageError("no train conversations: give more dialogue data.")
    for i, (ids, mask) in enumerate(rows):
        print(f"--- row {i} ({sum(mask)} of {len(ids)} tokens learned, in [[...]]) ---")
        print(show_mask(tok, ids, mask))


def main(argv):
    cfg = load_config(SFTConfig, argv)
    if cfg.show_examples:  # only a look at the rows: no run starts, so out_dir is neither claimed nor written
        return show_examples(cfg)
    resume = resolve_resume(cfg)
    dist = setup_dist(cfg)
    start = starting_point(cfg, resume)
    keep_checkpoint_shape(cfg, start, dist.master)
    ckpt, tok = chat_model(cfg, start, dist.master)  # before tokenizing: a refused run writes nothing
    check_start(dist, start, cfg)  # with cfg.data as chat_model settled it (the checkpoint's unless given)
    block_size = ckpt["model_config"]["block_size"]
    # The others wait while process 0 tokenizes (the first run: minutes for a large --sft_data), in
    # a gloo group of their own: in one of NCCL's, its watchdog would end the wait after 10 minutes
    waiting = torch.distributed.new_group(backend="gloo", timeout=timedelta(days=1)) if dist.world > 1 else None
    if not dist.master:
        torch.distributed.barrier(group=waiting)
    folder = tokenize_dialogues(cfg, tok, block_size)  # then the folder is ready: read, not written
    if dist.master and dist.world > 1:
        torch.distributed.barrier(group=waiting)
    meta = json.loads((folder / "meta.json").read_text())
    train_rows, val_rows = TokenRows.open(folder, "train"), TokenRows.open(folder, "val")
    if dist.master:
        print(f"dialogues: {meta['train']['rows']:,} train rows ({meta['train']['supervised_tokens']:,} "
              f"supervised of {meta['train']['tokens']:,} tokens), {meta['val']['rows']:,} val rows; {folder}")
    micro, _ = batch_plan(cfg, block_size, dist.world)
    batches = SFTBatches(train_rows, block_size, micro, cfg.seed, dist.rank, dist.world, dist.device)
    summary = train(cfg, dist, tok, batches, val_set(val_rows, block_size, cfg.eval_tokens), "sft", start)
    if dist.world > 1:  # process 0 checks alone below: nobody waits for it in a collective, where
        torch.distributed.barrier()  # NCCL's watchdog would end the wait after 10 minutes
        torch.distributed.destroy_process_group()
    qa = cfg.grounded_qa and cfg.qa_eval
    if dist.master and (cfg.eot_check or qa):
        model, _, _ = load_model(Path(cfg.out_dir) / "best.pt", dist.device)  # once, for both checks
    if dist.master and cfg.eot_check:
        rate, tried = end_of_turn_rate(model, tok, val_rows, cfg.eot_check)
        print(f"held-out prompts whose reply ends with <|end|> within 128 tokens: {100 * rate:.0f}% "
              f"(best.pt, {tried} prompts)" if tried else "end-of-turn check: no held-out question "
              f"leaves room for a reply in the {block_size}-token context")
    if dist.master and qa:
        report = wikiqa.evaluate_qa(model, tok, cfg.data, Index.open(cfg.data), cfg.qa_eval, cfg.seed)
        print(wikiqa.format_report(report))
        write_text(Path(cfg.out_dir) / "qa_report.json", json.dumps(report, indent=2, ensure_ascii=False))
        summary["qa"] = report
    return summary


if __name__ == "__main__":
    run_main(main, RUN_INTERRUPTED)
