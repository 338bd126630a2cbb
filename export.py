"""
Export a checkpoint as a Hugging Face model folder that stock `transformers` loads (no remote
code) and that computes exactly what our model computes.

    python export.py --ckpt out/chat/best.pt --out hf/wikigpt-chat
    python export.py --ckpt out/demo/best.pt --out hf/wikigpt-base --dtype bfloat16

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained("hf/wikigpt-chat")
    model = AutoModelForCausalLM.from_pretrained("hf/wikigpt-chat")

Which architecture each preset becomes (weights renamed, nothing approximated):
  arch=gpt2   (GELU MLP)    -> GPT2LMHeadModel: Conv1D weights are our Linear weights transposed,
                               exact GELU ("gelu", not GPT-2's tanh "gelu_new"), tied head
  arch=modern (SwiGLU MLP)  -> Qwen3ForCausalLM: RMSNorm, QK-norm before RoPE (weights of ones:
                               ours has none), rotate-half RoPE, SwiGLU, untied head
A modern model with the ReLU^2 MLP has no exact transformers counterpart: refused.

    python export.py --ckpt out/chat/best.pt --out hf/wikigpt-chat.gguf --format gguf

writes one GGUF file for llama.cpp (and so Ollama, LM Studio): llama.cpp's "qwen3" architecture
for the modern preset. Its GPT-2 architecture uses the tanh GELU, ours the exact one: refused.
The vocabulary is cut back from the padded size to the tokenizer's, so no id exists that our
sampler could never pick.
"""
import argparse
import errno
import json
import os
import secrets
import shutil
from pathlib import Path

import torch

from wikigpt.checkpoint import DTYPES, load_checkpoint, model_from_checkpoint
from wikigpt.cli import UsageError, run_main
from wikigpt.run.output_paths import output_path_problem
from wikigpt.run.durable import dead_writers_temps, fsync_path, link_new, replace_durably
from wikigpt.prep.workdir import publish
from wikigpt.adapt.hf_tokenizer import chat_template, tokenizer_json
from wikigpt.decoding.sampling import CHAT_DEFAULTS
from wikigpt.tokenizer import DOC_SEP, END_OF_TURN
from model import RMS_EPS

ROPE_THETA = 10000.0  # model.rotary_tables' base


def gpt2_weights(model, n_vocab: int) -> tuple[dict, dict]:
    c = model.cfg
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": n_vocab,
              "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
              "n_inner": c.mlp_width, "activation_function": "gelu", "layer_norm_epsilon": 1e-5,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True}
    w = {"transformer.wte.weight": model.wte.weight[:n_vocab], "transformer.wpe.weight": model.wpe.weight,
         "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias}
    for i, b in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        for ours, theirs in ((b.ln_1, "ln_1"), (b.ln_2, "ln_2")):
            w[p + theirs + ".weight"], w[p + theirs + ".bias"] = ours.weight, ours.bias
        for ours, theirs in ((b.attn.c_attn, "attn.c_attn"), (b.attn.c_proj, "attn.c_proj"),
                             (b.mlp.c_fc, "mlp.c_fc"), (b.mlp.c_proj, "mlp.c_proj")):
            w[p + theirs + ".weight"] = ours.weight.t()  # Conv1D keeps (in, out)
            w[p + theirs + ".bias"] = ours.bias
    return config, w


def qwen3_weights(model, n_vocab: int) -> tuple[dict, dict]:
    c = model.cfg
    D, hidden = c.head_size, c.mlp_width  # a pruned model's (prune.py) as much as a trained one's
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": n_vocab,
              "hidden_size": c.n_embd, "intermediate_size": hidden, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "num_key_value_heads": c.n_head, "head_dim": D,
              "hidden_act": "silu", "max_position_embeddings": c.block_size,
              "rms_norm_eps": RMS_EPS,
              "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA}, "rope_theta": ROPE_THETA,
              "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": False,
              "use_sliding_window": False}
    w = {"model.embed_tokens.weight": model.wte.weight[:n_vocab], "model.norm.weight": model.ln_f.weight,
         "lm_head.weight": model.lm_head.weight[:n_vocab]}
    for i, b in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = b.attn.c_attn.weight.split(c.n_head * D, dim=0)  # each (H*D, C)
        gate, up = b.mlp.c_fc.weight.split(hidden, dim=0)  # MLP.forward: h.chunk(2) -> gate, up
        w.update({p + "input_layernorm.weight": b.ln_1.weight, p + "post_attention_layernorm.weight": b.ln_2.weight,
                  p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                  p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": b.attn.c_proj.weight,
                  p + "self_attn.q_norm.weight": torch.ones(D), p + "self_attn.k_norm.weight": torch.ones(D),
                  p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                  p + "mlp.down_proj.weight": b.mlp.c_proj.weight})
    return config, w


