"""
What every wikigpt command shares: user errors that print without a traceback (`UsageError`,
`run_main`), typed configs (a dataclass <- TOML files <- --key=value, typos caught, `-h`); the
progress bar of long work is wikigpt/run/progress.py's. The options of the commands that run a checkpoint (--ckpt/--device/
--dtype, --rag/--data/--rag_k) are wikigpt/decoding/load.py's.

    @dataclass
    class MyConfig:
        steps: int = opt(100, "how many steps")

    def main(argv):
        cfg = load_config(MyConfig, argv)
        ...

    if __name__ == "__main__":
        run_main(main)
"""
import difflib
import os
import sys
import tomllib
from dataclasses import field, fields
from pathlib import Path

from wikigpt.prep.data import DatasetError
from wikigpt.run.output_paths import output_path_problem, path_error, stdout_reader_left
from wikigpt.tokenizer import TokenizerError


class UsageError(Exception):
    """A mistake in the command, config, data or checkpoint; printed without a traceback."""


def output_file(path, option: str) -> Path:
    """A file a command will write, checked before its work: no link, pipe or device there and
    no file above it (run/output_paths.py), not a folder, and its parent folder made."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):  # Path() drops the slash: a file of that name
        raise UsageError(f"{option} {path} ends with a slash, as a folder does: give the path of a file (one inside it, say).")
    path = Path(path)
    if problem := output_path_problem(path, option):
        raise UsageError(problem)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file path (one inside it, say).")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # no permission, a read-only disk: said before the work, not after
        raise UsageError(f"{option} {path}: its folder cannot be made ({e.strerror}): choose another {option}.")
    if not os.access(path.parent, os.W_OK):  # an existing folder we may not write (or a read-only disk)
        raise UsageError(f"{option} {path}: its folder {path.parent} cannot be written: choose another {option}.")
    return path


# what Ctrl-C says where a run writes checkpoints (prune.py; train.py and chat_sft.py, which go on: the
# same command again is refused); elsewhere "interrupted."
CHECKPOINTS_INTACT = "interrupted: the checkpoints already written, if any, are intact."
RUN_INTERRUPTED = CHECKPOINTS_INTACT + " Continue the run: the same command with --resume=auto."


def run_main(main_fn, interrupted: str = "interrupted."):
    """Run a script's main: user mistakes become one clear line and exit code 2; Ctrl-C says
    `interrupted` and exits 130."""
    try:
        import torch.distributed as torch_dist  # lazily (the server and tools need no process group), and
        # in here: Ctrl-C in the second it takes to import says "interrupted" too
        main_fn(sys.argv[1:])
        if torch_dist.is_initialized():
            torch_dist.barrier()  # leave together: a process exiting while others still work
            # (e.g. process 0's final checks) can abort the others' gloo threads
            torch_dist.destroy_process_group()
    # On the error paths the process group is left to the exit: with a peer gone (a killed
    # worker), destroying it can block forever, and torchrun could then never restart the group.
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader of our output left (`retrieve.py ... | head`): stop quietly
        if not stdout_reader_left():
            raise  # another pipe or socket broke: that is an error to see
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush would fail again
        sys.exit(141)  # what a shell reports for a pipe's writer it stopped: 128 + SIGPIPE
    # a read-only folder, a full disk, a file where a folder should be: one line too (output_paths.path_error)
    except (UsageError, DatasetError, TokenizerError, OSError) as e:
        if isinstance(e, OSError) and path_error(e) is None:
            raise  # a socket, or a bug: its traceback is worth seeing
        if os.environ.get("LOCAL_RANK", "0") == "0":  # under torchrun every process hits it: once a machine
            print(f"error: {path_error(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------------------
# Typed configs: dataclass defaults <- TOML files <- --key=value, type-checked, typos caught

def opt(default, help: str):
    """A config field with its help text (shown by -h)."""
    return field(default=default, metadata={"help": help})


def _coerce(f, value, where: str, from_cli: bool):
    """Check/convert one value to the field's type, or say clearly what is wrong."""
    kind = f.type
    if from_cli and kind is not str:  # command-line values arrive as text
        text = value.strip().lower()
        if kind is bool:
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
        else:
            try:
                return kind(value)
            except ValueError:
                pass
        raise UsageError(f"{where}: {f.name} expects {kind.__name__}, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise UsageError(f"{where}: {f.name} expects {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def config_help(cls) -> str:
    width = max(len(f.name) for f in fields(cls)) + 2
    lines = [f"{'key':{width}s} {'default':>16s}  meaning"]
    for f in fields(cls):
        lines.append(f"{'--' + f.name:{width}s} {str(f.default):>16s}  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def load_config(cls, argv: list[str]):
    """cls defaults, then each TOML file in argv, then --key=value overrides."""
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {Path(sys.argv[0]).name} [CONFIG.toml ...] [--key=value ...]\n")
        print(config_help(cls))
        sys.exit(0)
    known = {f.name: f for f in fields(cls)}
    values = {}

    def check_key(key, where):
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UsageError(f"{where}: unknown config key {key!r}.{hint} Run with -h to list all keys.")

    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                raise UsageError(f"{arg}: write overrides as --key=value (e.g. --n_layer=4)")
            check_key(key, "command line")
            values[key] = _coerce(known[key], value, "command line", from_cli=True)
        else:
            path = Path(arg)
            if path.is_dir():  # "train.py data/demo" for --data=data/demo
                raise UsageError(f"{arg} is a folder, not a config file: options take --key=value "
                                 f"(e.g. --data={arg} or --out_dir={arg}); configs live in config/.")
            if not path.is_file():
                raise UsageError(f"config file {arg} not found (configs live in config/, e.g. config/demo_cpu.toml)")
            try:
                table = tomllib.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:  # "train.py out/demo/best.pt" for --init_from=out/demo/best.pt
                raise UsageError(f"{arg} is not a TOML config but binary data: a checkpoint is given as "
                                 f"--init_from={arg}; configs live in config/.")
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"{arg}: not valid TOML ({e})")
            for key, value in table.items():
                check_key(key, arg)
                values[key] = _coerce(known[key], value, f"{arg}, key {key}", from_cli=False)
    cfg = cls(**values)
    cfg.keys_set = frozenset(values)  # what a file or the command line set, defaults aside (chat_sft.py)
    cfg.validate()
    return cfg
