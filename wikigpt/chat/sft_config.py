"""
The settings of a chat fine-tuning run (chat_sft.py): TrainConfig's, with fine-tuning's
defaults and the dialogue data's options. `python chat_sft.py -h` prints the table.
"""
from dataclasses import dataclass

from wikigpt.cli import UsageError, opt
from wikigpt.config import TrainConfig


@dataclass
class SFTConfig(TrainConfig):
    CHAT = True  # a chat run (not a field): what distillation checks its teacher against
    # defaults for fine-tuning (the model's shape comes from init_from)
    out_dir: str = opt("out/chat", "where last.pt and best.pt are written")
    init_from: str = opt("out/demo/best.pt", "the pretrained checkpoint to fine-tune")
    lr: float = opt(1e-3, "peak AdamW learning rate")
    max_steps: int = opt(300, "optimizer steps")
    warmup_steps: int = opt(20, "linear warmup steps")
    eval_interval: int = opt(50, "evaluate and checkpoint every this many steps")
    eval_tokens: int = opt(16384, "size of the fixed val subset, in tokens")
    # dialogue data
    sft_data: str = opt("", "comma-separated files, each optionally :weight (empty: built-in en+zh)")
    sft_format: str = opt("auto", "auto | openai | sharegpt | alpaca | pairs")
    system_prompt: str = opt("", "system turn added to conversations that have none")
    sft_val_fraction: float = opt(0.05, "share of conversations held out for val")
    skip_bad_records: bool = opt(False, "skip malformed records (and say how many) instead of failing")
    show_examples: int = opt(0, "print this many training rows with their loss mask, then exit (out_dir untouched)")
    eot_check: int = opt(50, "after training, how many held-out prompts to test for <|end|>")
    # knowledge: questions about the articles of `data`, answered from retrieved passages
    grounded_qa: float = opt(0.0, "weight of grounded Wikipedia QA conversations (wikiqa.py; 0: off)")
    qa_eval: int = opt(3, "with grounded_qa: held-out QA questions per val article, reported at the end")

    def validate(self):
        super().validate()
        if self.sft_format not in ("auto", "openai", "sharegpt", "alpaca", "pairs"):
            raise UsageError(f"config: sft_format: unknown {self.sft_format!r}")
        if not 0 < self.sft_val_fraction < 1:
            raise UsageError(f"config: sft_val_fraction must be in (0, 1), got {self.sft_val_fraction}")
        if self.grounded_qa < 0 or self.qa_eval < 0:
            raise UsageError("config: grounded_qa and qa_eval must be >= 0")
