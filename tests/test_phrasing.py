"Tests of the shapes world's phrasing space (ShapesWorld(phrasing='space')): size, held-out parts, determinism, unchanged answers."
import json, os, re, subprocess, sys
from collections import Counter
from itertools import combinations, product
import pytest

from llmbind.tokens import IMAGE_TOKEN, parse_response
from llmbind.synthetic import (AUDIO_ANSWERS, CHAT_ANSWERS, COLOURS, EDIT_ANSWERS, GEN_ANSWERS, LEAVES, MOTIONS, PHRASE_FRAMES,
                               PHRASE_PARTS, PHRASINGS, PLACES, SEG_BANKS, SHAPES, SOUNDS, SPLITS, VIDEO_ANSWERS, ShapesWorld,
                               article, compose_request, describe_scene, ensure_shapes_world, held_out_families, load_shapes_world,
                               phrasing_bank, phrasing_leaks, phrasing_space_size, sample_rng, seg_question_args, tree_digest,
                               write_shapes_world)
from llmbind import synthetic as syn

SIZES = {"train": 10, "val": 4, "test": 4}
N = 30                                           # records per leaf and split in the record-level checks

@pytest.fixture(scope="module")
def space():
    return ShapesWorld(seed=11, phrasing="space")

@pytest.fixture(scope="module")
def records(space):
    return {sp: [space.record(leaf, sp, i) for leaf in LEAVES for i in range(N)] for sp in SPLITS}

@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phrasing") / "world"
    write_shapes_world(out, SIZES, seed=4, phrasing="space")
    return out

def _users(rec):
    return [u for u, _ in rec.get("turns", [])] + ([rec["text"]] if "text" in rec else [])

def _words(t):
    return " ".join(re.findall(r"[a-z']+", t.lower()))

def test_default_is_the_template_world():
    assert PHRASINGS[0] == ShapesWorld().phrasing == "templates"
    w, wt = ShapesWorld(seed=2), ShapesWorld(seed=2, phrasing="templates")
    for leaf in LEAVES:
        a, b = w.record(leaf, "val", 3), wt.record(leaf, "val", 3)
        assert "parts" not in a and {k: v for k, v in a.items() if k != "scene"} == {k: v for k, v in b.items() if k != "scene"}
    assert seg_question_args("seg/referring", "test") == seg_question_args("seg/referring", "test", "templates", 5)

def test_errors():
    with pytest.raises(ValueError, match="unknown phrasing"): ShapesWorld(phrasing="gpt")
    with pytest.raises(ValueError, match="unknown phrasing"): seg_question_args("seg/semantic", "train", "gpt")
    with pytest.raises(KeyError, match="no phrasing space"): compose_request("paint", "train", sample_rng(0))
    with pytest.raises(ValueError, match="unknown split"): compose_request("gen", "dev", sample_rng(0))
    with pytest.raises(KeyError, match="no phrasing space"): phrasing_space_size("paint")

def test_space_is_large():
    size = phrasing_space_size()
    assert set(size) == set(PHRASE_FRAMES)
    assert all(size["gen"][s] >= 10_000 for s in SPLITS)
    assert all(size[t][s] >= 1_000 for t in ("gen/new", "audio", "video", "det", "cls", "seg", "seg/semantic") for s in SPLITS)
    assert all(v > 0 for by in size.values() for v in by.values())

def _enumerate(task, split):
    sp, out = (("train",) if split == "train" else ("train", split)), set()
    for fs in sp:
        for _, t in PHRASE_FRAMES[task][fs]:
            slots = syn._slots(t)
            for combo in product(*[syn._members(f, sp) for f in slots]):
                if split != "train" and split not in {fs} | {syn._PART_SPLIT[f, p] for f, p in zip(slots, combo)}: continue
                fill = dict(zip(slots, combo))
                out.add(syn._sentence_case(syn._SLOT_RE.sub(lambda m: fill.get(m.group(1), m.group(0)), t)))
    return out