def hf_weights(model, n_vocab: int, path: str) -> tuple[dict, dict]:
    c = model.cfg
    if c.arch == "gpt2" and c.mlp == "gelu":
        if c.n_head * c.head_size != c.n_embd:
            raise UsageError(f"{path}: this gpt2 model's heads were pruned ({c.n_head} heads of {c.head_size} "
                             f"= {c.n_head * c.head_size} wide, the model {c.n_embd}); transformers' GPT-2 "
                             "needs heads x head size = width, so it cannot hold it exactly. It still runs "
                             "here; to export, prune only layers and MLP width (prune.py --keep_heads unset).")
        return gpt2_weights(model, n_vocab)
    if c.arch == "modern" and c.mlp == "swiglu":
        return qwen3_weights(model, n_vocab)
    raise UsageError(f"{path}: a {c.arch} model with the {c.mlp} MLP has no exact transformers "
                     "architecture (gpt2 exports with its GELU MLP as GPT2LMHeadModel, modern with "
                     "the SwiGLU MLP as Qwen3ForCausalLM). It still loads and runs here; to export, "
                     "train with --mlp=swiglu (the modern default) or --arch=gpt2.")


# ----------------------------------------------------------------------------------------
# GGUF: the Qwen3 tensors under llama.cpp's names

GGUF_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
              "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
# llama.cpp's pre-tokenizers (how text is split before BPE) by our split pattern: GPT-2's, and
# the one our trained BPE uses, whose splits are llama-3's ("llama-bpe"; tests/test_export.py
# checks that the two patterns split text the same)
GGUF_PRE = {"gpt2": "gpt-2", "bpe": "llama-bpe"}


def gguf_name(hf_name: str) -> str:
    base = hf_name.removesuffix(".weight")
    if base in GGUF_NAMES:
        return GGUF_NAMES[base] + ".weight"
    layer, rest = base.removeprefix("model.layers.").split(".", 1)
    return f"blk.{layer}.{GGUF_NAMES[rest]}.weight"


