"Integration tests for llmbind.model: training in both embedding modes, save/reload after training, generation, meta 7B tables."
import tempfile
import numpy as np
import pytest
import torch
from PIL import Image
from llmbind.config import LLMBindConfig
from llmbind.data import LLMBindCollator, Sample
from llmbind.model import LLMBindForCausalLM, ModelInputError, _param_group
from llmbind.tokens import IMAGE_TOKEN, format_call
from llmbind.vision import ImageError, ImageProcessor

torch.set_num_threads(1)
CFG = LLMBindConfig.tiny()


def samples(seed=0):
    rng = np.random.default_rng(seed)
    pic = lambda h, w: Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    mask = np.zeros((40, 90), bool); mask[5:25, 30:70] = True
    u = lambda t: {"role": "user", "content": t}
    a = lambda t: {"role": "assistant", "content": t}
    return [Sample("chat", "chat", [u("hello"), a("hi there.")]),
            Sample("vqa", "vqa", [u(f"{IMAGE_TOKEN}\nwhat color?"), a("red.")], image=pic(70, 50)),
            Sample("seg", "referring", [u(f"{IMAGE_TOKEN}\nsegment it."), a(f"sure, {format_call('seg')}.")],
                   image=pic(40, 90), masks=mask[None]),
            Sample("gen", "image_gen", [u("draw a cat"), a(format_call("gen", "a cat"))]),
            Sample("det", "det", [u(f"{IMAGE_TOKEN}\nfind it."), a(f"at {format_call('det')}.")], image=pic(64, 64),
                   boxes=np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)),
            Sample("cls", "cls", [u(f"{IMAGE_TOKEN}\nwhat shape?"), a(f"a {format_call('cls')}.")], image=pic(30, 60), classes=[1])]


def collate(model, ss):
    return LLMBindCollator(model.tokenizer, image_processor=ImageProcessor(model.cfg.vision.image_size),
                           sam_image_size=model.cfg.segment.image_size)(ss)


