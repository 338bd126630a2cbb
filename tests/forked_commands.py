"""
The commands the tests run, as real processes that start 2 s sooner: each is forked from one
Python that has already imported torch, instead of a new interpreter importing it again.

Why: a new Python spends ~2.2 s importing torch on the 2-core machine, and the suite starts
~200 commands; the fork skips that, and the command still runs in its own process, from its own
file, with its own arguments, folder, environment, input and output files, and exit status.

What stays a new interpreter (subprocess.run, as before): a "-m" / "-c" invocation, a call made
while another is running (the server runs one command at a time), and an environment that
changes what Python, torch or a preloaded module read as they start (PYTHON*, OMP_*, MKL_*, CUDA*,
LD_*, TORCH*, MPL*...): those cannot be changed in a process that has started. Set
WIKIGPT_TEST_FORK=0 to run every command in a new interpreter.

Run as a script, this file is the server: it reads one request (JSON) per line on stdin and
answers two lines on stdout: the command's process id, then its exit status.
"""
import json
import os
import subprocess
import sys
import threading

# What the server imports before it forks (the seconds a fork saves): numpy and torch, which every
# command imports first, and what a training run imports as it goes: torch's compiler (the
# optimizers import it, with sympy), distributed checkpointing (the checkpoint code) and the
# matplotlib figure its loss plot is drawn on, ~1.1 s of each train.py / chat_sft.py run here.
# Third-party modules only (the project's own are imported by each command, from its own folder),
# none that prints a warning or starts a thread as it is imported; what they read from the
# environment as they are imported (MPL*, XDG_*, SYMPY*, TORCH*) is a startup variable below.
PRELOADED = ("numpy", "torch", "torch._dynamo", "torch.distributed.checkpoint", "matplotlib", "matplotlib.figure",
             "matplotlib.backends.backend_agg")

# read as Python or torch start: a process forked after they did cannot take a new value
STARTUP_VARIABLES = ("PYTHON", "OMP_", "MKL_", "KMP_", "CUDA", "LD_", "TORCH", "PYTORCH", "MPL", "XDG_", "SYMPY")


class CommandForks:
    """The client: one server per pytest process, started on first use."""

    def __init__(self, root):
        self.root = root
        self.server = None
        self.server_env = None
        self.lock = threading.Lock()
        self.replies = b""

    def forkable(self, args, env) -> bool:
        if env.get("WIKIGPT_TEST_FORK") == "0" or not args or not str(args[0]).endswith(".py"):
            return False
        started = self.server_env if self.server else os.environ
        changed = {k for k in set(env) | set(started) if env.get(k) != started.get(k)}
        return not any(k.startswith(STARTUP_VARIABLES) for k in changed)

    def run(self, args, cwd, env, input, timeout) -> subprocess.CompletedProcess:
        args = [str(a) for a in args]
        if not self.forkable(args, env) or not self.lock.acquire(blocking=False):
            return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=timeout, input=input, env=env)
        try:
            return self._run_forked(args, cwd, env, input, timeout)
        finally:
            self.lock.release()

    def _start(self):
        self.server_env = dict(os.environ)
        self.server = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       cwd=self.root, env=self.server_env)

    def _line(self, timeout) -> str | None:
        """The server's next line, or None if none came within timeout seconds."""
        import select
        while b"\n" not in self.replies:
            ready, _, _ = select.select([self.server.stdout], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.server.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("the test command server ended (see its stderr above)")
            self.replies += chunk
        line, self.replies = self.replies.split(b"\n", 1)
        return line.decode()

    def _run_forked(self, args, cwd, env, input, timeout) -> subprocess.CompletedProcess:
        import signal
        import tempfile
        if self.server is None or self.server.poll() is not None:
            self._start()
        with tempfile.TemporaryDirectory(prefix="wikigpt-cmd-") as tmp:
            paths = {name: os.path.join(tmp, name) for name in ("stdin", "stdout", "stderr")}
            for name, text in (("stdin", input or ""), ("stdout", ""), ("stderr", "")):
                with open(paths[name], "w", encoding="utf-8") as f:
                    f.write(text)
            request = dict(argv=args, cwd=str(cwd), env=env, **paths)
            self.server.stdin.write((json.dumps(request) + "\n").encode())
            self.server.stdin.flush()
            pid = int(self._line(60))
            status = self._line(timeout)
            timed_out = status is None
            if timed_out:  # the command and whatever it started
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                status = self._line(60)
            out, err = (open(paths[name], encoding="utf-8", errors="replace").read() for name in ("stdout", "stderr"))
        if timed_out:
            raise subprocess.TimeoutExpired([sys.executable, *args], timeout, output=out, stderr=err)
        return subprocess.CompletedProcess([sys.executable, *args], int(status), out, err)


def run_command(request):
    """In the forked child: become the command `python argv[0] argv[1:]`, and exit as it would."""
    import atexit
    import runpy
    import traceback
    code = 1
    try:
        os.setpgid(0, 0)  # a timeout kills the command with what it started
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, (name, mode) in enumerate((("stdin", os.O_RDONLY), ("stdout", os.O_WRONLY), ("stderr", os.O_WRONLY))):
            opened = os.open(request[name], mode)
            os.dup2(opened, fd)
            os.close(opened)
        script = os.path.abspath(request["argv"][0])
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(script)  # as `python script.py` sets it
        atexit._clear()  # the server's exit work is not the command's
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:  # as Python's own exit: None -> 0, a number, or a message and 1
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException as e:
            tb = e.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != script:  # this file's and runpy's frames
                tb = tb.tb_next
            traceback.print_exception(type(e), e, tb or e.__traceback__)
        threading._shutdown()  # Python waits for the command's non-daemon threads before exiting
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def serve():
    import importlib
    for module in PRELOADED:
        importlib.import_module(module)
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # the commands' descriptors are their own files, never the request pipes
    os.dup2(null, 1)
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            run_command(request)
        replies.write(f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        replies.write(f"{os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    serve()
