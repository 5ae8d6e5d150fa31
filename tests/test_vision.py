"Integration tests for llmbind.vision: the splice against a slow reference, and images -> LLM end to end."
import random
import numpy as np
import pytest
import torch
from llmbind.config import LLMBindConfig
from llmbind.vision import (IMAGE_POSITION_ID, PAD_POSITION_ID, ImageError, build_projector, build_vision_tower,
                            preprocess_images, splice_image_features)

torch.set_num_threads(1)
IMG = 99


def reference_splice(ids, mask, embeds, feats, labels):
    "Token-by-token reference: lists of (embedding row, token id, label) per sample, padding dropped."
    out, k = [], 0
    for b in range(ids.shape[0]):
        rows = []
        for i in range(ids.shape[1]):
            if not mask[b, i]: continue
            if ids[b, i] == IMG:
                rows += [(f, IMAGE_POSITION_ID, -100) for f in feats[k]]; k += 1
            else:
                rows.append((embeds[b, i], int(ids[b, i]), int(labels[b, i])))
        out.append(rows)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_splice_matches_reference(seed):
    rng = random.Random(seed)
    B, D = rng.randint(1, 4), 6
    lens = [rng.randint(1, 9) for _ in range(B)]
    L = max(lens)
    ids = torch.full((B, L), 3)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lens):
        ids[b, :n] = torch.tensor([IMG if rng.random() < 0.3 else rng.randint(4, 50) for _ in range(n)])
        mask[b, :n] = 1
    n_img = int(((ids == IMG) & mask.bool()).sum())
    feats = [torch.randn(rng.choice([1, 2, 5]), D) for _ in range(n_img)]   # images may even differ in patch count
    embeds, labels = torch.randn(B, L, D), ids.clone()
    out = splice_image_features(ids, embeds, feats, IMG, mask, labels)
    ref = reference_splice(ids, mask, embeds, feats, labels)
    assert out.inputs_embeds.shape[1] == max(len(r) for r in ref)
    for b, rows in enumerate(ref):
        n = len(rows)
        assert out.attention_mask[b].tolist() == [1] * n + [0] * (out.token_ids.shape[1] - n)
        assert out.token_ids[b, :n].tolist() == [t for _, t, _ in rows]
        assert out.labels[b, :n].tolist() == [l for _, _, l in rows]
        if n: assert torch.equal(out.inputs_embeds[b, :n], torch.stack([e for e, _, _ in rows]))
        assert (out.token_ids[b, n:] == PAD_POSITION_ID).all() and (out.labels[b, n:] == -100).all()
        assert out.position_ids[b, :n].tolist() == list(range(n))


def test_images_to_llm_end_to_end():
    from llmbind.tokens import IMAGE_TOKEN, add_task_tokens, tiny_llama, tiny_tokenizer
    from PIL import Image
    cfg = LLMBindConfig.tiny()
    tok = tiny_tokenizer(); ids = add_task_tokens(tok)
    llm = tiny_llama(len(tok), hidden_size=cfg.llm.hidden_size, num_layers=1)
    tower, proj = build_vision_tower(cfg.vision), build_projector(cfg.vision, cfg.llm.hidden_size, trainable=True)
    imgs = [Image.new("RGB", (40, 30), (200, 10, 10)), np.full((20, 50, 3), 90, np.uint8)]
    enc = tok(["<image> red?", "no image", "<image> grey?"], return_tensors="pt", padding=True)
    feats = proj(tower(preprocess_images(imgs, cfg.vision)))
    sp = splice_image_features(enc["input_ids"], llm.get_input_embeddings()(enc["input_ids"]), feats, ids[IMAGE_TOKEN],
                               enc["attention_mask"], enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100))
    out = llm(inputs_embeds=sp.inputs_embeds, attention_mask=sp.attention_mask, labels=sp.labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert proj[0].weight.grad is not None and proj[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters())
    with pytest.raises(ImageError, match="image 1"):
        preprocess_images([imgs[0], Image.new("1", (4, 4))], cfg.vision)
