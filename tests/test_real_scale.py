"""The real job at tiny size: `llmbind train --preset paper_7b` from checkpoint folders in the formats people download
(an original LLaVA folder with `mm_projector`, a CLIP folder, SAM's official state dict) and datasets in LISA's
folder layout, on two CPU ranks through DeepSpeed ZeRO-2; then `llmbind eval --run` and `llmbind chat --checkpoint`
on that run. Everything is written by tests/fixtures_checkpoints.py and tests/fixtures_datasets.py."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest

from fixtures_checkpoints import write_checkpoints
from fixtures_datasets import write_lisa_datasets
from llmbind.train import read_metrics

pytestmark = pytest.mark.slow          # whole training runs: `bash tools/test.sh --slow`

os.environ.setdefault("LLMBIND_DS_SHM", "cached")
STEPS = 4


def cli(*args, timeout=900):
    "Run the `llmbind` command in a fresh process; return (exit status, stdout + stderr)."
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "llmbind.cli", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=timeout)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    ckpt, data = root / "checkpoints", root / "dataset"
    # the sizes of the LLM and of CLIP are not given: they come from the folders (said on stderr)
    sets = [s for s in write_checkpoints(ckpt)
            if not s.startswith(("llm.", "vision.", "data.image_size")) or s.startswith("llm.model_max_length")]
    write_lisa_datasets(data)
    out = root / "run"
    rc, log = cli("train", "--preset", "paper_7b", "--checkpoints", ckpt, "--data-root", data, "--set", *sets,
                  f"train.save_every={STEPS}", f"train.eval_every={STEPS}", "--steps", STEPS, "--nproc", 2,
                  "--out", out, "--quiet")
    assert rc == 0, log[-4000:]
    return {"root": root, "ckpt": ckpt, "data": data, "out": out, "log": log}


def test_train_runs_the_paper_preset_on_two_ranks(run):
    out = run["out"]
    tr = read_metrics(out, "train")
    assert all(math.isfinite(r["loss"]) for r in tr)
    assert [r["step"] for r in tr] == list(range(1, STEPS + 1))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "paper_7b" and cfg["train"]["nproc"] == 2 and cfg["train"]["zero_stage"] == 2
    assert Path(cfg["llm"]["pretrained_path"]).name == "LLaVA-Lightning-7B-v1-1"
    llava = json.loads((run["ckpt"] / "LLaVA-Lightning-7B-v1-1" / "config.json").read_text())
    assert (cfg["llm"]["hidden_size"], cfg["llm"]["num_layers"]) == (llava["hidden_size"], llava["num_hidden_layers"])
    assert cfg["vision"]["projector"] == "linear"                      # LLaVA-Lightning's mm_projector is one Linear
    assert "from the checkpoints: llm.hidden_size: 4096 ->" in run["log"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == STEPS


def test_every_loss_term_is_logged(run):
    keys = set().union(*(r.keys() for r in read_metrics(run["out"], "train")))
    for k in ("loss/ar", "loss/mask_bce", "loss/mask_dice", "loss/aux", "loss/total"):
        assert k in keys, (k, sorted(keys))
    assert any(k.startswith("routing/") for k in keys)          # expert loads of the LoRA-MoE layers
    assert read_metrics(run["out"], "eval"), "no evaluation record"


def test_run_ends_with_a_model_folder(run):
    model = run["out"] / "model"
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert (model / "tokenizer").is_dir()


def test_chat_reads_the_run(run, tmp_path):
    rc, log = cli("chat", "--checkpoint", run["out"], "draw a red fox", "--out", tmp_path / "chat")
    assert rc == 0, log[-3000:]


def test_eval_reads_the_run(run, tmp_path):
    rc, log = cli("eval", "--run", run["out"], "--benchmark", "refcoco:val", "--data-root", run["data"], "--limit", 2,
                  "--out", tmp_path / "bench.json")
    assert rc == 0, log[-3000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res, res


def test_the_llava_projector_is_what_trains_with(run):
    "The image path is LLaVA's: the run's saved projector is the folder's `model.mm_projector` (frozen, as in LISA)."
    import torch
    from safetensors.torch import load_file
    folder = run["ckpt"] / "LLaVA-Lightning-7B-v1-1"
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())["weight_map"]
    saved = load_file(str(run["out"] / "model" / "model.safetensors"))
    for name in ("weight", "bias"):
        key = f"model.mm_projector.{name}"
        shard = torch.load(folder / index[key], map_location="cpu", weights_only=True)      # the shard that holds it
        assert torch.equal(saved[f"projector.{name}"], shard[key]), key
