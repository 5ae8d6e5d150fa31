"Integration tests of llmbind.synthetic: determinism across processes, held-out splits on the written files, exact masks, speed."
import json, os, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest

from llmbind.config import LLMBindConfig
from itertools import combinations
from llmbind.tokens import IMAGE_TOKEN
from llmbind.synthetic import (COLOURS, INDEX_VERSION, LEAVES, PLACES, SEG_BANKS, SHAPES, SOUNDS, SPLITS, ShapesWorld,
                               colour_shape_split, ensure_shapes_world, leaf_task, load_shapes_world, pair_split,
                               split_wordings, template_splits_of, tree_digest, write_shapes_world)

SIZES = {"train": 30, "val": 10, "test": 10}

@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "world"
    write_shapes_world(out, SIZES, seed=7)
    return out

def _texts(samples):
    return [m["content"] for s in samples for m in s.messages]

def test_byte_identical_across_processes(world_dir, tmp_path):
    "Another interpreter with another hash seed writes the very same bytes."
    code = ("import sys; from llmbind.synthetic import write_shapes_world, tree_digest; "
            f"write_shapes_world(sys.argv[1], {SIZES!r}, seed=7); print(tree_digest(sys.argv[1]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "again")], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == tree_digest(world_dir)

def test_every_leaf_reads_back(world_dir):
    for split in SPLITS:
        world = load_shapes_world(world_dir, split)
        assert list(world) == list(LEAVES)
        for leaf, samples in world.items():
            assert len(samples) == SIZES[split], (split, leaf)
            assert samples.report.skipped == 0
            for s in samples:
                s.validate()
                assert s.task == leaf_task(leaf)
                assert (s.image is not None) == (leaf.startswith("seg/") or leaf in ("vqa", "det", "cls"))

def test_heldout_pairs_never_in_training_files(world_dir):
    held = [f"{c} {k}" for c in COLOURS for k in SHAPES if colour_shape_split(c, k) != "train"]
    held += [f"{s} {p}" for i, s in enumerate(SOUNDS) for j, p in enumerate(PLACES) if pair_split(i, j, len(SOUNDS)) != "train"]
    train = "\n".join(t for v in load_shapes_world(world_dir, "train").values() for t in _texts(v))
    # the raw files too (refs sentences, ReasonSeg texts)
    train += "\n".join(p.read_text() for p in world_dir.rglob("*.json") if "_train" in p.name or "/train/" in str(p))
    refs = json.loads((world_dir / "refshapes" / "refs(shapes).json").read_text())
    train += "\n".join(s["sent"] for r in refs if r["split"] == "train" for s in r["sentences"])
    assert train
    assert not [p for p in held if p in train]
    test = "\n".join(t for v in load_shapes_world(world_dir, "test").values() for t in _texts(v))
    assert sum(test.count(f"{c} {k}") for c in COLOURS for k in SHAPES if colour_shape_split(c, k) == "test") > 50

def test_user_turns_use_their_split_templates():
    w = ShapesWorld(seed=3)
    for split in SPLITS:
        for leaf in LEAVES:
            for i in range(40):
                rec = w.record(leaf, split, i)
                turns = [u for u, _ in rec.get("turns", [])] + ([rec["text"]] if "text" in rec else [])
                for u in turns: assert template_splits_of(u) == {split}, (split, leaf, u)

def _seg_question_templates(world_dir, split, seed=7) -> dict:
    "{seg leaf: question templates} of a loaded split: each user turn with its class name, phrase or sentence cut out."
    w, out = ShapesWorld(seed=seed), {}
    for leaf, samples in load_shapes_world(world_dir, split, leaves=list(SEG_BANKS)).items():
        got = out.setdefault(leaf, set())
        for i, s in enumerate(samples):
            rec = w.record(leaf, split, i)
            fill = (s.meta["classes"] if leaf == "seg/semantic" else
                    [x for _, xs in rec["refs"] for x in xs] if leaf == "seg/referring" else [rec["text"]])
            turns = [m["content"].replace(IMAGE_TOKEN + "\n", "") for m in s.messages[::2]]
            assert len(turns) == len(fill), (leaf, s.id)
            for u, f in zip(turns, fill):
                assert u.count(f) == 1, (u, f)
                got.add(u.replace(f, "{}"))
    return out

def test_seg_question_templates_disjoint_across_splits(world_dir):
    "The questions the segmentation readers ask come from the split's own bank: no template is shared between splits."
    seen = {split: _seg_question_templates(world_dir, split) for split in SPLITS}
    for leaf in SEG_BANKS:
        for split in SPLITS:
            bank = {t for b in SEG_BANKS[leaf].values() for t in split_wordings(b, split)}
            assert seen[split][leaf], (leaf, split)
            assert all({t.replace("{}", "{name}"), t.replace("{}", "{sent}")} & bank for t in seen[split][leaf]), (leaf, split)
        for a, b in combinations(SPLITS, 2):
            assert not seen[a][leaf] & seen[b][leaf], (leaf, a, b, seen[a][leaf] & seen[b][leaf])
    assert len(seen["train"]["seg/semantic"]) >= 3                  # training sees several wordings

def test_loaded_seg_turns_fit_only_their_split(world_dir):
    for split in SPLITS:
        for leaf, samples in load_shapes_world(world_dir, split, leaves=list(SEG_BANKS)).items():
            for s in samples:
                for m in s.messages[::2]:
                    u = m["content"].replace(IMAGE_TOKEN + "\n", "")
                    assert template_splits_of(u) == {split}, (split, leaf, u)

def test_index_of_another_version_is_refused_and_rewritten(tmp_path):
    out = tmp_path / "old"
    write_shapes_world(out, {"train": {"seg/semantic": 2}}, seed=0)
    f = out / "index.json"
    index = json.loads(f.read_text()); index["version"] = INDEX_VERSION - 1; f.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"version {INDEX_VERSION}; write the world again"): load_shapes_world(out, "train")
    assert ensure_shapes_world(out, {"train": {"seg/semantic": 2}}, seed=0)["version"] == INDEX_VERSION
    assert len(load_shapes_world(out, "train")["seg/semantic"]) == 2