@pytest.mark.parametrize("task", ["gen/new", "edit/move", "audio/followup", "vqa/colour", "cls", "seg/long", "chat"])
def test_size_counts_distinct_sentences(task):
    assert {s: len(_enumerate(task, s)) for s in SPLITS} == phrasing_space_size(task)

def test_no_held_out_part_in_another_split():
    assert phrasing_leaks() == []
    held = held_out_families()
    assert set(held) >= {f"{t}/frame" for t in PHRASE_FRAMES} | {"gen_verb", "image_obj", "open", "move_verb", "chat/frame"}
    for f, by in PHRASE_PARTS.items():                               # a part has one split; only training parts may be empty
        every = [p for s in SPLITS for p in by[s]]
        assert len(every) == len(set(every)) and "" not in by["val"] + by["test"], f

def test_composed_wordings_follow_the_split_rule():
    for task in PHRASE_FRAMES:
        for s in SPLITS:
            for i in range(150):
                t, kind, lab = compose_request(task, s, sample_rng(3, task, s, i))
                used = {x[2] for x in lab}
                assert used <= {"train", s} and (s == "train" or s in used), (task, s, t, lab)
                assert lab[0][0] == f"{task}/frame" and all(syn._PART_SPLIT[f, p] == x for f, p, x in lab[1:])

def test_records_are_deterministic(space):
    again = ShapesWorld(seed=11, phrasing="space")
    for leaf in LEAVES:
        a, b = space.record(leaf, "test", 7), again.record(leaf, "test", 7)
        assert {k: v for k, v in a.items() if k != "scene"} == {k: v for k, v in b.items() if k != "scene"}
    assert ShapesWorld(seed=12, phrasing="space").record("interactive/image_gen", "train", 0) != space.record("interactive/image_gen", "train", 0)

def test_every_user_turn_is_labelled_and_held_out(records):
    for sp in SPLITS:
        for r in records[sp]:
            assert len(r["parts"]) == len(_users(r)), r["id"]
            for u, lab in zip(_users(r), r["parts"]):
                used = {x[2] for x in lab}
                assert used <= {"train", sp} and (sp == "train" or sp in used), (sp, u, lab)

def test_held_out_words_never_in_another_split(records):
    "On the sentences themselves: no val/test part's words occur in a user turn of another split (content included)."
    texts = {sp: [_words(u) for r in records[sp] for u in _users(r)] for sp in SPLITS}
    for f, by in PHRASE_PARTS.items():
        for s in ("val", "test"):
            for p in by[s]:
                rx = re.compile(r"\b" + re.escape(_words(p)) + r"\b")
                for o in SPLITS:
                    if o != s: assert not [t for t in texts[o] if rx.search(t)], (f, p, s, o)
    train = "\n".join(texts["train"])
    assert "sketch" not in train and "render" not in train and "good afternoon" not in train

def test_templates_train_gives_training_wordings():
    wt = ShapesWorld(seed=11, phrasing="space", templates="train")
    for leaf in LEAVES:
        for i in range(10):
            r = wt.record(leaf, "test", i)
            assert all({x[2] for x in lab} <= {"train"} for lab in r["parts"]), r["id"]

ART = re.compile(r"\b([Aa]n?) ([A-Za-z]+)")

def _bad_articles(text):
    return [m.group(0) for m in ART.finditer(text) if (m.group(1).lower() == "an") != (article(m.group(2)) == "an")]

