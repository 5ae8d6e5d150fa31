"""Tiny datasets in LISA's exact folder layout, for every reader of `llmbind.data.DATASET_READERS`.

`write_lisa_datasets(root, n)` writes a `dataset/`-style tree under `root`: n images per split, sizes
alternating between 48x32 and 40x56 (width x height), label maps, COCO instances with polygon and RLE
segmentations, REFER pickles, ReasonSeg labelme JSON, LLaVA-Instruct and LLMBind's own dialogues.
Plain Python (numpy + PIL), no network; tests and notebooks import it through `sys.path`.
"""
from __future__ import annotations
import json, pickle, random
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw

SIZES = ((48, 32), (40, 56))                 # (width, height) of image k is SIZES[k % 2]
ADE_NAMES = {1: "wall", 3: "sky", 5: "tree"}  # label values used in the ADE20K label maps (0 = other, ignored)
COCOSTUFF_VALUES = {0: "person", 17: "dog", 95: "building-other"}  # label value -> LISA's class (file id value+1)
OBJECT_INFO_150 = ("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n2\t0.1072\t6046\t612\tbuilding, edifice\n"
                   "3\t0.0878\t8265\t796\tsky\n4\t0.0621\t9336\t917\tfloor, flooring\n5\t0.0480\t6678\t641\ttree\n"
                   "6\t0.0450\t6604\t643\tceiling\n7\t0.0398\t4023\t408\troad, route\n")
REFER_SPLITS = {"refcoco": ("unc", ("train", "val", "testA", "testB")), "refcoco+": ("unc", ("train", "val", "testA", "testB")),
                "refcocog": ("umd", ("train", "val", "test")), "refclef": ("unc", ("train", "val", "testA", "testB"))}
DIALOGUE_TAGS = {"image_gen": "<gen> a red fox </gen>", "image_edit": "<edit> make it blue </edit>",
                 "audio": "<aud_cap> a dog barking </aud_cap>", "video": "<vid_cap> a car driving </vid_cap>"}