def write_gguf(path: Path, ckpt: dict, tok, config: dict, weights: dict, dtype: str):
    import gguf
    import numpy as np

    from wikigpt.adapt.hf_tokenizer import vocab_and_merges

    if config["model_type"] != "qwen3":
        raise UsageError("--format gguf: llama.cpp's gpt2 architecture computes GELU with the tanh "
                         "approximation, this model the exact GELU, so the file would be a subtly "
                         "different model. Export a modern-preset model, or use the transformers folder.")
    if dtype not in ("float32", "float16"):
        raise UsageError("--format gguf takes --dtype float32 or float16.")
    chat = ckpt["kind"] == "sft"
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_name("wikigpt chat" if chat else "wikigpt base")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "float32" else gguf.LlamaFileType.MOSTLY_F16)
    vocab, merges = vocab_and_merges(tok)
    specials = sorted(tok.special.items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")  # llama.cpp's name for a byte-level BPE
    w.add_tokenizer_pre(GGUF_PRE[tok.spec["kind"]])
    w.add_token_list(vocab + [s for s, _ in specials])
    w.add_token_types([gguf.TokenType.NORMAL] * len(vocab) + [gguf.TokenType.CONTROL] * len(specials))
    w.add_token_merges([" ".join(m) for m in merges])
    w.add_bos_token_id(tok.doc_sep)
    w.add_eos_token_id(config["eos_token_id"])
    if chat:  # llama.cpp ends a chat turn at its EOT token
        w.add_eot_token_id(tok.end_of_turn)
    w.add_add_bos_token(not chat)  # base models read documents as "<|endoftext|>text"; chat turns start bare
    if chat:
        w.add_chat_template(chat_template())
    for name, t in weights.items():
        keep32 = t.dim() == 1  # norms stay float32, as llama.cpp's own converter keeps them
        data = t.detach().to(torch.float32 if keep32 or dtype == "float32" else torch.float16).numpy()
        w.add_tensor(gguf_name(name), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def model_card(ckpt: dict, model, tok, hf_arch: str, dtype: str) -> str:
    tc, kind = ckpt.get("train_config", {}), ckpt["kind"]
    val = ckpt.get("val") or {}
    chat = kind == "sft"
    c = model.cfg
    specials = ", ".join(f"`{s}`" for s in tok.special).replace("|", "\\|")  # a | would end the table cell
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [wikigpt]", "---", "",
        f"# {'wikigpt chat model' if chat else 'wikigpt base model (Wiki-GPT)'}", "",
        f"A {model.n_params() / 1e6:.1f}M-parameter GPT trained from scratch with "
        "wikigpt on Wikipedia text"
        + (" and then fine-tuned on dialogues (chat SFT)." if chat else "."), "",
        "| | |", "|---|---|",
        f"| architecture | {hf_arch} ({c.arch} preset, {c.n_layer} layers, width {c.n_embd}, {c.n_head} heads, {c.mlp} MLP) |",
        f"| context | {c.block_size} tokens |",
        f"| tokenizer | {tok.name} ({tok.n_vocab} ids, byte-level BPE; special tokens {specials}) |",
        f"| data | {tc.get('data', '?')}" + (f" + {tc.get('sft_data') or 'built-in dialogues (chitchat, chatterbot en/zh)'}" if chat else "") + " |",
        f"| training | {ckpt.get('step')} steps{', from ' + tc['init_from'] if chat and tc.get('init_from') else ''} |",
        f"| val loss | {val.get('loss', float('nan')):.4f}" + ("" if chat else f" (bits per byte {val.get('bpb', float('nan')):.4f})") + " |",
        f"| weights | {dtype} |", "",
        "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)"]
    if chat:
        lines += ['ids = tok.apply_chat_template([{"role": "user", "content": "What is a river?"}],',
                  '                              add_generation_prompt=True, return_tensors="pt", return_dict=False)',
                  "out = model.generate(ids, max_new_tokens=64)  # stops at <|end|> (or any special token)",
                  "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))"]
    else:
        lines += ['ids = tok("<|endoftext|>Aristotle was", return_tensors="pt").input_ids',
                  "print(tok.decode(model.generate(ids, max_new_tokens=60, do_sample=True)[0]))"]
    lines += ["```", "", "## Limits", "",
              "A small model trained briefly: it writes fluent-looking text but is often wrong; do not "
              "rely on what it says. It has seen only the data above.",
              "Chat turns are `<|role|>content<|end|>`; literal special-token text inside a message "
              "is encoded as the special token here, but as plain text by wikigpt itself."]
    return "\n".join(lines) + "\n"


# What an export folder holds, and what says export.py wrote it: --overwrite replaces only that
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "README.md"}
CARD_TAG = "tags: [wikigpt]"  # in the model card's front matter (model_card)
GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file
TMP_SUFFIX = ".tmp-export"  # a run's temporary file or folder beside --out: .NAME.PID-RANDOM.tmp-export


def not_an_export(out: Path) -> str | None:
    """None when `out` is an empty folder or something export.py wrote (a folder of exactly an
    export's files with our model card, or a GGUF file); else what is there, in words."""
    if out.is_file():  # a regular file: check_out refused links and pipes (opening a pipe blocks)
        with out.open("rb") as f:
            magic = f.read(len(GGUF_MAGIC))
        return None if magic == GGUF_MAGIC else "a file export.py did not write (not a GGUF file)"
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if n not in EXPORT_FILES]
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        return f"files export.py did not write ({', '.join(foreign[:5])}{more})"
    if names and not ({"config.json", "model.safetensors"} <= set(names) and (out / "README.md").is_file()
                      and CARD_TAG in (out / "README.md").read_text(encoding="utf-8", errors="replace")):
        return f"a model folder export.py did not write ({', '.join(names)}, without wikigpt's model card)"
    return None


