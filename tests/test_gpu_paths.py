"""GPU properties pinned on the CPU: steps that compile whole (fullgraph=True: no graph break, so
no host sync inside), ops whose tensors stay on one device (run on the meta device), CUDA
defaults decided without a GPU (int8 refused, bf16 only where native, exact peak names)."""
import pytest
import torch

from model import GPT, GPTConfig
from wikigpt.batches import PretrainBatches
from wikigpt.checkpoint import build_checkpoint, save_checkpoint
from wikigpt.run.device import gpu_dtype
from wikigpt.decoding.load import load_model
from wikigpt.cli import UsageError
from wikigpt.decoding.decode import key_spans
from wikigpt.decoding.engine import Engine, Request
from wikigpt.run.fsdp import mixed_precision
from wikigpt.loss import NextTokenLoss
from wikigpt.adapt.quant import quantize_model
from wikigpt.decoding.sampling import SamplingParams, knobs_row, mix_dense, sample_tokens, uniform
from wikigpt.run.throughput import datasheet_peak


def tiny(**kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=48, n_layer=2, n_head=2, n_embd=32, **kw)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)  # confident logits: few near-ties between eager and compiled arithmetic
    return model


def decode(model, compile: bool, params: SamplingParams, engines: list | None = None) -> list[list[int]]:
    """Three requests decoded together; the engine is appended to `engines` when given."""
    engine, out = Engine(model, n_slots=4, compile=compile), [[] for _ in range(3)]
    for i in range(3):
        engine.add(Request([1 + i, 2, 3], 12, params, seed=i, emit=lambda r, t, f, i=i: out[i].append(t)))
    while engine.active:
        engine.step()
    if engines is not None:
        engines.append(engine)
    return out


def test_the_decode_step_compiles_whole_and_decodes_as_eager():
    model = tiny()
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2)
    assert decode(model, True, params) == decode(model, False, params)  # fullgraph=True: a break would raise


def test_an_int8_model_decode_step_compiles_whole_too():
    model = quantize_model(tiny())
    params, engines = SamplingParams(temperature=0.0), []
    assert decode(model, True, params, engines) == decode(model, False, params)
    assert engines[0].compiled  # no fallback to eager: the int8 kernel is an opaque op to the compiler


def test_warm_up_compiles_each_row_bucket_before_the_first_request(monkeypatch):
    import wikigpt.decoding.decode as decode

    # dynamo for real (its graphs and guards are what is counted), without inductor's code for them
    # (45 s on a cold cache here; the decode tests above run inductor)
    monkeypatch.setattr(decode, "compiled_step", lambda graphs, cuda: torch.compile(
        decode.decode_step, fullgraph=True, dynamic=False, backend="eager"))
    assert Engine(tiny(), n_slots=16).row_buckets() == [1, 4, 8, 16]  # 1: a request alone in slot 0
    assert Engine(tiny(), n_slots=4).row_buckets() == [1, 4]
    assert key_spans(48) == [48] and key_spans(1024) == [64, 256, 1024] and key_spans(512) == [128, 512]
    engine, graphs = Engine(tiny(), n_slots=1, compile=True), []
    engine.warm_up(lambda: graphs.append(engine.active))
    assert graphs == [0, 0] and engine.free_slots == 1  # top_k on and off, each slot given back
    assert engine.compiled and engine.graph_count == 2 and set(engine.step_fn.calls.values()) == {3}


def test_every_tensor_the_compiled_step_reads_is_a_weight_or_a_buffer_marked_static(monkeypatch, tiny_data):
    """Under CUDA graphs a step's input that is not static (a weight, or a state buffer marked so)
    is copied into the graph's own buffer at every replay: the UTF-8 table was, 3.2 MB a step."""
    import wikigpt.decoding.decode as decode
    from wikigpt.prep.data import load_dataset

    inputs = []

    def recording(graph, example_inputs):  # a dynamo backend: sees the graph's inputs, runs it as traced
        inputs.extend(t for t in example_inputs if isinstance(t, torch.Tensor))
        return graph.forward
    monkeypatch.setattr(decode, "compiled_step", lambda graphs, cuda: torch.compile(
        decode.decode_step, fullgraph=True, dynamic=False, backend=recording))
    model, tok = tiny(), load_dataset(tiny_data).tokenizer  # bpe:300: the UTF-8 table is used
    engine = Engine(model, n_slots=2, tok=tok, compile=True)
    engine.add(Request([1, 2, 3], 4, SamplingParams(temperature=0.8, top_p=0.9), seed=0))
    while engine.active:
        engine.step()
    assert engine.compiled and engine.state.utf8 is not None and inputs
    static = {t.data_ptr() for t in (*model.parameters(), *model.buffers(), *engine.state.buffers())}
    assert all(t.data_ptr() in static for t in inputs), [tuple(t.shape) for t in inputs if t.data_ptr() not in static]