def test_answers_parse_and_prompts_stay_canonical(records):
    captions = {f"{s} {p}" for s in SOUNDS for p in PLACES}
    video = re.compile(rf"an? ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(m for m, _ in MOTIONS)})")
    leads = {re.escape(a.split("{call}")[0]) for bank in (GEN_ANSWERS, EDIT_ANSWERS, AUDIO_ANSWERS, VIDEO_ANSWERS) for a in bank}
    answer_rx = re.compile(f"(?:{'|'.join(leads)})<\\w+> .+ </\\w+>")
    chat_rx = re.compile(r"An? \w+ (has|is a flat shape with) \w+ corners\.")
    chat_answers = set(CHAT_ANSWERS.values())
    for sp in SPLITS:
        for r in records[sp]:
            calls, interactive = [], r["id"].startswith(("image_gen", "image_edit", "audio", "video"))
            for u, a in r.get("turns", []):
                p = parse_response(a)
                assert p.ok, (a, p.problems)
                assert not _bad_articles(u) and not _bad_articles(a), (u, a)
                calls += [c for c in p if c.prompt]
                if interactive: assert answer_rx.fullmatch(a) if list(p) else (a in chat_answers or chat_rx.fullmatch(a)), a
            if "pictures" in r: assert [c.prompt for c in calls] == [describe_scene(s) for s in r["pictures"]]
            for c in calls:
                if c.task == "audio": assert c.prompt in captions, c.prompt
                if c.task == "video": assert video.fullmatch(c.prompt), c.prompt

def test_few_repeated_requests():
    "Training requests (turns answered with a task call) almost never repeat; with the templates they do."
    rep = {}
    for ph in PHRASINGS:
        w = ShapesWorld(seed=0, phrasing=ph)
        reqs = [u for i in range(800) for u, a in w.record("interactive/image_gen", "train", i)["turns"] if "<gen>" in a]
        rep[ph] = len(reqs) - len(set(reqs))
    assert rep["space"] <= 8 < rep["templates"], rep
    w = ShapesWorld(seed=0, phrasing="space")
    for leaf in ("interactive/audio", "interactive/video", "det", "cls"):
        first = [w.record(leaf, "train", i)["turns"][0][0] for i in range(500)]
        first = [u for u in first if u]
        assert len(first) - len(set(first)) <= len(first) // 20, (leaf, Counter(first).most_common(3))

def test_written_world_records_and_reads_the_phrasing(world_dir, tmp_path):
    index = json.loads((world_dir / "index.json").read_text())
    assert index["phrasing"] == "space"
    assert ensure_shapes_world(world_dir, SIZES, seed=4, phrasing="space")["phrasing"] == "space"     # the same world: kept
    plain = tmp_path / "plain"
    assert "phrasing" not in write_shapes_world(plain, {"train": 2}, seed=4)
    assert "phrasing" not in json.loads((plain / "index.json").read_text())
    assert ensure_shapes_world(plain, {"train": 2}, seed=4, phrasing="space")["phrasing"] == "space"   # another world: rewritten
    for split in SPLITS:
        for leaf, samples in load_shapes_world(world_dir, split).items():
            assert len(samples) == SIZES[split] and samples.report.skipped == 0, (leaf, split)
            for s in samples: s.validate()

def test_loaded_seg_questions_come_from_the_split_bank(world_dir):
    banks = {sp: {leaf: {t: lab for task in syn._SEG_SPACES[leaf].values() for t, lab in phrasing_bank(task, sp, seed=4, labels=True)}
                  for leaf in SEG_BANKS} for sp in SPLITS}
    for sp in SPLITS:
        w = ShapesWorld(seed=4, phrasing="space")
        for leaf, samples in load_shapes_world(world_dir, sp, leaves=list(SEG_BANKS)).items():
            for i, s in enumerate(samples):
                rec = w.record(leaf, sp, i)
                fill = (s.meta["classes"] if leaf == "seg/semantic" else [x for _, xs in rec["refs"] for x in xs]
                        if leaf == "seg/referring" else [rec["text"]])
                for m, f in zip(s.messages[::2], fill):
                    u = m["content"].replace(IMAGE_TOKEN + "\n", "")
                    assert not _bad_articles(u), u
                    lab = banks[sp][leaf].get(u.replace(f, "{name}")) or banks[sp][leaf].get(u.replace(f, "{sent}"))
                    assert lab is not None, (sp, leaf, u)
                    assert {x[2] for x in lab} <= {"train", sp} and (sp == "train" or sp in {x[2] for x in lab})
    for a, b in combinations(SPLITS, 2):
        assert not any(set(banks[a][leaf]) & set(banks[b][leaf]) for leaf in SEG_BANKS)

