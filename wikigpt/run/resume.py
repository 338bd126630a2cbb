"""
What a resumed run must share with the run it continues, checked before any work (train.py's
and chat_sft.py's main): the settings its saved state holds (the optimizer's state brings back
its learning rates, betas and weight decay; the data position means something only in the same
order of the same windows), and, on several machines, the step every process starts from; and
the shape a model from init_from keeps.
"""
import torch

from wikigpt.cli import UsageError
from wikigpt.prep.data import dataset_fingerprint, same_dataset

# changed on --resume, each would be ignored while the log said otherwise (the learning rates,
# betas, weight decay: the optimizer's state restores the old ones) or silently change the data
# (batch_size and grad_accum may change: the data position counts rows, not micro-batches)
KEPT_ON_RESUME = ("seed", "optimizer", "lr", "muon_lr", "weight_decay", "beta1", "beta2", "block_size")
# the model's shape and dropout: a resumed model is the checkpoint's (from init_from they are
# that checkpoint's by construction: keep_checkpoint_shape below)
SHAPE = ("n_layer", "n_head", "n_embd", "arch", "mlp", "dropout")


def check_start(dist, start, cfg):
    """Refuse a new run whose out_dir is inside its dataset, a resume with other settings or another
    dataset than its checkpoint's, or processes that would start from different steps (each reads
    out_dir on its own machine; one without the checkpoint would start over beside the others: a
    collective mismatch). Sets cfg.data_fingerprint, which the run's checkpoints record."""
    if dist.world > 1:
        mine = torch.tensor([start.checkpoint["step"] if start.resume else -1], device=dist.device)
        steps = [torch.zeros_like(mine) for _ in range(dist.world)]
        torch.distributed.all_gather(steps, mine)
        if len(set(steps := [int(s) for s in steps])) > 1:
            raise UsageError(f"the processes would start from steps {steps} (-1: from scratch), each reading "
                             f"{cfg.out_dir} on its own machine: make out_dir one shared folder, or copy it to each.")
    from wikigpt.run.output_paths import inside_dataset
    if not start.resume and (problem := inside_dataset(cfg)):  # prepare_wiki.py / retrieve.py replace that folder whole
        raise UsageError(problem)
    cfg.data_fingerprint = dataset_fingerprint(cfg.data)  # not a setting: recorded in the run's checkpoints
    saved = start.checkpoint.get("train_config", {}) if start.resume else {}
    kept = KEPT_ON_RESUME + (() if saved.get("init_from") else SHAPE)
    changed = [f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in kept if k in saved and saved[k] != getattr(cfg, k)]
    if other_dataset(saved, cfg.data):
        changed.append(f"data {saved['data']} -> {cfg.data} (another dataset than the one the run trained on)")
    if changed:
        raise UsageError(f"--resume continues a run with its own settings, and these differ: {', '.join(changed)}. "
                         "Resume with the run's settings, or start a new run (another out_dir, init_from=its best.pt).")


def other_dataset(saved: dict, folder) -> bool:
    """Is `folder` another dataset than the one a run (its saved train_config) trained on? Told by what
    each holds, recorded when the run saved (a copy is the same; the folder made again with other
    articles is not); checkpoints without the record compare with what the recorded path holds now."""
    if saved.get("data_fingerprint") and (now := dataset_fingerprint(folder)):
        return saved["data_fingerprint"] != now
    return bool(saved.get("data")) and same_dataset(saved["data"], folder) is False


def keep_checkpoint_shape(cfg, start, master: bool = True):
    """A model from init_from has its checkpoint's shape, whatever the settings say: cfg is made to
    say so too (the config line and the checkpoints' train_config record what trained), and a shape
    a file or the command line asked for otherwise is noted, not silently dropped."""
    if not cfg.init_from or start.checkpoint is None:
        return
    shape, keys = start.checkpoint["model_config"], ("block_size", *SHAPE)
    other = [f"{k} {shape[k]!r} (asked: {getattr(cfg, k)!r})" for k in keys
             if k in getattr(cfg, "keys_set", ()) and shape[k] != getattr(cfg, k) and not (k == "mlp" and cfg.mlp == "auto")]
    if other and master:
        print(f"note: the model keeps the shape of {start.path}: {', '.join(other)}")
    for k in keys:
        setattr(cfg, k, shape[k])