def test_masks_are_exact(world_dir):
    w = ShapesWorld(seed=7)
    world = load_shapes_world(world_dir, "val")
    for i, s in enumerate(world["seg/referring"]):
        rec = w.record("seg/referring", "val", i)
        vis = rec["scene"].masks()
        assert np.array_equal(s.masks, np.stack([vis[t] for t, sents in rec["refs"] for _ in sents]))
    for i, s in enumerate(world["seg/reasoning"]):
        rec = w.record("seg/reasoning", "val", i)
        assert np.array_equal(s.masks[0], rec["scene"].masks()[rec["target"]])
    for i, s in enumerate(world["det"]):
        assert np.allclose(s.boxes, w.record("det", "val", i)["boxes"], atol=1e-6)
    for s in world["vqa"]:                                  # images decode to the rendered pixels
        assert np.asarray(s.load().image).shape == (64, 64, 3)

def test_config_route(tmp_path):
    cfg = LLMBindConfig.tiny()
    cfg.data.synthetic_train_size, cfg.data.synthetic_eval_size = 6, 3
    index = write_shapes_world(tmp_path / "cfg", cfg, seed=1)
    assert index["kinds"] == ["circle", "square", "triangle", "star"] and index["image_size"] == 64
    world = load_shapes_world(tmp_path / "cfg", "val")
    assert all(len(v) == 3 for v in world.values())
    assert all(c < 4 for s in world["cls"] for c in s.classes)

def test_speed(tmp_path):
    t0 = time.process_time()
    write_shapes_world(tmp_path / "fast", {"train": 200, "val": 0, "test": 0}, seed=0)
    assert time.process_time() - t0 < 20      # about 3 s of CPU here
