"Every registered dataset reader on a miniature copy of LISA's dataset folder: counts, masks, questions, errors, safety."
import json, pickle, sys, tracemalloc
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_datasets import write_lisa_datasets, SIZES, ADE_NAMES, COCOSTUFF_VALUES, REFER_SPLITS, DIALOGUE_TAGS
from llmbind.config import ConfigError, paper_datasets
from llmbind.data import (DATASET_READERS, DataFormatError, DatasetNotFound, Sample, read_dataset, read_class_names,
                          package_classes, read_coco_parts, read_refer, read_llava_instruct, read_conversations,
                          write_conversations, load_refs_pickle, MAX_CLASS_ID)

N = 3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_lisa_datasets(tmp_path_factory.mktemp("lisa") / "dataset", n=N)


def spec(name, **options):
    extra = {"path": "custom/grounded_{split}.json"} if name == "conversations" else {}
    return {"reader": name, "weight": 1.0, **extra, **options}


def questions(s: Sample) -> list:
    return [m["content"] for m in s.messages[::2]]


def test_registry_covers_the_paper():
    names = {s["reader"] for specs in paper_datasets().values() for s in specs}
    assert names <= set(DATASET_READERS)
    assert set(DATASET_READERS) == names | {"conversations"}
    for fn in DATASET_READERS.values():
        assert callable(fn) and isinstance(fn.options, tuple) and fn.__doc__


