"""Two CPU ranks through the real DeepSpeed engine (gloo, ZeRO-2): the loss falls, a NaN on one rank is skipped on
all ranks, a crash while saving leaves `latest` intact, and the resumed run ends bit-identical to an uninterrupted
one with the same samples consumed. Plus the `llmbind train` command on the single-process path; two "nodes" of one
rank each on localhost, which must repeat the 2-rank run of one node exactly; and the model folder every run ends with
(the module's save_pretrained, after gathering under ZeRO-3), read back by `llmbind eval` and `llmbind chat`.

DeepSpeed's CPU shm op is used when it is already compiled (TORCH_EXTENSIONS_DIR, default
~/.cache/llmbind/torch_extensions) and skipped otherwise (LLMBIND_DS_SHM=cached); set LLMBIND_DS_SHM=1 to
compile it (70-300 s once) and test with it."""
import json, math, os, shutil, time
from pathlib import Path
import pytest
pytestmark = pytest.mark.slow          # whole training runs: `bash tools/test.sh --slow`
import torch
from safetensors.torch import load_file

from llmbind.config import LLMBindConfig, ConfigError
from llmbind.train import (launch, read_metrics, read_latest, list_checkpoints, warmup_decay_lr, train_command,
                           METRICS, fit, batch_step, optimizer_for)
from llmbind.standin import standin_model, standin_data

# use DeepSpeed's compiled CPU shm op when it is cached; otherwise plain gloo instead of a minutes-long compile
os.environ.setdefault("LLMBIND_DS_SHM", "cached")

M, D, E = "llmbind.standin:standin_model", "llmbind.standin:standin_data", "llmbind.standin:standin_eval"
STEPS, POISON_BATCH = 10, 6       # grad_accum 2: batch 6 of rank 1 is the second micro-batch of step 3


def config():
    return LLMBindConfig.tiny().override(
        f"train.total_steps={STEPS}", "train.warmup_steps=2", "train.lr=1e-2", "train.micro_batch_size=4",
        "train.grad_accum=2", "train.save_every=3", "train.eval_every=5", "train.nproc=2")


def run(out, **kw):
    t0 = time.time()
    try: return launch(2, config(), M, D, out, eval_fn=E, quiet=True, progress=False,
                       data_kwargs={"poison_batches": [POISON_BATCH], "poison_rank": 1}, **kw)
    finally: print(f"launch {out.name} {kw}: {time.time() - t0:.1f} s")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    a = run(root / "a")                                                   # uninterrupted
    with pytest.raises(RuntimeError, match="training failed"):
        run(root / "b", crash_in_save=9)                                  # dies while saving step 9
    ck = root / "b" / "checkpoints"
    crashed = {"latest": read_latest(ck), "published": list_checkpoints(ck),
               "tmp": sorted(p.name for p in ck.glob("*.tmp")),
               "steps": [r["step"] for r in read_metrics(root / "b", "train")]}
    # resumed with the command line, which reuses the run's saved config.json and the tiny preset's stand-in
    # pipeline; the injected NaN (batch 6) lies before the checkpoint, so the data stream is the same
    t0 = time.time()
    assert train_command(["--out", str(root / "b"), "--resume", "--quiet"]) == 0
    print(f"llmbind train --resume: {time.time() - t0:.1f} s")
    b = json.loads((root / "b" / "summary.json").read_text())
    return {"root": root, "a": a, "b": b, "crashed": crashed}


def test_loss_falls_and_everything_is_logged(runs):
    a = runs["root"] / "a"
    tr = read_metrics(a, "train")
    assert [r["step"] for r in tr] == list(range(1, STEPS + 1))
    first, last = tr[:2], tr[-2:]
    for k in ("loss", "loss/ce", "loss/ce/count", "loss/ce/copy"):
        f, l = sum(r[k] for r in first) / 2, sum(r[k] for r in last) / 2
        assert l < f - 0.1, (k, f, l)
    cfg = config().train
    for r in tr:
        assert r["lr"] == pytest.approx(warmup_decay_lr(r["step"], cfg.lr, cfg.warmup_steps, STEPS), abs=1e-12)
        assert math.isfinite(r["grad_norm"]) and r["tokens_per_s"] > 0 and r["step_time_s"] > 0
        assert r["routing/share_e0"] + r["routing/share_e1"] == pytest.approx(1.0)
        assert len(r["samples"]) == 2 and all(len(s) == 2 * 4 for s in r["samples"])   # 2 ranks x grad_accum x micro-batch
    assert [r["step"] for r in read_metrics(a, "eval")] == [5, 10]
    assert runs["a"]["step"] == STEPS and runs["a"]["world_size"] == 2
    assert list_checkpoints(a / "checkpoints") == ["step_000009", "step_000010"] and read_latest(a / "checkpoints") == "step_000010"


