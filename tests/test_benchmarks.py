"Tests for LISA's segmentation benchmarks in llmbind.evaluate: the dataset layout, the prompts, the scores, `llmbind eval --benchmark`."
import contextlib, io, json, pickle
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from llmbind import evaluate as ev
from llmbind.config import LLMBindConfig
from llmbind.data import rle_encode

torch.set_num_threads(1)
H, W = 16, 20


# ----------------------------------------------------------------------------- a dataset in LISA's layout
def rect(x0, y0, x1, y1):
    "A COCO polygon (flat x, y list); PIL fills it with its outline: (x1 - x0 + 1) * (y1 - y0 + 1) pixels."
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_refer(root: Path, name: str, split_by: str, image_sub: str, refs: list, anns: list, file_name: str):
    "refer_seg/<name>/refs(<split_by>).p pickled as REFER ships it, instances.json, and the image."
    d, imgs = root / "refer_seg" / name, root / "refer_seg" / image_sub
    d.mkdir(parents=True, exist_ok=True); imgs.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (90, 90, 90)).save(imgs / file_name)
    coco = {"images": [{"id": 7, "file_name": file_name, "height": H, "width": W}],
            "annotations": [{"id": i, "image_id": 7, "category_id": 1, "segmentation": seg, "area": 0, "bbox": [0, 0, 1, 1],
                             "iscrowd": 0} for i, seg in anns],
            "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}]}
    (d / "instances.json").write_text(json.dumps(coco))
    full = []
    for k, (ann_id, split, sents) in enumerate(refs):
        full.append({"ref_id": 100 + k, "ann_id": ann_id, "image_id": 7, "category_id": 1, "split": split, "file_name": file_name,
                     "sent_ids": list(range(10 * k, 10 * k + len(sents))),
                     "sentences": [{"sent_id": 10 * k + j, "sent": s, "raw": s.upper(), "tokens": s.split()} for j, s in enumerate(sents)]})
    (d / f"refs({split_by}).p").write_bytes(pickle.dumps(full, protocol=2))


def write_reasonseg(root: Path, split: str, stem: str, texts, is_sentence: bool, shapes):
    "reason_seg/ReasonSeg/<split>/<stem>.jpg + labelme JSON."
    d = root / "reason_seg" / "ReasonSeg" / split
    d.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), "white").save(d / f"{stem}.jpg")
    js = {"text": texts, "is_sentence": is_sentence, "imagePath": f"{stem}.jpg", "imageHeight": H, "imageWidth": W,
          "shapes": [{"label": lab, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "shape_type": "polygon", "group_id": None,
                      "flags": {}} for lab, (x0, y0, x1, y1) in shapes]}
    (d / f"{stem}.json").write_text(json.dumps(js))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    anns = [(1, [rect(0, 0, 9, 9)]),                                  # 100 pixels
            (2, [rect(10, 0, 19, 4), rect(10, 10, 19, 14)]),           # two parts: 50 + 50 pixels
            (3, [])]                                                   # no polygon: an empty mask, as in LISA
    write_refer(root, "refcoco", "unc", "images/mscoco/images/train2014", [
        (1, "val", ["  The Left Square", "big one"]),
        (2, "val", ["right things"]),
        (3, "val", ["nothing"]),
        (1, "testA", ["left"]), (2, "testAB", ["right"]), (2, "testB", ["other"]), (1, "train", ["square"])],
        anns, "COCO_train2014_000000000007.jpg")
    write_refer(root, "refcocog", "umd", "images/mscoco/images/train2014", [(1, "test", ["the square on the left"])],
                anns, "COCO_train2014_000000000007.jpg")
    upper, lower = np.zeros((H, W), bool), np.zeros((H, W), bool)
    upper[:5, 10:] = True; lower[10:15, 10:] = True
    write_refer(root, "refclef", "unc", "images/saiapr_tc-12", [(2, "testC", ["right"])],           # refCLEF: a list of RLEs
                [(2, [rle_encode(upper), rle_encode(lower)])], "7.jpg")
    write_reasonseg(root, "val", "r1", ["What could hold a drink?", "the mug"], True, [("target", (0, 0, 9, 9))])
    write_reasonseg(root, "val", "r2", ["the lamp"], False, [("target", (0, 0, 19, 3)), ("ignore", (0, 2, 19, 3))])
    write_reasonseg(root, "test", "t1", ["the cat"], False, [("target", (0, 0, 4, 4))])
    write_reasonseg(root, "test", "t2", ["Which animal is asleep?"], True, [("target", (5, 5, 9, 9)), ("flag", (0, 0, 1, 1))])
    return root


