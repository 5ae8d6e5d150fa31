"""The pipeline layer on LISA's datasets (the miniature folder of `fixtures_datasets.write_lisa_datasets`): every leaf of
the paper's mixture read through `read_dataset`, the stream exactly resumable with and without worker processes,
per-dataset frequencies inside the leaves, lazy samples, the val split without the datasets that have none, and
one training run through `llmbind.train.launch` with the functions of `pipeline_functions`."""
import collections, json, os, sys, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_datasets import write_lisa_datasets
from llmbind.config import LLMBindConfig, ConfigError, mixture_leaf_probs, paper_datasets
from llmbind.pipeline import (DataStream, build_model, eval_fn, pipeline_functions, read_sources, sampling_tree,
                              stats_fn)

os.environ.setdefault("LLMBIND_DS_SHM", "cached")       # DeepSpeed's CPU shm op only when compiled already


@pytest.fixture(scope="module")
def lisa(tmp_path_factory):
    return write_lisa_datasets(tmp_path_factory.mktemp("lisa") / "dataset", n=3)


@pytest.fixture(scope="module")
def cfg(lisa):
    "The tiny model on LISA's folder: the paper's mixture, every leaf with its datasets (`paper_datasets`)."
    return LLMBindConfig.tiny().override(f"data.data_dir={lisa}", "train.micro_batch_size=4",
                                         f"data.datasets={json.dumps(paper_datasets())}")


def test_every_leaf_reads_its_datasets(cfg):
    tree, samples = read_sources(cfg)
    want, _ = sampling_tree(cfg.data.mix, cfg.data.datasets)
    assert tree == want
    assert sorted(samples) == sorted(f"{leaf}/{s['reader']}" for leaf, specs in paper_datasets().items() for s in specs)
    assert all(len(v) > 0 for v in samples.values())
    lazy = [s for v in samples.values() for s in v]
    assert all(not hasattr(s.image, "size") for s in lazy)                       # image paths, nothing decoded
    assert all(s.masks is None or callable(s.masks) for s in lazy)               # masks are closures until loaded


def _batches(cfg, workers, n, state=None, **kw):
    d = DataStream(cfg, seed=3, group=2, num_workers=workers, **kw)
    if state is not None: d.load_state_dict(json.loads(json.dumps(state)))
    out = [next(d) for _ in range(n)]
    st = d.state_dict(); d.close()
    return out, st


def _same(xs, ys):
    assert [x["ids"] for x in xs] == [y["ids"] for y in ys]
    for x, y in zip(xs, ys):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
        assert (x["images"] is None) == (y["images"] is None) and (x["images"] is None or torch.equal(x["images"], y["images"]))
        assert len(x["masks"]) == len(y["masks"]) and all(torch.equal(a, b) for a, b in zip(x["masks"], y["masks"]))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(cfg, workers):
    ref, _ = _batches(cfg, 0, 8)
    a, st = _batches(cfg, workers, 3)                # stopped in the middle of a length group
    b, _ = _batches(cfg, workers, 5, st)
    _same(ref, a + b)
    if workers:
        _same(ref, _batches(cfg, workers, 8)[0])     # workers change nothing
        c, _ = _batches(cfg, 0, 5, st)               # and a state taken with workers resumes without them
        _same(ref, a + c)


def test_ranks_share_one_stream(cfg):
    glob = DataStream(cfg, batch_size=4, seed=1).sampler.take(16)
    for r in (0, 1):
        d = DataStream(cfg, batch_size=2, seed=1, rank=r, world_size=2)
        assert [x for _ in range(4) for x in next(d.plan)] == glob[r::2]


def test_dataset_frequencies_inside_leaves(cfg):
    d = DataStream(cfg, seed=0)
    probs = mixture_leaf_probs(d.sampler.tree)
    n = 30_000
    counts = collections.Counter(k for k, _ in d.sampler.take(n))
    names = list(probs)
    assert chisquare([counts[k] for k in names], [probs[k] * n for k in names]).pvalue > 1e-3
    sem = [k for k in names if k.startswith("seg/semantic/")]
    assert len(sem) == 4 and max(counts[k] for k in sem) / min(counts[k] for k in sem) < 1.2   # equal weights inside the leaf


def test_cache_stays_bounded(cfg):
    d = DataStream(cfg, seed=0, cache_size=6)
    tasks = set()
    for _ in range(12):
        b = next(d); tasks |= set(b["tasks"])
        assert len(d.cache) <= 6
    assert {"semantic", "referring"} <= tasks
    assert all(s.masks is None or callable(s.masks) for v in d.samples.values() for s in v)


def test_val_split_leaves_out_what_has_none(cfg):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tree, samples = read_sources(cfg, "val")
    assert "vqa" not in tree and not any(k.startswith("vqa/") for k in samples)          # LLaVA-Instruct: train only
    assert any("llava_instruct" in str(x.message) for x in w)
    assert "seg/semantic/ade20k" in samples


def test_model_eval_and_stats(cfg):
    m = build_model(cfg)
    b = next(DataStream(cfg, seed=0)); b.pop("ids")
    m.train(); m(**b).loss.backward()
    assert stats_fn(m) and all(k.startswith("routing/L") for k in stats_fn(m))
    m.eval()
    with torch.no_grad(): e1, e2 = eval_fn(m, cfg), eval_fn(m, cfg)
    assert e1 == e2 and np.isfinite(e1["ar"])        # the same held-out batches at every evaluation


def test_launch_one_rank(cfg, tmp_path):
    from llmbind.train import launch, read_metrics
    c = cfg.override("train.total_steps=2", "train.eval_every=2", "train.save_every=2", "train.nproc=1", "data.num_workers=1")
    s = launch(1, c, out_dir=tmp_path / "run", quiet=True, progress=False, **pipeline_functions(c))
    assert s["step"] == 2
    recs = read_metrics(tmp_path / "run")
    assert any(r.get("kind") == "eval" for r in recs) and any(k.startswith("routing/") for r in recs for k in r)


def test_config_without_data(tmp_path):
    with pytest.raises(ConfigError, match="data.data_dir is not set"): pipeline_functions(LLMBindConfig.tiny())
    one = LLMBindConfig.tiny().override(f"data.data_dir={tmp_path}",
                                        'data.datasets={"vqa": [{"reader": "conversations", "path": "x/{split}.json"}]}')
    with pytest.raises(ConfigError, match="names none for seg/semantic"): pipeline_functions(one)