def test_the_training_micro_step_compiles_whole():
    model = tiny().train()
    x, y = torch.randint(0, 300, (2, 48)), torch.randint(0, 300, (2, 48))
    # what the training step calls, traced whole by dynamo and AOT autograd (a graph break raises);
    # inductor's code for it runs in test_train.py's --compile=true run (here it cost 20-27 s cold)
    compiled = torch.compile(NextTokenLoss(model), fullgraph=True, backend="aot_eager")
    compiled(x, y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x, y)[1].backward()
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, model.parameters()))


def test_sampling_a_mixed_batch_keeps_every_tensor_on_the_rows_device():
    # top_k 0 next to top_k 5 once stacked a CPU -inf with the rows' values: a crash on CUDA.
    # On the meta device any tensor made elsewhere fails the same way, with no GPU needed.
    n, V = 3, 320
    rows = [SamplingParams(top_k=0), SamplingParams(top_k=5, top_p=0.5), SamplingParams(temperature=0)]
    logits = mix_dense(torch.randn(n, V, device="meta"), torch.zeros(n, V, device="meta"), torch.zeros(n, device="meta"))
    u = uniform(torch.tensor([1, 2, 3], device="meta"), torch.zeros(n, dtype=torch.long, device="meta"))
    tokens = sample_tokens(logits, 300, torch.zeros(n, V, dtype=torch.bool, device="meta"),
                           torch.tensor([knobs_row(p) for p in rows], device="meta"), u,
                           torch.ones(n, V, dtype=torch.bool, device="meta"))
    assert tokens.device.type == "meta" and tokens.shape == (n,)


def test_sampling_follows_top_k_and_greedy_and_never_picks_padding():
    logits = torch.zeros(2, 320)
    logits[:, 7], logits[:, 9], logits[:, 310] = 5.0, 4.0, 50.0  # 310: a padding id (vocab 300)
    knobs = torch.tensor([knobs_row(SamplingParams(temperature=1.0, top_k=2, top_p=1.0, repetition_penalty=1.0)),
                          knobs_row(SamplingParams(temperature=0.0, repetition_penalty=1.0))])
    picks = {tuple(sample_tokens(logits, 300, torch.zeros(2, 320, dtype=torch.bool), knobs,
                                 uniform(torch.tensor([s, s]), torch.zeros(2, dtype=torch.long))).tolist())
             for s in range(40)}
    assert {p[0] for p in picks} == {7, 9} and {p[1] for p in picks} == {7}


def test_a_temperature_near_zero_samples_the_best_token_not_a_masked_one():
    # 1e-40 is in range but a float32 subnormal: logits / 1e-40 overflowed to +-inf, the softmax
    # gave NaN and the pick fell on the last candidate - a padding id or one that breaks UTF-8
    logits = torch.zeros(3, 320)
    logits[:, 7], logits[:, 9], logits[:, 310], logits[:, 11] = 5.0, 4.0, 50.0, 60.0  # 310: padding, 11: ruled out
    allowed = torch.ones(3, 320, dtype=torch.bool)
    allowed[:, 11] = False
    knobs = torch.tensor([knobs_row(SamplingParams(temperature=1e-40, top_k=0, top_p=1.0, repetition_penalty=1.0)),
                          knobs_row(SamplingParams(temperature=1e-40)),
                          knobs_row(SamplingParams(temperature=1e-30, top_k=2, top_p=0.5))])
    assert knobs[0, 0] > 0  # still a temperature, not greedy's 0
    picks = {tuple(sample_tokens(logits, 300, torch.zeros(3, 320, dtype=torch.bool), knobs,
                                 uniform(torch.tensor([s] * 3), torch.zeros(3, dtype=torch.long)), allowed).tolist())
             for s in range(40)}
    assert picks == {(7, 7, 7)}
    tied = logits.clone()
    tied[:, 8] = 5.0  # two best tokens: a temperature near 0 picks either (a NaN row fell back to the first)
    picks = {sample_tokens(tied, 300, torch.zeros(3, 320, dtype=torch.bool), knobs,
                           uniform(torch.tensor([s] * 3), torch.zeros(3, dtype=torch.long)), allowed)[0].item()
             for s in range(40)}
    assert picks == {7, 8}


