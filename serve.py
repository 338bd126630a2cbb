"""
Serve a checkpoint over an OpenAI-compatible HTTP API, with continuous batching and a web page.

    python serve.py --ckpt out/chat/best.pt                      # http://127.0.0.1:8000
    python serve.py --ckpt out/chat/best.pt --port 8080 --api_key sk-local
    WIKIGPT_API_KEY=sk-local python serve.py --ckpt out/chat/best.pt --host 0.0.0.0   # a key is required there

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus), and the chat page at /. Generation runs in wikigpt/decoding/engine.py's background
thread: every active request advances in one batched forward per step, so the event loop
never waits on the model and new requests join at the next step. The server itself is
wikigpt/server/: checks.py (requests), generation.py (the model side), replies.py, app.py (routes).
"""
import argparse
import errno
import os
import queue
import signal
import socket
import sys
from pathlib import Path

import torch

from wikigpt.decoding.decode import cache_bytes
from wikigpt.decoding.load import add_model_args, add_rag_args, check_rag_args, load_model
from wikigpt.cli import UsageError, run_main
from wikigpt.run.progress import progress_bar
from wikigpt.decoding.engine_thread import EngineThread
from wikigpt.knowledge.evidence import RETRIEVE_K
from wikigpt.knowledge.grounding import reader_of
from wikigpt.knowledge.retrieval import open_index
from wikigpt.server.app import create_app
from wikigpt.server.checks import Settings, host_names, is_loopback
from wikigpt.server.connections import serve_until_stopped, uvicorn_config
from wikigpt.server.generation import Server
from wikigpt.run.cores import usable_cores


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, ckpt="out/chat/best.pt", ckpt_help="checkpoint to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; needs a key)")
    p.add_argument("--port", type=int, default=8000, help="0: pick a free port")
    p.add_argument("--api_key", default=os.environ.get("WIKIGPT_API_KEY", ""),
                   help="require 'Authorization: Bearer KEY' (default: $WIKIGPT_API_KEY; empty: open)")
    p.add_argument("--insecure_no_key", action="store_true",
                   help="serve without a key on an address other machines reach (anyone there may use the model)")
    p.add_argument("--model_name", default="", help="the model id clients see (default: wikigpt-FOLDER)")
    add_rag_args(p, RETRIEVE_K)
    p.add_argument("--slots", type=int, default=16, help="requests decoded together (1: batching off)")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile the decode step (auto: on a GPU, as CUDA graphs; on a CPU the warm-up "
                        "is long for what it gains: see docs/gpu.md)")
    p.add_argument("--max_queue", type=int, default=64,
                   help="requests waiting for a slot before 429 (0: none wait, a request needs a free slot)")
    p.add_argument("--max_tokens_limit", type=int, default=Settings.max_tokens_limit, help="largest max_tokens")
    p.add_argument("--max_body_bytes", type=int, default=Settings.max_body_bytes, help="largest request body")
    p.add_argument("--max_connections", type=int, default=Settings.max_connections,
                   help="open connections at once (over it: 503)")
    p.add_argument("--request_timeout", type=float, default=Settings.request_timeout_s,
                   help="seconds a request may take, queue included (over it: 504, or an error event in a stream)")
    p.add_argument("--stall_timeout", type=float, default=Settings.stall_timeout_s,
                   help="seconds a streaming client may read nothing before its request is cancelled")
    p.add_argument("--header_timeout", type=float, default=Settings.header_timeout_s,
                   help="seconds a connection has to send its request's headers before it is closed")
    p.add_argument("--threads", type=int, default=max(1, usable_cores() - 1),
                   help="CPU threads for the model (default: all cores but one, which serves HTTP)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    for name in ("slots", "threads", "max_body_bytes", "max_tokens_limit", "max_connections", "max_queue"):
        if (value := getattr(args, name)) < (0 if name == "max_queue" else 1):
            raise UsageError(f"--{name} must be >= {0 if name == 'max_queue' else 1}, got {value}")
    for name in ("request_timeout", "stall_timeout", "header_timeout"):
        if not (value := getattr(args, name)) > 0:  # NaN too
            raise UsageError(f"--{name} must be > 0 seconds, got {value:g}")
    check_rag_args(p, args)
    if not args.api_key and not is_loopback(args.host) and not args.insecure_no_key:
        raise UsageError(f"--host {args.host} lets other machines reach the server, and no API key is set: anyone "
                         "there could use the model. Set a key (--api_key KEY, or WIKIGPT_API_KEY=KEY; clients "
                         "send 'Authorization: Bearer KEY'), or pass --insecure_no_key to serve it open on purpose.")
    return args


def listen(host: str, port: int) -> socket.socket:
    try:
        # IPPROTO_TCP spelled out: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
        # so, and with it on, each reply's body waited ~40 ms behind its headers for the client's ACK
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        fix = ("Pick another --port (0 picks a free one) or stop what uses it." if e.errno == errno.EADDRINUSE
               else "Check --host: an address of this machine (127.0.0.1, or 0.0.0.0 for all of them).")
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}). {fix}")
    return sock