def test_layout_and_prompts(dataset):
    val = ev.benchmark_samples("refcoco", dataset, "val")
    assert [s.meta["sentence"] for s in val] == ["the left square", "big one", "right things", "nothing"]
    assert val[0].messages == [{"role": "user", "content": "<image> What is the left square in this image? Please output segmentation mask."},
                               {"role": "assistant", "content": "<seg>."}]
    assert [int(s.load().masks.sum()) for s in val] == [100, 100, 100, 0]
    assert all(s.load().masks.shape == (1, H, W) for s in val)
    assert [s.meta["sentence"] for s in ev.benchmark_samples("refcoco", dataset, "testA")] == ["left", "right"]  # REFER: testAB too
    assert len(ev.benchmark_samples("refcocog", dataset, "test")) == 1
    clef = ev.benchmark_samples("refclef", dataset, "testC")[0].load()
    assert Path(ev.benchmark_samples("refclef", dataset, "testC")[0].image).parent.name == "saiapr_tc-12"
    np.testing.assert_array_equal(clef.masks, ev.benchmark_samples("refcoco", dataset, "val")[2].load().masks)  # RLEs = polygons
    rs = ev.benchmark_samples("reason_seg", dataset, "val")                      # the first text of each image
    assert [s.messages[0]["content"] for s in rs] == ["<image> What could hold a drink? Please output segmentation mask.",
                                                      "<image> What is the lamp in this image? Please output segmentation mask."]
    assert [int(s.load().masks.sum()) for s in rs] == [100, 40]                 # ignored rows 2-3 are not target
    assert [s.meta["sentence"] for s in ev.benchmark_samples("reason_seg", dataset, "test_short")] == ["the cat"]
    assert [s.meta["sentence"] for s in ev.benchmark_samples("reason_seg", dataset, "test_long")] == ["Which animal is asleep?"]
    assert len(ev.benchmark_samples("reason_seg", dataset, "test")) == 2
    assert ev.benchmark_samples("refcoco", dataset, "val", image_sep="\n")[1].messages[0]["content"].startswith("<image>\nWhat is big")


def test_layout_errors(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"refs\(unc\)\.p"): ev.benchmark_samples("refcoco+", dataset, "val")
    with pytest.raises(FileNotFoundError, match="--data-root"): ev.benchmark_samples("refcoco", tmp_path, "val")
    with pytest.raises(ValueError, match="testA, testB"): ev.benchmark_samples("refcoco", dataset, "test")
    with pytest.raises(ValueError, match="is this split"): ev.benchmark_samples("refcocog", dataset, "val")
    with pytest.raises(ValueError, match="reason_seg"): ev.parse_benchmarks("refcoco:val,reasonseg:val")
    assert ev.parse_benchmarks("refcoco:testB, reason_seg:test_long") == [("refcoco", "testB"), ("reason_seg", "test_long")]
    assert ev.parse_benchmarks("refcoco+") == [("refcoco+", "val"), ("refcoco+", "testA"), ("refcoco+", "testB")]


# ----------------------------------------------------------------------------- scores against hand-computed values
class Result:
    def __init__(self, text, masks=None): self.text, self.masks, self.problems = text, masks, []