def test_byte_identical_across_processes(world_dir, tmp_path):
    code = ("import sys; from llmbind.synthetic import write_shapes_world, tree_digest; "
            f"write_shapes_world(sys.argv[1], {SIZES!r}, seed=4, phrasing='space'); print(tree_digest(sys.argv[1]))")
    env = {**os.environ, "PYTHONHASHSEED": "777", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "again")], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == tree_digest(world_dir)


# ----------------------------------------------------------------------------- variety: fewer training wordings
def test_variety_keeps_the_first_training_parts_and_frames():
    "variety=k: every training wording uses only the first k parts of each family (plus the empty one) and the first k frames."
    for k in (1, 2):
        w = ShapesWorld(seed=3, phrasing="space", variety=k)
        allowed = {f: {p for p in by["train"] if not p} | set([p for p in by["train"] if p][:k]) for f, by in PHRASE_PARTS.items()}
        frames = {f"{t}/frame": {tpl for _, tpl in fr["train"][:k]} for t, fr in PHRASE_FRAMES.items()}
        seen = Counter()
        for leaf in LEAVES:
            for i in range(N):
                for labels in w.record(leaf, "train", i)["parts"]:
                    for fam, part, split in labels:
                        if fam == "template": continue
                        assert split == "train"
                        assert part in (frames[fam] if fam.endswith("/frame") else allowed[fam]), (k, fam, part)
                        seen[fam] += 1
        assert seen["gen_verb"] > 0 and seen["gen/frame"] > 0             # the check saw composed requests


def test_variety_counts_and_leaves_val_and_test_alone(tmp_path):
    sizes = [sum(phrasing_space_size(variety=k)[t]["train"] for t in PHRASE_FRAMES) for k in (1, 2, 4)]
    full = sum(v["train"] for v in phrasing_space_size().values())
    assert sizes == sorted(sizes) and sizes[-1] < full and sizes[0] >= len(PHRASE_FRAMES)
    a, b = ShapesWorld(seed=5, phrasing="space", variety=1), ShapesWorld(seed=5, phrasing="space")
    for leaf in LEAVES:
        for sp in ("val", "test"):
            assert [a.record(leaf, sp, i) for i in range(8)] == [b.record(leaf, sp, i) for i in range(8)]
    assert [a.record("interactive/image_gen", "train", i) for i in range(8)] != [b.record("interactive/image_gen", "train", i) for i in range(8)]
    small = {"train": 4, "val": 2, "test": 2}
    write_shapes_world(tmp_path / "v1", small, seed=5, phrasing="space", variety=1)
    write_shapes_world(tmp_path / "v0", small, seed=5, phrasing="space")
    idx = json.loads((tmp_path / "v1" / "index.json").read_text())
    assert idx["variety"] == 1 and "variety" not in json.loads((tmp_path / "v0" / "index.json").read_text())
    v1, v0 = load_shapes_world(tmp_path / "v1", "test"), load_shapes_world(tmp_path / "v0", "test")
    assert all([s.messages for s in v1[l]] == [s.messages for s in v0[l]] for l in v0)
    assert ensure_shapes_world(tmp_path / "v1", small, seed=5, phrasing="space", variety=1)["variety"] == 1   # kept, not rewritten
    assert "variety" not in ensure_shapes_world(tmp_path / "v1", small, seed=5, phrasing="space")             # rewritten without it


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_variety_errors(bad):
    with pytest.raises(ValueError, match="variety"): ShapesWorld(phrasing="space", variety=bad)
    with pytest.raises(ValueError, match="variety"): compose_request("gen", "train", sample_rng(0, "x"), bad)
    with pytest.raises(ValueError, match="phrasing"): ShapesWorld(variety=1)
