"""
What a resumed run must share with the run it continues, checked before any work (train.py's
and chat_sft.py's main): the settings its saved state holds (the optimizer's state brings back
its learning rates, betas and weight decay; the data position means something only in the same
order of the same windows), and, on several machines, the step every process starts from.
"""
import torch

from wikigpt.cli import UsageError

# changed on --resume, each would be ignored while the log said otherwise (the learning rates,
# betas, weight decay: the optimizer's state restores the old ones) or silently change the data
# (batch_size and grad_accum may change: the data position counts rows, not micro-batches)
KEPT_ON_RESUME = ("seed", "optimizer", "lr", "muon_lr", "weight_decay", "beta1", "beta2", "block_size")


def check_start(dist, start, cfg):
    """Refuse a resume with other settings than its checkpoint's, or processes that would start
    from different steps (each reads out_dir on its own machine; one without the checkpoint
    would start over beside the others: a collective mismatch)."""
    if dist.world > 1:
        mine = torch.tensor([start.checkpoint["step"] if start.resume else -1], device=dist.device)
        steps = [torch.zeros_like(mine) for _ in range(dist.world)]
        torch.distributed.all_gather(steps, mine)
        if len(set(steps := [int(s) for s in steps])) > 1:
            raise UsageError(f"the processes would start from steps {steps} (-1: from scratch), each reading "
                             f"{cfg.out_dir} on its own machine: make out_dir one shared folder, or copy it to each.")
    saved = start.checkpoint.get("train_config", {}) if start.resume else {}
    changed = [f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in KEPT_ON_RESUME
               if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        raise UsageError(f"--resume continues a run with its own settings, and these differ: {', '.join(changed)}. "
                         "Resume with the run's settings, or start a new run (another out_dir, init_from=its best.pt).")