def test_fit_is_the_engine_on_one_rank(tmp_path):
    "The plain loop: `fit` with the engine's AdamW, WarmupDecayLR and clipping trains the stand-in as `train` does on one rank."
    cfg = config().override("train.grad_accum=1", "train.nproc=1", f"train.save_every={STEPS}", f"train.eval_every={STEPS}")
    launch(1, cfg, M, D, tmp_path / "engine", quiet=True, progress=False)
    engine = read_metrics(tmp_path / "engine", "train")
    t = cfg.train
    torch.manual_seed(t.seed)                                             # as `train` seeds rank 0 before model_fn
    model = standin_model(cfg)
    plain = []
    fit(batch_step(model, standin_data(cfg, seed=t.seed)), steps=t.total_steps, optimizer=optimizer_for(model, t), clip=t.grad_clip,
        schedule=lambda s: warmup_decay_lr(s, t.lr, t.warmup_steps, t.total_steps), log=lambda r: plain.append((r.loss, r.lr)))
    assert [r["lr"] for r in engine] == pytest.approx([lr for _, lr in plain], abs=1e-12)
    assert [r["loss"] for r in engine] == pytest.approx([l for l, _ in plain], abs=1e-4)


def test_nonfinite_loss_is_skipped_on_all_ranks(runs):
    a = runs["root"] / "a"
    ev = [r for r in read_metrics(a, "event") if r["event"] == "nonfinite_loss"]
    assert len(ev) == 1 and ev[0]["step"] == 3 and ev[0]["micro"] == 1
    assert math.isfinite(ev[0]["losses"][0]) and ev[0]["losses"][1] == "nan"    # only rank 1 saw NaN; both skipped
    assert runs["a"]["skipped_batches"] == 1
    w = load_file(str(a / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in w.values())
    consumed = {i for r in read_metrics(a, "train") for s in r["samples"] for i in s}
    assert not consumed & {i for s in ev[0]["samples"] for i in s}


def test_crash_while_saving_keeps_latest(runs):
    c = runs["crashed"]
    assert c["latest"] == "step_000006"                  # the half-written step 9 was never published
    assert c["published"] == ["step_000003", "step_000006"] and c["tmp"] == ["step_000009.tmp"]
    assert c["steps"] == list(range(1, 10))


def test_resume_is_bit_exact(runs):
    a, b = runs["root"] / "a", runs["root"] / "b"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = read_metrics(a), read_metrics(b)
    strip = lambda recs, kind: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "step_time_s")}
                                for r in recs if r["kind"] == kind]
    assert strip(ra, "train") == strip(rb, "train")      # same losses, lrs, grad norms and samples, step by step
    assert strip(ra, "eval") == strip(rb, "eval")
    assert [r for r in rb if r.get("event") == "resume"][0]["step"] == 6
    ids = [i for r in rb if r["kind"] == "train" for s in r["samples"] for i in s]
    skipped = [i for r in rb if r.get("event") == "nonfinite_loss" for s in r["samples"] for i in s]
    assert len(set(ids + skipped)) == len(ids) + len(skipped) == STEPS * 16 + 8   # nothing repeated, nothing lost
    assert not list((b / "checkpoints").glob("*.tmp")) and read_latest(b / "checkpoints") == "step_000010"


def test_resume_needs_the_same_world_size(runs):
    c = runs["root"] / "a_copy"
    shutil.copytree(runs["root"] / "a", c)
    with pytest.raises(ConfigError, match="written by 2 ranks"):     # one clear line, not the ranks' tracebacks
        launch(1, config().override("train.nproc=1", "train.total_steps=12"), M, D, c, resume=True, quiet=True)


def test_train_command_single_process(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--preset", "tiny", "--steps", "2", "--nproc", "1", "--out", str(out), "--quiet",
            "--set", "train.warmup_steps=1", "train.micro_batch_size=2"]
    t0 = time.time()
    assert train_command(args) == 0
    print(f"llmbind train (1 process, 2 steps): {time.time() - t0:.1f} s")
    assert "done: step 2/2" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1
    assert [r["step"] for r in read_metrics(out, "train")] == [1, 2]
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_command(args)


