"Integration checks of llmbind.data: readers feed a torch DataLoader through the collator; lazy and eager reading agree."
import json, random
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from llmbind.tokens import tiny_tokenizer, add_task_tokens
from llmbind.data import (Sample, LLMBindCollator, read_semantic, read_conversations, write_conversations, read_refer,
                          read_reasonseg, read_coco_parts, rle_encode)


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer(); add_task_tokens(t); return t


def _shapes(tmp, n=12, size=(40, 32)):
    "n images with a circle (class 0) and a square (class 1) and their label maps."
    (tmp / "images").mkdir(); (tmp / "annotations").mkdir()
    (tmp / "classes.txt").write_text("circle\nsquare\n")
    r = random.Random(0)
    for k in range(n):
        im, lab = Image.new("RGB", size, "white"), Image.new("L", size, 255)
        for c, draw in ((0, "ellipse"), (1, "rectangle")):
            x, y = r.randrange(size[0] - 12), r.randrange(size[1] - 12)
            getattr(ImageDraw.Draw(im), draw)([x, y, x + 10, y + 10], fill=("red", "blue")[c])
            getattr(ImageDraw.Draw(lab), draw)([x, y, x + 10, y + 10], fill=c)
        im.save(tmp / f"images/{k:03d}.png"); lab.save(tmp / f"annotations/{k:03d}.png")
    return tmp


def test_dataloader_batches(tmp_path, tok):
    root = _shapes(tmp_path)
    samples = read_semantic(root, classes_per_sample=2)
    assert len(samples) == 12 and samples.report.skipped == 0
    col = LLMBindCollator(tok, image_size=32, sam_image_size=64)
    dl = torch.utils.data.DataLoader(samples, batch_size=4, collate_fn=col, shuffle=False)
    seg = tok.convert_tokens_to_ids("<seg>")
    seen = 0
    for b in dl:
        assert b["images"].shape == (4, 3, 32, 32) and b["sam_images"].shape == (4, 3, 64, 64)
        for i, m in enumerate(b["masks"]):
            assert m.shape[0] == int((b["input_ids"][i] == seg).sum()) == int((b["labels"][i] == seg).sum())
            assert m.shape[1:] == b["orig_sizes"][i] == (32, 40)
        seen += len(b["ids"])
    assert seen == 12


def test_lazy_equals_eager(tmp_path, tok):
    root = _shapes(tmp_path, n=5)
    eager, lazy = read_semantic(root, cover_all=True), read_semantic(root, cover_all=True, lazy=True)
    assert [s.messages for s in eager] == [s.messages for s in lazy]
    for a, b in zip(eager, lazy):
        assert callable(b.masks)
        np.testing.assert_array_equal(a.masks, b.load().masks)


def test_write_read_roundtrip_many(tmp_path):
    r = np.random.default_rng(0)
    samples = []
    for k in range(20):
        H, W = int(r.integers(5, 40)), int(r.integers(5, 40))
        n = int(r.integers(0, 3))
        masks = r.random((n, H, W)) < r.random()
        answer = " ".join(["<seg>"] * n) or "Nothing to segment."
        samples.append(Sample(f"s/{k}", "referring", [{"role": "user", "content": "<image>\nSegment them."},
                                                      {"role": "assistant", "content": answer}],
                              image=Image.new("RGB", (W, H)), masks=masks if n else None))
    back = read_conversations(write_conversations(samples, tmp_path / "d.json"))
    assert [s.id for s in back] == [s.id for s in samples]
    for a, b in zip(samples, back):
        if a.masks is None: assert b.masks is None
        else: np.testing.assert_array_equal(a.masks, b.masks)


def test_custom_templates_reach_the_collator(tmp_path, tok):
    "A caller's question and answer banks are the only words asked and answered; the targets do not change."
    root = _shapes(tmp_path, n=6)
    qs, answers = ["Outline each {name}.", "Mark all {name} pixels."], ["Marked <seg>.", "<seg> done."]
    default, custom = read_semantic(root, cover_all=True), read_semantic(root, cover_all=True, questions=qs, answers=answers)
    assert [s.id for s in custom] == [s.id for s in default]
    for s, d in zip(custom, default):
        np.testing.assert_array_equal(s.masks, d.masks)
        for q, name in zip(s.messages[::2], s.meta["classes"]):
            assert q["content"].replace("<image>\n", "") in [t.format(name=name) for t in qs]
        assert all(a["content"] in answers for a in s.messages[1::2])
    b = LLMBindCollator(tok, image_size=32, sam_image_size=64)(list(custom))
    seg = tok.convert_tokens_to_ids("<seg>")
    for i, m in enumerate(b["masks"]): assert m.shape[0] == int((b["labels"][i] == seg).sum())


@pytest.mark.parametrize("kw, msg", [({"questions": []}, "questions is empty"),
                                     ({"questions": "Segment the {name}."}, "must be a list of template strings"),
                                     ({"questions": ["Segment it."]}, "questions[0] 'Segment it.' has no {name}"),
                                     ({"questions": ["Segment the {name} by the {other}."]}, "placeholder other than {name}"),
                                     ({"answers": ["Here."]}, "answers[0] 'Here.' holds 0 <seg>")])
def test_bad_banks_are_refused_before_reading(tmp_path, kw, msg):
    missing = tmp_path / "nothing_here"
    for read in (lambda **k: read_semantic(missing, **k), lambda **k: read_refer(missing / "r.json", missing / "i.json", missing, **k),
                 lambda **k: read_coco_parts(missing / "i.json", missing, **k), lambda **k: read_reasonseg(missing, **k)):
        with pytest.raises(ValueError) as e: read(**kw)
        assert msg in str(e.value)
    with pytest.raises(ValueError, match=r"long_questions\[0\] '\{name\}\?' has a placeholder other than \{sent\}"):
        read_reasonseg(missing, long_questions=["{name}?"])