def train_steps(model, batch, n):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=model.cfg.train.lr, weight_decay=0.0)
    model.train()
    hist = []
    for _ in range(n):
        out = model(**batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        hist.append(dict(out.terms))
    return hist


def test_new_rows_training_touches_only_new_rows():
    model = LLMBindForCausalLM.from_config(CFG.override("llm.train_embeddings=new_rows"))
    emb0 = model.llm.get_input_embeddings().weight.detach().clone()
    head0 = model.llm.get_output_embeddings().weight.detach().clone()
    batch = collate(model, samples())
    hist = train_steps(model, batch, 4)
    assert all(np.isfinite(v) for h in hist for v in h.values())
    new = torch.zeros(emb0.shape[0], dtype=torch.bool); new[model.new_token_ids] = True
    for w0, w in ((emb0, model.llm.get_input_embeddings().weight), (head0, model.llm.get_output_embeddings().weight)):
        changed = (w.detach() != w0).any(1)
        assert not changed[~new].any(), "an old vocabulary row changed in new_rows mode"
        assert changed[new].any()
    tab = model.trainable_parameter_table()
    assert tab.loc["embed_tokens", "trainable"] == 12 * CFG.llm.hidden_size
    # gradients: frozen parameters have none, every trainable one has a non-zero gradient
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == set(model.trainable_names())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_reload_after_training_reproduces_outputs_and_generation():
    model = LLMBindForCausalLM.from_config(CFG, seed=1)
    batch = collate(model, samples())
    train_steps(model, batch, 3)
    model.eval()
    img = np.random.default_rng(5).integers(0, 255, (37, 81, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        other = LLMBindForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        a, b = model(**batch), other(**batch)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pred_masks[2], b.pred_masks[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.hidden_states, b.hidden_states, atol=1e-5, rtol=0)
    assert a.terms["total"] == pytest.approx(b.terms["total"], abs=1e-5)
    ra = model.generate("segment it", image=img, max_new_tokens=10)
    rb = other.generate("segment it", image=img, max_new_tokens=10)
    assert ra.token_ids == rb.token_ids
    fa = model.generate("segment it", image=img, response="<seg> <det> <cls>")
    fb = other.generate("segment it", image=img, response="<seg> <det> <cls>")
    assert fa.masks.shape == (1, 37, 81)
    torch.testing.assert_close(fa.mask_probs, fb.mask_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(fa.boxes, fb.boxes, atol=1e-5, rtol=0)
    assert fa.classes == fb.classes


def test_checkpoint_holds_only_trained_weights():
    from safetensors import safe_open
    model = LLMBindForCausalLM.from_config(CFG)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        with safe_open(f"{d}/model.safetensors", "pt") as f: keys = set(f.keys())
        with safe_open(f"{d}/base.safetensors", "pt") as f: base = set(f.keys())
    assert keys.isdisjoint(base)
    groups = {_param_group(k) for k in keys}
    assert groups <= {"LoRA-MoE routers", "LoRA-MoE experts", "embed_tokens", "lm_head", "projector", "SAM mask decoder",
                      "text_hidden_fcs", "<det> box head", "<cls> class head"}
    assert not any("image_encoder" in k or "vision_tower" in k for k in keys)


def test_sam_runs_only_for_seg_rows():
    model = LLMBindForCausalLM.from_config(CFG).eval()
    ss = samples()
    calls = []
    h = model.segment.sam.image_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        model(**collate(model, [ss[0], ss[1], ss[3], ss[4], ss[5]]))
        assert calls == []
        model(**collate(model, ss))
        model.generate("what is it?", image=np.zeros((20, 20, 3), np.uint8), response="a red circle.")
    h.remove()
    assert calls == [1]


def test_bad_inputs_name_the_sample():
    model = LLMBindForCausalLM.from_config(CFG).eval()
    ss = samples()
    batch = collate(model, ss)
    with pytest.raises(ModelInputError, match=r"sample 4 \('det'\): 1 <det> token\(s\) in its text but 0 ground-truth box"):
        model(**{**batch, "boxes": [torch.zeros(0, 4)] * 6})
    with pytest.raises(ModelInputError, match=r"sample 5 \('cls'\): 2 class label\(s\) but only 1 <cls>"):
        model(**{**batch, "classes": [*batch["classes"][:5], torch.tensor([0, 1])]})
    wrong = [m if i != 2 else torch.zeros(1, 10, 10, dtype=torch.bool) for i, m in enumerate(batch["masks"])]
    with pytest.raises(ModelInputError, match=r"sample 2 \('seg'\): masks are 10x10 but the image is 40x90"):
        model(**{**batch, "masks": wrong})
    with pytest.raises(ImageError, match="sample 0: its image has zero size"):
        model.generate("hi", image=Image.new("RGB", (0, 4)))
    with pytest.raises(ImageError, match="sample 0: its image has single-channel mode"):
        model.generate("hi", image=Image.new("L", (8, 8)))
    with pytest.raises(ModelInputError, match="no image was given"):
        model.generate(f"{IMAGE_TOKEN}\nwhat is it?")


def test_generation_sampling_is_seeded_and_multiturn():
    model = LLMBindForCausalLM.from_config(CFG).eval()
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi."}, {"role": "user", "content": "draw a cat"}]
    a = model.generate(msgs, do_sample=True, temperature=1.0, top_p=0.9, seed=3, max_new_tokens=8)
    b = model.generate(msgs, do_sample=True, temperature=1.0, top_p=0.9, seed=3, max_new_tokens=8)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert model.training is False


def test_paper_7b_meta_tables():
    tabs = {}
    for mode in ("full", "new_rows"):
        with torch.device("meta"):
            m = LLMBindForCausalLM.from_config(LLMBindConfig.paper_7b().override(f"llm.train_embeddings={mode}"))
        assert next(m.parameters()).is_meta
        tabs[mode] = m.trainable_parameter_table()
    full, rows = tabs["full"], tabs["new_rows"]
    assert full.loc["LLM base", "trainable"] == 0 and full.loc["CLIP vision tower", "trainable"] == 0
    assert full.loc["embed_tokens", "trainable"] == 32012 * 4096
    assert rows.loc["embed_tokens", "trainable"] == 12 * 4096
    assert 0.02 < full.loc["all", "share"] < 0.08
    assert rows.loc["all", "share"] < 0.02


def test_bf16_model_trains_every_head():
    # DeepSpeed's bf16 mode casts the whole model, buffers included (SAM's positional-encoding matrix among
    # them); every head must still run, and the loss must match fp32 to bf16 precision
    fp32 = LLMBindForCausalLM.from_config(CFG, seed=2)
    ref = fp32(**collate(fp32, samples())).terms["total"]
    model = LLMBindForCausalLM.from_config(CFG.override("dtype=bfloat16"), seed=2)
    assert model.dtype == torch.bfloat16
    assert model.segment.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.bfloat16
    out = model(**collate(model, samples()))
    assert out.terms["total"] == pytest.approx(ref, rel=2e-2)
    assert out.pred_masks[2].dtype == torch.bfloat16 and out.pred_masks[2].shape == (1, 40, 90)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g.float()).all() for g in grads)