# --- several nodes ------------------------------------------------------------------------------------
def test_two_nodes_equal_one_node(runs):
    """Two "nodes" of one rank each on localhost (static rendezvous, one shared run folder) repeat the 2-rank run of one
    node: the same losses, learning rates, samples and final weights."""
    import threading
    from llmbind.train import free_port
    out, port, results = runs["root"] / "two_nodes", free_port(), {}
    def node(r):
        try: results[r] = launch(1, config(), M, D, out, eval_fn=E, quiet=True, progress=False, timeout=600,
                                 data_kwargs={"poison_batches": [POISON_BATCH], "poison_rank": 1},
                                 nnodes=2, node_rank=r, master_addr="127.0.0.1", master_port=port)
        except Exception as e: results[r] = e
    t0 = time.time()
    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(f"two nodes x one rank: {time.time() - t0:.1f} s")
    assert all(isinstance(results[r], dict) for r in (0, 1)), results
    assert results[0]["world_size"] == results[1]["world_size"] == 2
    a = runs["root"] / "a"
    strip = lambda d, kind: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "step_time_s")} for r in read_metrics(d, kind)]
    assert strip(out, "train") == strip(a, "train") and strip(out, "eval") == strip(a, "eval")
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list(out.glob("launch_node*"))                 # node 1 kept its spec and log out of the shared folder


def test_nodes_need_a_port(tmp_path):
    with pytest.raises(ValueError, match="master_port"):
        launch(1, config(), M, D, tmp_path / "x", nnodes=2, node_rank=1)
    assert not (tmp_path / "x").exists()                      # checked before anything is written


# --- the model folder -----------------------------------------------------------------------------------
class SavingStandIn(torch.nn.Module):
    "The stand-in with a `save_pretrained` that writes its whole state dict (to see what ZeRO-3 hands it)."
    def __init__(self, cfg):
        super().__init__()
        from llmbind.standin import standin_model
        self.inner = standin_model(cfg)
    def forward(self, **batch): return self.inner(**batch)
    def save_pretrained(self, d):
        from safetensors.torch import save_file
        Path(d).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(d) / "weights.safetensors"))


def saving_standin(cfg): return SavingStandIn(cfg)


@pytest.mark.parametrize("stage", [2, 3])
def test_model_folder_under_zero(tmp_path, monkeypatch, stage):
    "Rank 0 writes RUN/model with the module's save_pretrained; under ZeRO-3 after gathering the partitioned weights."
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    cfg = config().override(f"train.zero_stage={stage}", "train.total_steps=3", "train.save_every=3")
    s = launch(2, cfg, f"{Path(__file__).stem}:saving_standin", D, tmp_path / "run", quiet=True, progress=False)
    run = tmp_path / "run"
    assert s["model"] == str(run / "model")
    folder, full = load_file(str(run / "model" / "weights.safetensors")), load_file(str(run / "model.safetensors"))
    assert folder.keys() == full.keys() and all(torch.equal(folder[k], full[k]) for k in full)
    w = folder["inner.experts.weight"]
    assert w.shape == (2, 64, 64) and w.abs().sum() > 0       # whole tensors, and trained (they start at zero)


@pytest.mark.parametrize("stage", [2, 3])
def test_llmbind_run_ends_with_a_model_folder(tmp_path, stage):
    """The real tiny LLMBind on a small shapes world, trained the way the single-24-GB-GPU recipe trains the 7B model
    (ZeRO-3 or 2, CPU offload, gradient checkpointing, micro-batch 1), ends with RUN/model that `llmbind eval --run`
    and `llmbind chat --checkpoint` find and that reloads to the trained weights."""
    from llmbind.evaluate import find_checkpoint
    from llmbind.model import LLMBindForCausalLM
    from llmbind.synthetic import ensure_shapes_world
    from llmbind.train import pipeline_for
    cfg = LLMBindConfig.tiny().override(
        f"data.data_dir={tmp_path / 'world'}", "data.synthetic_train_size=8", "data.synthetic_eval_size=4",
        "train.total_steps=2", "train.warmup_steps=1", "train.micro_batch_size=1", "train.grad_accum=2", "train.nproc=1",
        "train.save_every=2", "train.eval_every=2", "train.offload=cpu", "train.gradient_checkpointing=true",
        f"train.zero_stage={stage}")
    ensure_shapes_world(tmp_path / "world", cfg)
    t0 = time.time()
    s = launch(1, cfg, out_dir=tmp_path / "run", quiet=True, progress=False, **pipeline_for(cfg))
    print(f"tiny LLMBind, ZeRO-{stage}, 2 steps with offload and checkpointing: {time.time() - t0:.1f} s")
    run = tmp_path / "run"
    assert s["step"] == 2 and find_checkpoint(run) == run / "model"
    assert {p.name for p in (run / "model").iterdir()} >= {"config.json", "model.safetensors", "tokenizer"}
    model = LLMBindForCausalLM.from_pretrained(run / "model", device="cpu")
    full, sd = load_file(str(run / "model.safetensors")), model.state_dict()
    assert full.keys() == sd.keys()
    assert all(torch.allclose(sd[k].float(), full[k].float(), atol=1e-6) for k in full)
