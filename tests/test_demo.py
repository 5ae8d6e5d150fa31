"""Smoke test of `llmbind demo`: a tiny world, a few steps of both stages (stage B on 2 DeepSpeed CPU ranks), a short evaluation, the report."""
import json, shutil
import pytest
from llmbind.cli import UserError, main as cli_main
from llmbind.demo import demo_command

@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(["demo", "--out", str(out), "--quick", "--steps-a", "3", "--copy-steps", "2", "--steps-b", "3"])
    assert rc == 0
    r = json.loads((out / "report.json").read_text())
    sets = r["evaluation"]["sets"]
    assert set(sets) == {"test", "pairs"}                                   # the test split, and its pairs in training phrasings
    for rep in sets.values():
        for k in ("dispatch_accuracy", "prompt_exact_match", "seg_false_positive_rate", "chat_no_tag_rate", "confusion", "segmentation"):
            assert k in rep and k in rep["first_turns"] and k in rep["free_running"]
    assert [t["target"] for t in r["targets"]] == ["dispatch_accuracy", "prompt_exact_match", "referring_ciou",
                                                   "seg_false_positive_rate", "chat_no_tag_rate", "wall_time_s"]
    assert r["config"]["llm"]["tokenizer_path"] == str((out / "tokenizer").resolve())
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["chat"]["system"] == "A chat." and saved["llm"]["pretrained_path"] == "../stage_a/llm"    # relocatable
    assert json.loads((out / "data_pairs" / "index.json").read_text())["templates"] == "train"
    assert r["stage_a"]["steps"] == 5 and r["stage_a"]["copy_steps"] == 2 and r["stage_b"]["step"] == 3
    assert r["stage_c"]["steps"] == 10 and r["stage_c"]["states"] > 0 and "stage_c" in r["timings"]   # quick: 10 mask-side steps
    last = json.loads((out / "stage_a" / "metrics.jsonl").read_text().splitlines()[-1])   # 2 copy steps, then the mixture
    assert last["phase"] == "mixture" and last["step"] == 5 and r["stage_b"]["world_size"] == 2
    for f in ("report.md", "losses.png", "routing.png", "masks.png", "stage_b/model.safetensors", "stage_a/llm/config.json",
              "tokenizer/tokenizer.json", "eval_records_pairs.jsonl", "model/config.json", "confusion.png", "model/tokenizer/tokenizer.json"):
        assert (out / f).is_file(), f
    recs = [json.loads(l) for l in (out / "stage_b" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in recs if x["kind"] == "train"]
    assert train and any(k.startswith("routing/L0.") for k in train[-1]) and any(k.startswith("loss/ar/") for k in train[-1])
    printed = capsys.readouterr().out
    assert "test split (unseen pairs and phrasings), all turns: dispatch" in printed
    assert "unseen pairs, training phrasings, first turns: dispatch" in printed
    # `llmbind eval --run` repeats the demo's own evaluation and gets report.json's numbers exactly, even with the run moved
    moved = tmp_path / "moved"; shutil.move(out, moved)
    capsys.readouterr()
    assert cli_main(["eval", "--run", str(moved), "--quiet"]) == 0
    again = json.loads((moved / "eval.json").read_text())
    assert again["sets"] == sets
    assert "the same numbers as report.json" in capsys.readouterr().out
    shutil.move(moved, out)
    # tools/probe_requests.py reads the run: every hand-worded request answered and scored
    r = _tool("probe_requests").probe(out, max_new_tokens=8)
    assert r["n"] == 52 and sum(b for _, b in r["by_kind"].values()) == 52 and 0 <= r["dispatch"] <= 1
    assert len(r["misses"]) == 52 - sum(a for a, _ in r["by_kind"].values())
    # tools/seg_ceiling.py reads the run's <seg> states through llmbind.demo's cache
    capsys.readouterr()
    _tool("seg_ceiling").main([str(out), "--records", "4", "--steps", "2", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "held-out-pair <seg> states" in printed and "the run as it is: referring cIoU training" in printed
    # `llmbind train` trains the real model on the demo's world and base: its stage-B config, other settings
    more = tmp_path / "more"
    assert cli_main(["train", "--config", str(out / "stage_b" / "config.json"), "--steps", "2", "--nproc", "1",
                     "--out", str(more), "--quiet"]) == 0
    s = json.loads((more / "summary.json").read_text())
    assert s["step"] == 2 and s["world_size"] == 1 and not s["shm_op"]       # one rank: no shared-memory op
    recs = [json.loads(l) for l in (more / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert any(k.startswith("loss/ar/") for k in recs[-1]) and any(k.startswith("routing/L") for k in recs[-1])
    capsys.readouterr()
    # `llmbind eval` finds the demo's saved model, and scores it on the test split in training phrasings
    assert cli_main(["eval", "--run", str(out), "--data", str(out / "data_pairs"), "--limit", "1", "--quiet", "--no-forced"]) == 0
    assert (out / "eval_test.json").is_file() and "llmbind eval: test split" in capsys.readouterr().out
    # a data folder without a shapes world is one clear line
    (tmp_path / "empty").mkdir()
    assert cli_main(["train", "--set", f"data.data_dir={tmp_path / 'empty'}", "--out", str(tmp_path / "x")]) == 2
    assert "holds no shapes world" in capsys.readouterr().err
    # an existing run folder is refused without --overwrite
    assert cli_main(["demo", "--out", str(out), "--quick"]) == 2
    assert "already exists" in capsys.readouterr().err

def test_demo_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="--steps-a"): demo_command(["--out", str(tmp_path / "x"), "--steps-a", "0"])
    with pytest.raises(UserError, match="--mask-steps"): demo_command(["--out", str(tmp_path / "x"), "--mask-steps", "-1"])
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"): demo_command(["--out", str(tmp_path / "f")])

def _tool(name):
    "A script of tools/ as a module."
    import importlib.util, pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path); mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def test_probe_requests_scoring(tmp_path):
    "tools/probe_requests.py: the right first call (no call for VQA/chat), the prompt compared case-folded, spaces collapsed."
    m = _tool("probe_requests")
    assert m.score("gen", "a red star", "Sure: <gen>  A Red star </gen>") == (True, True)
    assert m.score("gen", "a red star", "Sure: <gen> a blue star </gen>") == (True, False)
    assert m.score("gen", "a red star", "Here: <vid_cap> a red star </vid_cap>") == (False, False)
    assert m.score("det", None, "It is <seg>.") == (False, None) and m.score("det", None, "Sure, <det>.") == (True, None)
    assert m.score("none", None, "Good morning to you too.") == (True, None)
    assert m.score("none", None, "Here: <gen> a red star </gen>") == (False, None)
    assert {k for _, k, _, _ in m.cases(None)} == {"gen", "audio", "video", "seg", "det", "cls", "none"} and len(m.cases(None)) == 52
    with pytest.raises(SystemExit, match="no model/ folder"): m.probe(tmp_path)

def test_induction_lr_script(capsys):
    "tools/induction_lr.py runs a few steps per learning rate and prints one table row per checkpoint."
    mod = _tool("induction_lr")
    mod.main(["--lrs", "1e-3", "3e-3", "--steps", "4", "--every", "2", "--batch", "4"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| step | lr 0.001 | lr 0.003 |"
    rows = [l for l in out if l.startswith("| 2 |") or l.startswith("| 4 |")]
    assert len(rows) == 2
    for r in rows:
        vals = [float(v) for v in r.strip("|").split("|")[1:]]
        assert len(vals) == 2 and all(0.0 <= v <= 1.0 for v in vals)
    assert "chance is 1/" in out[-1]