# (reader, split, samples) on the fixture: one sample per image for semantic and parts; refs grouped by
# image in chunks of 3 rounds (2 refs x 2 sentences per image -> 2 samples); ReasonSeg: one per text
EXPECTED = [("ade20k", "train", N), ("ade20k", "val", N), ("cocostuff", "train", N), ("cocostuff", "val", N),
            ("paco_lvis", "train", N), ("paco_lvis", "val", N), ("pascal_part", "train", N), ("pascal_part", "val", N),
            ("refcoco", "train", 2 * N), ("refcoco", "testA", 2 * N), ("refcoco", "testB", 2 * N), ("refcoco+", "val", 2 * N),
            ("refcocog", "test", 2 * N), ("refclef", "train", 2 * N), ("reason_seg", "train", N + N // 2),
            ("reason_seg", "val", N + N // 2), ("reason_seg", "test", N + N // 2), ("llava_instruct", "train", N),
            ("llmbind_image_gen", "train", N), ("llmbind_image_edit", "val", N), ("llmbind_audio", "train", N),
            ("llmbind_video", "val", N), ("conversations", "train", N), ("conversations", "val", N)]


@pytest.mark.parametrize("name,split,n", EXPECTED, ids=[f"{a}-{b}" for a, b, _ in EXPECTED])
def test_reader_counts_and_masks(root, name, split, n):
    got = read_dataset(spec(name), data_root=root, split=split, seed=0, lazy=True)
    assert len(got) == n and got.report.skipped == 0
    for s in got:
        s.validate()
        x = s.load()
        if x.masks is not None:
            assert x.masks.dtype == bool and x.masks.shape[1:] == (x.image.height, x.image.width)
            assert x.masks.shape[0] == x.counts()["seg"] and x.masks.any(axis=(1, 2)).all()
            assert (x.image.width, x.image.height) in SIZES


def test_semantic_class_names(root):
    for s in read_dataset(spec("ade20k"), root):
        assert set(s.meta["classes"]) <= set(ADE_NAMES.values())
        for name, q in zip(s.meta["classes"], questions(s)): assert name in q
        lab = np.asarray(Image.open(root / f"ade20k/annotations/training/{Path(s.image).stem}.png"))
        for name, m in zip(s.meta["classes"], s.load().masks):
            value = {v: k for k, v in ADE_NAMES.items()}[name]
            np.testing.assert_array_equal(m, lab == value)        # value k is class k - 1 of LISA's list
    seen = set()
    for s in read_dataset(spec("cocostuff"), root):
        lab = np.asarray(Image.open(root / f"cocostuff/train2017/{Path(s.image).stem}.png"))
        assert Path(s.image).parent == root / "coco/train2017"
        for name, m in zip(s.meta["classes"], s.load().masks):
            value = {v: k for k, v in COCOSTUFF_VALUES.items()}[name]
            np.testing.assert_array_equal(m, lab == value)
            seen.add(name)
    assert seen == {"person", "dog"}                               # 'building-other' is never asked, as in LISA


def test_parts_and_refer_questions(root):
    paco = read_dataset(spec("paco_lvis"), root)
    asked = " ".join(q for s in paco for q in questions(s))
    assert "handle of the mug" in asked or "body of the mug" in asked
    assert "bottle_(" not in asked and "trash_can" not in asked
    voc = read_dataset(spec("pascal_part"), root)
    assert all(Path(s.image).parent == root / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages" for s in voc)
    refs = load_refs_pickle(root / "refer_seg/refcocog/refs(umd).p")
    sents = {sd["sent"] for r in refs if r["split"] == "val" for sd in r["sentences"]}
    got = read_dataset(spec("refcocog"), root, split="val")
    asked = [q for s in got for q in questions(s)]
    assert len(asked) == len(sents) and all(any(t in q for t in sents) for q in asked)
    clef = read_dataset(spec("refclef"), root)
    assert all("saiapr_tc-12" in s.image for s in clef)


def test_dialogues_keep_their_tags(root):
    for task, tag in DIALOGUE_TAGS.items():
        got = read_dataset(spec(f"llmbind_{task}"), root)
        assert {s.task for s in got} == {task}
        assert all(s.messages[-1]["content"].endswith(tag) for s in got)
    assert read_dataset(spec("llmbind_image_edit"), root)[0].image.startswith(str(root / "llmbind/images"))
    vqa = read_dataset(spec("llava_instruct"), root)
    assert [s.task for s in vqa] == ["vqa"] * N and vqa[0].messages[0]["content"].startswith("<image>\n")


def test_read_dataset_errors(root):
    with pytest.raises(ConfigError, match="did you mean 'reason_seg'"): read_dataset({"reader": "reasonseg"}, root)
    with pytest.raises(ConfigError, match="unknown option 'round_per_sample'; did you mean 'rounds_per_sample'"):
        read_dataset(spec("refcoco", round_per_sample=2), root)
    with pytest.raises(ConfigError, match="unknown option 'path'"): read_dataset(spec("ade20k", path="x"), root)
    with pytest.raises(DatasetNotFound, match=r"expected the images folder at .*ade20k/images/training"):
        read_dataset(spec("ade20k"), root / "refer_seg")
    with pytest.raises(DatasetNotFound, match="set data.data_dir"): read_dataset(spec("ade20k"), root / "missing")
    with pytest.raises(DatasetNotFound, match="splits there: test, train, val"): read_dataset(spec("refcocog"), root, split="testA")
    with pytest.raises(DatasetNotFound, match=r"no 'val' split; put '\{split\}'"):
        read_dataset({"reader": "conversations", "path": "custom/grounded_train.json"}, root, split="val")
    assert isinstance(DatasetNotFound("x"), FileNotFoundError)


def test_options_reach_the_reader(root):
    one = read_dataset(spec("refcoco", rounds_per_sample=1), root)
    assert len(one) == 4 * N and all(len(s.messages) == 2 for s in one)
    mine = read_dataset(spec("ade20k", questions=["Outline the {name}."], classes_per_sample=1), root)
    assert all(questions(s) == [f"<image>\nOutline the {s.meta['classes'][0]}."] for s in mine)
    oi = read_dataset(spec("ade20k", classes="ade20k/objectInfo150.txt"), root)
    assert [s.meta for s in oi] == [s.meta for s in read_dataset(spec("ade20k"), root)]


def test_class_files(tmp_path):
    ade = read_class_names(package_classes("ade20k"))
    assert len(ade) == 150 and ade[:2] == ["wall", "building"] and ade[-1] == "flag"
    stuff = read_class_names(package_classes("cocostuff"))
    assert len(stuff) == 183 and stuff[:2] == ["unlabeled", "person"] and stuff[182] == "wood"
    p = tmp_path / "objectInfo150.txt"
    p.write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n2\t0.1072\t6046\t612\tbuilding, edifice\n"
                 "3\t0.0878\t8265\t796\tsky\n")
    assert read_class_names(p) == ["wall", "building", "sky"]
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataFormatError, match="not UTF-8"): read_class_names(tmp_path / "bad.txt")
    (tmp_path / "huge.txt").write_text("0: a\n99999999999: b\n")
    tracemalloc.start()
    with pytest.raises(DataFormatError, match=f"not an integer in 0..{MAX_CLASS_ID}"): read_class_names(tmp_path / "huge.txt")
    assert tracemalloc.get_traced_memory()[1] < 10_000_000; tracemalloc.stop()


def _arrays(obj, seen=None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen: return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray): return obj.nbytes
    if isinstance(obj, Sample): kids = [obj.image, obj.masks, obj.boxes, obj.classes, obj.meta, obj.messages]
    elif isinstance(obj, dict): kids = list(obj.values())
    elif isinstance(obj, (list, tuple, set)): kids = list(obj)
    elif hasattr(obj, "__code__"): kids = [c.cell_contents for c in obj.__closure__ or ()] + list(obj.__defaults__ or ())
    else: return 0
    return sum(_arrays(k, seen) for k in kids)


def test_lazy_reads_hold_no_arrays(root):
    for name in DATASET_READERS:
        lazy, eager = read_dataset(spec(name), root, lazy=True), read_dataset(spec(name), root, lazy=False)
        assert _arrays(list(lazy)) == 0, name
        for a, b in zip(lazy, eager):
            assert a.image is None or isinstance(a.image, str)
            if b.masks is not None: np.testing.assert_array_equal(a.load().masks, b.masks)
    assert _arrays(list(read_dataset(spec("refcoco"), root, lazy=False))) > 0


def test_sizes_are_checked_before_allocating(root, tmp_path):
    paco = json.loads((root / "vlpart/paco/annotations/paco_lvis_v1_train.json").read_text())
    paco["images"][0].update(height=10**7, width=10**7)
    (tmp_path / "paco.json").write_text(json.dumps(paco))
    tracemalloc.start()
    for lazy in (False, True):
        with pytest.raises(DataFormatError, match="10000000x10000000 but 000000000009.jpg is 32x48"):
            read_coco_parts(tmp_path / "paco.json", root / "coco", lazy=lazy)
    assert tracemalloc.get_traced_memory()[1] < 50_000_000; tracemalloc.stop()
    inst = json.loads((root / "refer_seg/refcoco/instances.json").read_text())
    inst["images"][0]["width"] = 10**7
    (tmp_path / "inst.json").write_text(json.dumps(inst))
    with pytest.raises(DataFormatError, match="the JSON says the image is 32x10000000"):
        read_refer(root / "refer_seg/refcoco/refs(unc).p", tmp_path / "inst.json", root / "refer_seg/images/mscoco/images/train2014")


@pytest.mark.parametrize("bad", ["../train2017/000000000009.jpg", "/etc/hostname", "C:\\x.jpg", "a/../../b.jpg", "..\\b.jpg"])
def test_image_paths_stay_inside(root, tmp_path, bad):
    j = tmp_path / "llava.json"
    j.write_text(json.dumps([{"id": "x", "image": bad, "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                                          {"from": "gpt", "value": "Hello."}]}]))
    with pytest.raises(DataFormatError, match="leaves the image folder"): read_llava_instruct(j, image_dir=root / "coco/train2017")
    inst = json.loads((root / "refer_seg/refcoco/instances.json").read_text())
    inst["images"][0]["file_name"] = bad
    (tmp_path / "inst.json").write_text(json.dumps(inst))
    with pytest.raises(DataFormatError, match="leaves the image folder"):
        read_refer(root / "refer_seg/refcoco/refs(unc).p", tmp_path / "inst.json", root / "refer_seg/images/mscoco/images/train2014")


def test_write_copies_outside_images(root, tmp_path):
    got = read_dataset(spec("conversations"), root)
    back = read_conversations(write_conversations(got, tmp_path / "out/d.json"))
    assert all(Path(s.image).parent == tmp_path / "out/images" for s in back)
    for a, b in zip(got, back): np.testing.assert_array_equal(a.load().masks, b.masks)


def test_refs_pickle_is_a_plain_list(root):
    for ds, (by, splits) in REFER_SPLITS.items():
        with open(root / f"refer_seg/{ds}/refs({by}).p", "rb") as f: raw = f.read()
        assert raw[:2] == b"\x80\x02"                                    # protocol 2, as the REFER files
        refs = pickle.loads(raw)
        assert isinstance(refs, list) and {r["split"] for r in refs} == set(splits)


def test_reasonseg_windows_1252(root, tmp_path):
    "A few released ReasonSeg JSON files are Windows-1252; LISA falls back to it, and so do we."
    from llmbind.data import read_reasonseg
    src = root / "reason_seg/ReasonSeg/train"
    (tmp_path / "a.jpg").write_bytes((src / "train_0000.jpg").read_bytes())
    rec = json.loads((src / "train_0000.json").read_text())
    rec["text"] = ["Which part of the caf\u00e9 sign is red?"]
    (tmp_path / "a.json").write_bytes(json.dumps(rec, ensure_ascii=False).encode("cp1252"))
    got = read_reasonseg(tmp_path)
    assert "caf\u00e9" in got[0].messages[0]["content"]


def test_spec_label_and_llava_file(root):
    assert len(read_dataset({"reader": "llava_instruct", "name": "vqa-main", "file": "llava_instruct_150k"}, root)) == N
    with pytest.raises(DatasetNotFound, match=r"llava_dataset/llava_v1_5_mix665k\.json"):
        read_dataset({"reader": "llava_instruct", "file": "llava_v1_5_mix665k"}, root)


def test_cocostuff_goes_by_the_label_maps(root, tmp_path):
    "coco/train2017 holds every COCO image; only those with a COCO-Stuff label map become samples."
    import shutil
    for d in ("coco/train2017", "cocostuff/train2017"): shutil.copytree(root / d, tmp_path / d)
    Image.new("RGB", (20, 10)).save(tmp_path / "coco/train2017/000000999999.jpg")
    assert len(read_dataset(spec("cocostuff"), tmp_path)) == N
    with pytest.raises(DatasetNotFound, match=r"cocostuff/val2017"): read_dataset(spec("cocostuff"), tmp_path, split="val")


def test_deeply_nested_json_is_a_format_error(tmp_path):
    "A dataset JSON nested 100k deep is one DataFormatError, not a RecursionError."
    from llmbind.data import DataFormatError, read_conversations
    f = tmp_path / "deep.json"; f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataFormatError, match="nested too deeply"):
        read_conversations(f, image_dir=tmp_path)