class ByWord:
    "Answers from a table keyed by a word of the prompt; teacher forcing (response=) returns `forced(h, w)`."
    def __init__(self, table, forced=None): self.table, self.forced, self.log = table, forced, []
    def generate(self, messages, image=None, max_new_tokens=64, response=None):
        q, (w, h) = messages[-1]["content"], image.size
        self.log.append((q, response))
        if response is not None: return Result(response, self.forced(h, w))
        return self.table[next(k for k in self.table if k in q)](h, w)


def full(h, w): return torch.ones(1, h, w, dtype=torch.bool)


def test_refcoco_scores_by_hand(dataset):
    left = np.zeros((1, H, W), bool); left[0, :10, :10] = True
    two = np.zeros((1, H, W), bool); two[0, :5, 10:] = True                   # the upper of the two parts: 50 of 100
    model = ByWord({"left square": lambda h, w: Result("Sure, <seg>.", torch.from_numpy(left)),
                    "big one": lambda h, w: Result("It is <seg> and <seg>.", torch.cat([full(h, w), torch.from_numpy(left)])),
                    "right things": lambda h, w: Result("<seg>.", torch.from_numpy(two)),
                    "nothing": lambda h, w: Result("There is none.")},
                   forced=lambda h, w: torch.from_numpy(left))
    r = ev.evaluate_benchmark(model, "refcoco", "val", dataset, progress=False)
    # IoUs: 1; the first <seg> (whole image) 100/320; 50/100; no <seg> on an empty target: union 0 -> 1
    assert (r["n"], r["n_no_seg"], r["n_errors"]) == (4, 1, 0)
    assert r["giou"] == pytest.approx((1 + 100 / 320 + 0.5 + 1) / 4)
    assert r["ciou"] == pytest.approx((100 + 100 + 50 + 0) / (100 + 320 + 100 + 0))
    # teacher-forced: the left square for every sentence
    assert r["forced"]["giou"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert r["forced"]["ciou"] == pytest.approx(200 / (100 + 100 + 200 + 100))
    assert sum(resp == "<seg>." for _, resp in model.log) == 4
    json.dumps(ev.to_jsonable(r), allow_nan=False)


def test_no_seg_answer_scores_zero(dataset):
    r = ev.evaluate_benchmark(ByWord({"": lambda h, w: Result("I am not sure.")}), "refcoco", "testA", dataset,
                              progress=False, forced_masks=False)
    assert (r["n"], r["n_no_seg"], r["giou"], r["ciou"], r["forced"]) == (2, 2, 0.0, 0.0, None)


def lisa_intersection_union(output, target, ignore_index=255):
    "LISA's intersectionAndUnionGPU for K=2 in numpy: foreground (I, U) with ignore pixels dropped."
    output, target = output.reshape(-1).astype(np.int64).copy(), target.reshape(-1).astype(np.int64)
    output[target == ignore_index] = ignore_index
    inter = output[output == target]
    hist = lambda x: np.histogram(x, bins=np.arange(3))[0]
    ai, ao, at = hist(inter), hist(output), hist(target)
    return ai[1], (ao + at - ai)[1]


def test_reasonseg_matches_lisa_computation(dataset):
    rng = np.random.default_rng(0)
    preds = {k: rng.random((1, H, W)) < 0.5 for k in ("drink", "lamp")}
    model = ByWord({k: (lambda h, w, k=k: Result("<seg>", torch.from_numpy(preds[k]))) for k in preds})
    r = ev.evaluate_benchmark(model, "reason_seg", "val", dataset, progress=False, forced_masks=False)
    label = np.zeros((H, W), np.int64); label[:2] = 1; label[2:4] = 255            # LISA's painted label map of r2
    gts = {"drink": np.pad(np.ones((10, 10), np.int64), ((0, H - 10), (0, W - 10))), "lamp": label}
    iu = [lisa_intersection_union(preds[k][0], gts[k]) for k in ("drink", "lamp")]
    assert r["giou"] == pytest.approx(np.mean([i / u for i, u in iu]))
    assert r["ciou"] == pytest.approx(sum(i for i, _ in iu) / sum(u for _, u in iu))


def test_benchmark_table_shape(dataset):
    one = lambda h, w: Result("<seg>", full(h, w))
    res = [ev.evaluate_benchmark(ByWord({"": one}, forced=full), n, s, dataset, progress=False)
           for n, s in (("reason_seg", "val"), ("refcocog", "test"), ("refcoco", "testA"), ("refcoco", "val"))]
    tab = ev.benchmark_table(res, label="stub")
    assert [c[:2] for c in tab.columns] == [("refCOCO", "val"), ("refCOCO", "testA"), ("refCOCOg", "test"),
                                            ("ReasonSeg", "val"), ("ReasonSeg", "val")]
    assert [c[2] for c in tab.columns] == ["cIoU"] * 3 + ["gIoU", "cIoU"]
    assert list(tab.index) == ["stub: generated", "stub: teacher-forced"]
    assert tab.iloc[0, 0] == round(100 * res[3]["ciou"], 1)


# ----------------------------------------------------------------------------- checkpoints that moved
def test_relocate_checkpoints(tmp_path):
    for n in ("LLaVA-Lightning-7B-v1-1", "clip-vit-large-patch14", "my-llava"): (tmp_path / n).mkdir()
    (tmp_path / "sam_vit_h_4b8939.pth").write_bytes(b"")
    saved = LLMBindConfig.paper_7b("/elsewhere")
    saved.llm.pretrained_path = "/elsewhere/my-llava"                          # found under its own name first
    new = ev.relocate_checkpoints(saved, tmp_path)
    assert new.llm.pretrained_path == str(tmp_path / "my-llava")
    assert new.vision.pretrained_path == str(tmp_path / "clip-vit-large-patch14")
    assert new.segment.checkpoint == str(tmp_path / "sam_vit_h_4b8939.pth")
    with pytest.raises(FileNotFoundError, match="--checkpoints"): ev.relocate_checkpoints(saved, tmp_path / "my-llava")


# ----------------------------------------------------------------------------- the tiny model through the command
def cli(*argv):
    from llmbind.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(["eval", *argv])
    return rc, out.getvalue(), err.getvalue()


def test_eval_benchmark_command_tiny_model(dataset, tmp_path):
    from llmbind.model import LLMBindForCausalLM
    cfg = LLMBindConfig.tiny()
    run = tmp_path / "run"
    LLMBindForCausalLM.from_config(cfg).save_pretrained(run / "model")
    cfg.data.data_dir = str(dataset)
    cfg.save(tmp_path / "cfg.json")
    rc, out, err = cli("--run", str(run), "--benchmark", "refcoco:val,reason_seg:val", "--config", str(tmp_path / "cfg.json"),
                       "--checkpoints", str(tmp_path), "--limit", "2", "--max-new-tokens", "3", "--quiet")
    assert rc == 0, err
    assert "refCOCO" in out and "ReasonSeg" in out and "teacher-forced" in out
    rep = json.loads((run / "eval_benchmarks.json").read_text())
    assert rep["data_root"] == str(dataset)                                    # from --config's data.data_dir
    assert [(r["benchmark"], r["split"], r["n"]) for r in rep["results"]] == [("refcoco", "val", 2), ("reason_seg", "val", 2)]
    for r in rep["results"]:
        assert 0 <= r["giou"] <= 1 and 0 <= r["forced"]["ciou"] <= 1 and 0 <= r["n_no_seg"] <= 2


def test_eval_benchmark_command_errors(dataset, tmp_path):
    rc, _, err = cli("--benchmark", "refcoco:val", "--data-root", str(dataset))
    assert rc == 2 and "--checkpoint DIR" in err
    rc, _, err = cli("--checkpoint", str(tmp_path), "--benchmark", "refcoco:val", "--data", str(tmp_path))
    assert rc == 2 and "--data-root" in err
    rc, _, err = cli("--checkpoint", str(tmp_path), "--benchmark", "refcoco:vall", "--data-root", str(dataset))
    assert rc == 2 and "testA" in err