def check_out(out: Path, format: str, overwrite: bool):
    """Before any work, and again before --overwrite replaces it: --out may be new, an empty folder,
    or (with --overwrite) what an earlier export wrote; anything else, a training run's folder above
    all, is refused and left alone. A symbolic link is not something export.py made, even to an
    export: refused, with pipes, devices, sockets and a path under a file, before anything is opened."""
    if problem := output_path_problem(out, "--out"):
        raise UsageError(problem)
    if out.name in ("", ".", ".."):  # the export is renamed into its place: a shell's current folder would vanish
        raise UsageError(f"--out {str(out) or repr('')} names no folder or file of its own: give one, e.g. "
                         f"--out {Path(out, 'hf') if format == 'hf' else Path(out, 'model.gguf')} (nothing was changed).")
    if format == "hf" and out.is_file():
        raise UsageError(f"{out} is a file, and a transformers export is a folder: choose another --out.")
    try:
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            return
        there = not_an_export(out)
    except OSError as e:  # a folder or file this user may not read: whose it is cannot be told
        raise UsageError(f"--out {out} cannot be read ({e.strerror}), so whether export.py wrote it cannot be "
                         "told: choose another --out (nothing was changed).")
    if there:
        raise UsageError(f"{out} holds {there}: choose another --out (nothing was deleted; --overwrite replaces "
                         "only an earlier export: a folder of export.py's files, or a .gguf file).")
    if not overwrite:
        raise UsageError(f"{out} holds an earlier export: pass --overwrite to replace it, or choose another --out.")


def export(ckpt_path, out: Path, dtype: str = "float32", overwrite: bool = False, format: str = "hf") -> Path:
    out = Path(out)
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    if format not in ("hf", "gguf"):
        raise UsageError(f"--format {format!r}: use hf (a transformers folder) or gguf (one llama.cpp file).")
    check_out(out, format, overwrite)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.get("kind") not in ("pretrain", "sft"):
        raise UsageError(f"{ckpt_path}: a {ckpt.get('kind')!r} checkpoint holds no model to export.")
    if ckpt.get("quant") == "int8":  # dequantised, its logits would be neither its own nor the float model's
        raise UsageError(f"{ckpt_path} holds int8 weights: export the float checkpoint it was quantised from "
                         "(its exact logits; --dtype float16 or bfloat16 for a smaller file).")
    model, tok = model_from_checkpoint(ckpt, path=ckpt_path)
    if "lora" in ckpt:
        from wikigpt.adapt.lora import merge_lora
        merge_lora(model)  # adapters folded in: the export is a plain model
    config, weights = hf_weights(model, tok.n_vocab, ckpt_path)
    chat = ckpt["kind"] == "sft"
    eos = tok.end_of_turn if chat else tok.doc_sep
    config.update({"torch_dtype": dtype, "dtype": dtype, "bos_token_id": tok.doc_sep, "eos_token_id": eos,
                   "pad_token_id": eos})

    out.parent.mkdir(parents=True, exist_ok=True)  # a new folder above a .gguf file (check_out: no file there)
    clear_stale_temps(out)
    # this run's own: another export.py to the same --out writes its own, never into or over this one
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        try:
            if format == "gguf":
                write_gguf(tmp, ckpt, tok, config, weights, dtype)
            else:
                write_hf_folder(tmp, ckpt, model, tok, config, weights, dtype)
        except Exception as e:  # a full disk, said in each writer's own way: one line
            raise write_failure(out, e) or e
        put_in_place(tmp, out, format, overwrite)
    finally:
        remove(tmp)
    return out


def clear_stale_temps(out: Path):
    """Delete what export.py runs to `out` that were killed mid-write (no `finally` ran) left
    beside it, each up to a whole export; a live run's stays."""
    for old in dead_writers_temps(out.parent, f".{out.name}", TMP_SUFFIX):
        remove(old)


def remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_failure(out: Path, e: Exception) -> UsageError | None:
    """A write the disk refused (full, read-only), as one line; None for anything else (a bug,
    whose traceback is worth seeing). The writers say it three ways: an OSError with an errno,
    numpy's "N requested and M written" (gguf) without one, safetensors' "I/O error: ...".
    The temporary file or folder is removed after: nothing half-written is left."""
    if isinstance(e, OSError):
        reason = e.strerror or f"the write stopped short ({e}; no space left on the device?)"
    elif type(e).__name__ == "SafetensorError" and "I/O error: " in str(e):
        reason = str(e).split("I/O error: ", 1)[1]  # "No space left on device (os error 28)"
    else:
        return None
    return UsageError(f"could not write {out}: {reason}. Nothing half-written was left there: make room (or fix "
                      "the folder), then run again.")