def _image(path: Path, k: int, seed: int = 0) -> tuple[int, int]:
    "Save a small picture of coloured dots; return its (height, width)."
    w, h = SIZES[k % 2]
    r = random.Random(f"{seed}:{k}:{path.name}")
    im = Image.new("RGB", (w, h), "white"); d = ImageDraw.Draw(im)
    for _ in range(3):
        x, y = r.randrange(w - 10), r.randrange(h - 10)
        d.ellipse([x, y, x + 9, y + 9], fill=r.choice(["red", "green", "blue"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return h, w


def _json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _box_poly(x0, y0, x1, y1) -> list:
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def _rle(mask: np.ndarray) -> dict:
    "Uncompressed COCO RLE (column-major runs, starting with a zero run)."
    flat = mask.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]: counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _coco_instances(images: list, categories: list) -> dict:
    "COCO instances for `images` [(id, file_name, h, w)]: per image one polygon and one RLE annotation."
    anns, aid = [], 1
    for i, (iid, _, h, w) in enumerate(images):
        m = np.zeros((h, w), bool); m[h // 2:, w // 2:] = True
        anns.append({"id": aid, "image_id": iid, "category_id": categories[i % len(categories)]["id"], "iscrowd": 0,
                     "segmentation": [_box_poly(2, 2, w // 3, h // 3)], "area": 0.0, "bbox": [2, 2, w // 3 - 2, h // 3 - 2]})
        anns.append({"id": aid + 1, "image_id": iid, "category_id": categories[(i + 1) % len(categories)]["id"], "iscrowd": 1,
                     "segmentation": _rle(m), "area": float(m.sum()), "bbox": [w // 2, h // 2, w - w // 2, h - h // 2]})
        aid += 2
    return {"images": [{"id": iid, "file_name": f, "height": h, "width": w} for iid, f, h, w in images],
            "annotations": anns, "categories": categories}


def _semantic(root: Path, n: int):
    "ADE20K (images/annotations, training/validation) and COCO-Stuff (labels) over COCO images."
    for split, folder in (("train", "training"), ("val", "validation")):
        for k in range(n):
            stem = f"ADE_{folder[:5] if folder == 'training' else 'val'}_{k + 1:08d}"
            h, w = _image(root / f"ade20k/images/{folder}/{stem}.jpg", k)
            lab = np.zeros((h, w), np.uint8); lab[: h // 2] = 1; lab[h // 2:, : w // 2] = 3
            if k % 2: lab[h // 2:, w // 2:] = 5
            (root / f"ade20k/annotations/{folder}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(lab, mode="L").save(root / f"ade20k/annotations/{folder}/{stem}.png")
    (root / "ade20k/objectInfo150.txt").write_text(OBJECT_INFO_150)
    for folder in ("train2017", "val2017"):
        for k in range(n):
            stem = f"{k + 9 + (100 if folder == 'val2017' else 0):012d}"
            h, w = _image(root / f"coco/{folder}/{stem}.jpg", k)
            lab = np.full((h, w), 255, np.uint8); lab[: h // 2] = 0; lab[h // 2:, : w // 2] = 17; lab[h // 2:, w // 2:] = 95
            (root / f"cocostuff/{folder}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(lab, mode="L").save(root / f"cocostuff/{folder}/{stem}.png")


def _parts(root: Path, n: int):
    "PACO-LVIS (images from coco/) and PASCAL-Part (VOC2010 JPEGImages)."
    paco_cats = [{"id": 1, "name": "mug:handle"}, {"id": 2, "name": "mug:body"}, {"id": 3, "name": "trash_can"},
                 {"id": 4, "name": "bottle_(beverage):cap"}]
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        imgs = []
        for k in range(n):
            stem = f"{k + 9 + (100 if split == 'val' else 0):012d}"
            p = root / f"coco/{folder}/{stem}.jpg"
            h, w = _image(p, k) if not p.is_file() else Image.open(p).size[::-1]
            imgs.append((k + 1, f"{folder}/{stem}.jpg", h, w))
        _json(root / f"vlpart/paco/annotations/paco_lvis_v1_{split}.json", _coco_instances(imgs, paco_cats))
    voc_cats = [{"id": 1, "name": "dog:head"}, {"id": 2, "name": "dog:leg"}, {"id": 3, "name": "person:hair"}]
    for split in ("train", "val"):
        imgs = []
        for k in range(n):
            name = f"2008_{k + 1 + (500 if split == 'val' else 0):06d}.jpg"
            h, w = _image(root / f"vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/{name}", k)
            imgs.append((k + 1, name, h, w))
        _json(root / f"vlpart/pascal_part/{split}.json", _coco_instances(imgs, voc_cats))


def _refer(root: Path, n: int):
    "refCOCO, refCOCO+, refCOCOg (COCO train2014 images) and refCLEF (saiapr_tc-12) in the REFER format."
    for ds, (split_by, splits) in REFER_SPLITS.items():
        imgs = []
        for k in range(n * len(splits)):
            name = f"{k:02d}/images/{k + 1000}.jpg" if ds == "refclef" else f"COCO_train2014_{k + 9:012d}.jpg"
            folder = root / ("refer_seg/images/saiapr_tc-12" if ds == "refclef" else "refer_seg/images/mscoco/images/train2014")
            h, w = _image(folder / name, k, seed=1)
            imgs.append((k + 1, name, h, w))
        inst = _coco_instances(imgs, [{"id": 1, "name": "person", "supercategory": "person"},
                                      {"id": 18, "name": "dog", "supercategory": "animal"}])
        refs, sid = [], 0
        for k, (iid, name, _, _) in enumerate(imgs):
            for j, ann in enumerate(a for a in inst["annotations"] if a["image_id"] == iid):
                texts = [f"{'left' if j == 0 else 'right'} dot in picture {k}", f"{ds} object {k}-{j}"]
                sents = [{"tokens": t.split(), "raw": t.capitalize() + ".", "sent_id": sid + s, "sent": t} for s, t in enumerate(texts)]
                refs.append({"sent_ids": [s["sent_id"] for s in sents], "file_name": name.replace(".jpg", f"_{ann['id']}.jpg"),
                             "ann_id": ann["id"], "ref_id": len(refs), "image_id": iid, "split": splits[k // n],
                             "sentences": sents, "category_id": ann["category_id"]})
                sid += len(sents)
        _json(root / f"refer_seg/{ds}/instances.json", inst)
        with open(root / f"refer_seg/{ds}/refs({split_by}).p", "wb") as f: pickle.dump(refs, f, protocol=2)


def _reasonseg(root: Path, n: int):
    "ReasonSeg: image + labelme-style JSON (texts, is_sentence, polygons; an 'ignore' polygon) per split folder."
    for split in ("train", "val", "test"):
        for k in range(n):
            stem = f"{split}_{k:04d}"
            d = root / f"reason_seg/ReasonSeg/{split}"
            h, w = _image(d / f"{stem}.jpg", k, seed=2)
            shapes = [{"label": "target", "points": [[2, 2], [w - 3, 2], [w - 3, h // 2], [2, h // 2]], "group_id": None,
                       "shape_type": "polygon", "flags": {}}]
            if k % 2: shapes.append({"label": "ignore", "points": [[2, 2], [8, 2], [8, 8], [2, 8]], "group_id": None,
                                     "shape_type": "polygon", "flags": {}})
            texts = ([f"What part of picture {k} would keep you dry in the rain?"] if k % 2 == 0 else
                     [f"the upper half of picture {k}", f"top of picture {k}"])
            _json(d / f"{stem}.json", {"text": texts, "is_sentence": k % 2 == 0, "shapes": shapes, "imagePath": f"{stem}.jpg",
                                       "imageHeight": h, "imageWidth": w, "imageData": None})


def _dialogues(root: Path, n: int):
    "LLaVA-Instruct-150k (images in coco/train2017), LLMBind's dialogues under llmbind/, a custom grounded file under custom/."
    recs = []
    for k in range(n):
        stem = f"{k + 9:012d}"
        recs.append({"id": stem, "image": f"{stem}.jpg", "conversations": [
            {"from": "human", "value": f"What colour are the dots in picture {k}?\n<image>"}, {"from": "gpt", "value": "Red and blue."},
            {"from": "human", "value": "How many are there?"}, {"from": "gpt", "value": "Three."}]})
    _json(root / "llava_dataset/llava_instruct_150k.json", recs)
    for split in ("train", "val"):
        for task, tag in DIALOGUE_TAGS.items():
            out = []
            for k in range(n):
                rec = {"id": f"{task}_{split}_{k}", "conversations": [
                    {"from": "human", "value": f"Please help me with request {k}."},
                    {"from": "gpt", "value": f"Sure, here it is: {tag}"}]}
                if task == "image_edit":
                    _image(root / f"llmbind/images/edit_{split}_{k}.png", k, seed=3)
                    rec["image"] = f"edit_{split}_{k}.png"
                    rec["conversations"][0]["value"] = "<image>\n" + rec["conversations"][0]["value"]
                out.append(rec)
            _json(root / f"llmbind/{task}.json" if split == "train" else root / f"llmbind/{task}_{split}.json", out)
    for split in ("train", "val"):                    # our custom format: grounded conversations with RLE masks
        out = []
        for k in range(n):
            h, w = _image(root / f"custom/images/{split}_{k}.png", k, seed=4)
            m = np.zeros((h, w), bool); m[: h // 2] = True
            out.append({"id": f"{split}_{k}", "task": "referring", "image": f"images/{split}_{k}.png", "masks": [_rle(m)],
                        "conversations": [{"from": "human", "value": "<image>\nSegment the top half."},
                                          {"from": "gpt", "value": "It is <seg>."}]})
        _json(root / f"custom/grounded_{split}.json", out)


def write_lisa_datasets(root, n: int = 3) -> Path:
    "Write every dataset of `paper_datasets()` in LISA's layout under `root` (n images per split); return `root`."
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    _semantic(root, n); _parts(root, n); _refer(root, n); _reasonseg(root, n); _dialogues(root, n)
    return root