def test_an_int8_checkpoint_is_refused_on_a_gpu_before_any_weight_moves(tmp_path, monkeypatch):
    model = tiny()
    quantize_model(model)
    path = tmp_path / "int8.pt"
    tok_spec = {"kind": "bpe", "n_vocab": 300}
    save_checkpoint(path, build_checkpoint("sft", model.state_dict(), vars(model.cfg), tok_spec, quant="int8"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU "is there"; the load is real
    with pytest.raises(UsageError, match="int8 runs on the CPU"):
        load_model(path, "cuda")


def test_bf16_is_chosen_only_where_the_gpu_runs_it_natively(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert gpu_dtype() == "float16"  # a V100/T4: bf16 only emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert gpu_dtype() == "bfloat16"


def test_mfu_peaks_are_keyed_by_exact_device_names():
    assert datasheet_peak("NVIDIA L40S", torch.bfloat16) == 362e12
    assert datasheet_peak("NVIDIA L4", torch.bfloat16) == 121e12
    assert datasheet_peak("NVIDIA H100 PCIe", torch.bfloat16) < datasheet_peak("NVIDIA H100 80GB HBM3", torch.bfloat16)
    assert datasheet_peak("NVIDIA H200", torch.float16) == 989e12
    assert datasheet_peak("NVIDIA L4 something new", torch.bfloat16) is None  # measured instead
    assert datasheet_peak("NVIDIA L4", torch.float32) is None


def test_fsdp_keeps_the_residual_stream_in_float32_as_ddp_does():
    policy = mixed_precision("cuda", torch.bfloat16)
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert policy.cast_forward_inputs is False
    assert mixed_precision("cpu", torch.float32).param_dtype is None


def test_a_batch_is_one_contiguous_block_sliced_into_x_and_y():
    shard = torch.arange(2000).numpy().astype("uint16")
    x, y = PretrainBatches([shard], 16, 4, seed=0).next_batch()
    assert x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()  # one copy to the device
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny().train()
    x, y = torch.randint(0, 300, (2, 48)), torch.randint(0, 300, (2, 48))
    model(x, y)[1].backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing = True
    model(x, y)[1].backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(plain, model.parameters()))


def test_each_process_and_step_draws_its_own_dropout_masks():
    """Every DDP process once drew the same dropout masks (one seed for all); a step's masks now
    come from (seed, step, process) alone: different across the processes and steps of a run, the
    same when a resumed run draws them again."""
    from wikigpt.run.dist import Dist
    from train import dropout_seed

    def mask(step, rank, world):
        torch.manual_seed(dropout_seed(1337, step, Dist(rank=rank, world=world)))
        return torch.nn.functional.dropout(torch.ones(4096), 0.5) > 0

    runs = {(step, rank): mask(step, rank, 8) for step in range(20) for rank in range(8)}
    assert len({tuple(m.tolist()) for m in runs.values()}) == len(runs)
    assert torch.equal(mask(7, 3, 8), runs[7, 3])
    assert dropout_seed(2**32 - 1, 10**7, Dist(rank=1023, world=1024)) < 2**64  # torch.manual_seed takes it


def test_cuda_n_is_made_the_current_device_and_one_not_there_is_refused(monkeypatch):
    """--device=cuda:1 in one process: a bare torch.cuda.synchronize() (the checkpoint copies'
    wait) and CUDA events (the MFU peak) would otherwise act on GPU 0."""
    from wikigpt.run.device import pick_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert pick_device("cuda:1") == "cuda:1" and current == [1]
    for name in ("cuda:2", "cuda:x"):
        with pytest.raises(UsageError, match="2 CUDA GPU"):
            pick_device(name)



def test_under_torchrun_each_process_takes_its_local_gpu_whatever_the_index(monkeypatch):
    """--device=cuda:1 under torchrun: every process made GPU 1 current first (a context on it for
    the whole run), and where each process sees one GPU, cuda:1 was refused."""
    from wikigpt.config import TrainConfig
    from wikigpt.run import dist

    current, joined = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(dist, "enable_tf32", lambda: None)
    monkeypatch.setattr(dist, "attempt_store", lambda rank, world: None)
    monkeypatch.setattr(dist.torch_dist, "init_process_group", lambda *a, **k: joined.append(a[0]))
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(key, value)
    d = dist.setup_dist(TrainConfig(device="cuda:1"))
    assert d.device == "cuda:0" and current == [0] and joined == ["nccl"]