def write_hf_folder(tmp: Path, ckpt: dict, model, tok, config: dict, weights: dict, dtype: str):
    from safetensors.torch import save_file

    chat, eos = ckpt["kind"] == "sft", config["eos_token_id"]
    tmp.mkdir()
    tensors = {k: v.detach().to(DTYPES[dtype]).contiguous().clone() for k, v in weights.items()}
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    umask = os.umask(0o022)  # read back: safetensors creates its file 0600, unlike every other file here
    os.umask(umask)
    os.chmod(tmp / "model.safetensors", 0o666 & ~umask)  # what the user's umask gives any new file
    write_json(tmp / "config.json", config)
    # transformers' generate stops where ours does: at every special token (Tokenizer.stops), its own first
    stops = [eos] + sorted(tok.stops - {eos})
    generation = {"bos_token_id": tok.doc_sep, "eos_token_id": stops, "pad_token_id": eos}
    if chat:
        generation.update({"do_sample": True, **CHAT_DEFAULTS.kwargs()})
    write_json(tmp / "generation_config.json", generation)
    write_json(tmp / "tokenizer.json", tokenizer_json(tok))
    special = {s: s for s in tok.special}
    write_json(tmp / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.cfg.block_size,
        "bos_token": DOC_SEP, "eos_token": END_OF_TURN if chat else DOC_SEP,
        "pad_token": END_OF_TURN if chat else DOC_SEP, "clean_up_tokenization_spaces": False,
        "additional_special_tokens": [s for s in special if s != DOC_SEP],
        **({"chat_template": chat_template()} if tok.has_chat_tokens() else {})})
    (tmp / "README.md").write_text(model_card(ckpt, model, tok, config["architectures"][0], dtype), encoding="utf-8")


def put_in_place(tmp: Path, out: Path, format: str, overwrite: bool):
    """The finished file or folder becomes `out`, all of it on disk first. With --overwrite, what is
    at `out` is replaced in one step: a crash leaves the old export or the new one there, whole."""
    if not overwrite:
        publish_new(tmp, out)
        return
    check_out(out, format, overwrite)  # again: another run may have put something else there meanwhile
    if out.is_dir():  # an earlier export's folder (or an empty one): swapped out, then deleted
        if tmp.is_file():
            fsync_path(tmp)  # (publish fsyncs the files in a folder, not a lone file)
        publish(tmp, out)
    else:  # a file or nothing: one rename replaces it
        replace_durably(tmp, out)


def publish_new(tmp: Path, out: Path):
    """A new export (no --overwrite) never replaces one another export.py wrote while this one
    worked (check_out found nothing there, or an empty folder): a link of the file fails where
    anything is, and the rename of a folder over a file or a folder that is not empty."""
    try:
        if tmp.is_file():
            fsync_path(tmp)
            if out.is_dir():
                out.rmdir()  # the empty folder check_out let through (fails if anything appeared in it)
            link_new(tmp, out)
        else:
            replace_durably(tmp, out)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise UsageError(f"{out} was written by another run while this one worked: it was left as it is, and this "
                         "export was not kept. Pass --overwrite to replace it, or choose another --out.") from None


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint to export (pretrain or chat)")
    p.add_argument("--out", required=True, help="folder (or .gguf file) to write: new, or an empty folder")
    p.add_argument("--dtype", default="float32", help="weights as float32 | bfloat16 | float16")
    p.add_argument("--format", default=None, help="hf (a transformers folder) | gguf (one llama.cpp "
                   "file); default: gguf when --out ends in .gguf, else hf")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out (never "
                   "anything else: a folder of export.py's files, or a .gguf file)")
    args = p.parse_args(argv)
    args.format = args.format or ("gguf" if args.out.lower().endswith(".gguf") else "hf")
    out = export(args.ckpt, Path(args.out), args.dtype, args.overwrite, args.format)
    if args.format == "gguf":
        import gguf
        chat = "tokenizer.chat_template" in gguf.GGUFReader(str(out)).fields  # a base model continues text
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): run it with llama.cpp, e.g. llama-cli -m {out} "
              + ("--jinja -cnv" if chat else '-p "Aristotle was" -n 60 -no-cnv'))
        return
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB): load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r})")


if __name__ == "__main__":
    run_main(main)