def check_cache_fits(model, slots: int):
    """--slots within the memory there is: each slot holds a whole context's keys and values
    (a 124M model with 1,024 tokens: ~75 MB a slot), allocated at the start."""
    need = cache_bytes(model, slots)
    if model.device.type == "cuda":
        free, where = torch.cuda.mem_get_info(model.device)[0], f"free on {model.device}"
    else:
        free, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "of this machine's memory"
    if need > free:
        raise UsageError(f"--slots {slots}: the key/value cache of {slots} slots needs {need / 2**30:.1f} GiB, more "
                         f"than the {free / 2**30:.1f} GiB {where} (each slot holds a whole {model.cfg.block_size}-token "
                         f"context: {cache_bytes(model, 1) / 2**20:.1f} MiB). Lower --slots.")


def warm_up(engine: EngineThread, slots: int):
    """Start the engine thread; a compiled step is compiled and recorded there, graph by graph
    (CUDA graph trees are per thread), while this thread shows the progress."""
    compiled, progress = engine.engine.compiled, queue.SimpleQueue()
    engine.start(progress)
    with progress_bar(total=engine.engine.graph_count, desc=f"compiling the decode step, up to {slots} rows",
                      unit="graph", disable=not compiled) as bar:
        while progress.get():
            bar.update()
    if engine.warm_error is not None:
        engine.stop()
        e = engine.warm_error
        raise UsageError(f"warming up the decode step failed ({type(e).__name__}: {str(e)[:200]}): try fewer "
                         "--slots, or --compile off.")


def main(argv):
    args = parse_args(argv)
    # On CPU the model's threads and the HTTP event loop share the cores; measured on 2 cores
    # at 8 streaming clients: 615 tok/s with 1 model thread, 531 with 2 (which starve the loop)
    model, tok, info = load_model(args.ckpt, args.device, args.dtype)
    torch.set_num_threads(args.threads)  # after load_model's own default (the cores usable): --threads wins
    if info["kind"] == "pretrain" and tok.has_chat_tokens():
        print(f"note: {args.ckpt} is a base (pretrained) model, never taught the chat turns: its chat replies "
              "continue text as Wikipedia would (/v1/completions is its use). Fine-tune it with chat_sft.py.",
              file=sys.stderr)
    index = open_index(args.data, args.rag_k, info["data"]) if args.rag else None
    if index is not None and (reader := reader_of(index, args.rag_k)).note:
        print(f"note: {reader.note}", file=sys.stderr)
    name = args.model_name or f"wikigpt-{Path(args.ckpt).resolve().parent.name}"
    sock = listen(args.host, args.port)
    port = sock.getsockname()[1]
    settings = Settings(model_name=name, api_key=args.api_key, max_tokens_limit=args.max_tokens_limit,
                        max_body_bytes=args.max_body_bytes, max_connections=args.max_connections,
                        request_timeout_s=args.request_timeout, stall_timeout_s=args.stall_timeout,
                        header_timeout_s=args.header_timeout,
                        trusted_hosts=None if args.api_key else host_names(args.host, port))
    compile = {"auto": None, "on": True, "off": False}[args.compile]
    check_cache_fits(model, args.slots)
    engine = EngineThread(model, args.slots, args.max_queue, start=False, tok=tok, compile=compile)
    warm_up(engine, args.slots)
    app = create_app(Server(model, tok, settings, engine, index))
    print(f"serving {args.ckpt} ({info['kind']}, step {info['step']}) as {name!r} on "
          f"http://{args.host}:{port} ({args.slots} slots, key {'required' if args.api_key else 'off'}"
          f"{', retrieval from ' + str(args.data or info['data']) if index else ''})",
          flush=True)
    try:
        stopped_by = serve_until_stopped(uvicorn_config(app, settings), sock)
    finally:  # Ctrl-C too: Python shutting down under the engine thread's step aborted ("terminate called")
        engine.stop()
    if stopped_by == signal.SIGINT:  # (uvicorn's own re-raise did nothing: SIGINT was ignored at the start)
        raise KeyboardInterrupt


if __name__ == "__main__":
    run_main(main)
