"Checkpoints as users have them: original LLaVA, llava-hf (both key layouts), Vicuna + CLIP, SAM; strictness; the paper config in miniature."
import sys, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_checkpoints as fx
from llmbind.config import LLMBindConfig
from llmbind.data import LLMBindCollator, Sample
from llmbind.model import (LLMBindForCausalLM, RandomProjectorWarning, build_tokenizer, checkpoint_kind,
                           resolve_checkpoint_config)
from llmbind.segment import build_sam
from llmbind.tokens import IMAGE_TOKEN, format_call
from llmbind.vision import CheckpointKeyError, ImageProcessor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("ckpt")
    sets = fx.write_checkpoints(r)
    written = {"lightning": fx.write_llava_original(r / "lightning-again"), "clip": fx.write_clip(r / "clip-again"),
               "sam": fx.write_sam(r / "sam-again.pth")}
    return r, sets, written


def paper(root, *more):
    r, sets, _ = root
    return LLMBindConfig.paper_7b(r).override(*sets, *more)


def batch_for(model, with_seg=True):
    rng = np.random.default_rng(0)
    pic = lambda h, w: Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    mask = np.zeros((20, 30), bool); mask[5:15, 5:20] = True
    u = lambda t: {"role": "user", "content": t}
    a = lambda t: {"role": "assistant", "content": t}
    ss = [Sample("vqa", "vqa", [u(f"{IMAGE_TOKEN}\nwhat color?"), a("red.")], image=pic(24, 40)),
          Sample("seg", "referring", [u(f"{IMAGE_TOKEN}\nsegment it."), a(f"sure, {format_call('seg')}.")], image=pic(20, 30),
                 masks=mask[None])]
    if not with_seg: ss[1] = Sample("gen", "image_gen", [u("draw a cat"), a(format_call("gen", "a cat"))])
    return LLMBindCollator(model.tokenizer, image_processor=ImageProcessor(model.cfg.vision.image_size),
                           sam_image_size=model.cfg.segment.image_size)(ss)


def same(model_tensors: dict, written: dict, rename=lambda k: k):
    for k, v in model_tensors.items():
        torch.testing.assert_close(v.detach().float(), written[rename(k)].float(), rtol=0, atol=0)


def test_original_llava_loads_llm_projector_clip_sam(root):
    r, _, written = root
    m = LLMBindForCausalLM.from_config(paper(root, "moe.enabled=false"))
    w = written["lightning"]
    llm_sd = {k: v for k, v in m.llm.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    same(llm_sd, w)
    V = 320                                                   # the folder's rows; the task tokens come after them
    torch.testing.assert_close(m.llm.get_input_embeddings().weight[:V].detach(), w["model.embed_tokens.weight"].float())
    same(m.projector.state_dict(), w, lambda k: "model.mm_projector." + k)
    assert not m.projector.weight.requires_grad
    clip = written["clip"]
    own = m.vision_tower.model.state_dict()
    pre = "" if any(k.startswith("vision_model.") for k in own) else "vision_model."
    same({k: v for k, v in own.items() if not k.endswith("position_ids")}, clip, lambda k: pre + k)
    same(m.segment.sam.state_dict(), written["sam"])
    assert m.cfg.vision.projector == "linear" and m.cfg.llm.hidden_size == 64


@pytest.mark.parametrize("projector,fmt", [("mlp2x_gelu", "safetensors"), ("linear", "bin")])
def test_llava_projector_kinds_and_formats(root, tmp_path, projector, fmt):
    r = root[0]
    w = fx.write_llava_original(tmp_path / "llava", projector=projector, fmt=fmt, shards=3)
    m = LLMBindForCausalLM.from_config(paper(root, f"llm.pretrained_path={tmp_path / 'llava'}", "moe.enabled=false"))
    assert m.cfg.vision.projector == projector
    same(m.projector.state_dict(), w, lambda k: "model.mm_projector." + k)
    same(m.llm.model.layers[1].state_dict(), w, lambda k: "model.layers.1." + k)


@pytest.mark.parametrize("layout", ["old", "v5"])
def test_llava_hf_both_layouts(root, tmp_path, layout):
    w = fx.write_llava_hf(tmp_path / "hf", layout=layout)
    cfg = paper(root, f"llm.pretrained_path={tmp_path / 'hf'}", "vision.pretrained_path=null", "moe.enabled=false")
    m = LLMBindForCausalLM.from_config(cfg)
    assert m.cfg.vision.pretrained_path == str(tmp_path / "hf") and m.cfg.vision.projector == "mlp2x_gelu"
    lm = "language_model.model." if layout == "old" else "model.language_model."
    same(m.llm.model.layers[0].state_dict(), w, lambda k: lm + "layers.0." + k)
    pj = "multi_modal_projector." if layout == "old" else "model.multi_modal_projector."
    same(m.projector.state_dict(), w, lambda k: pj + k.replace("0.", "linear_1.").replace("2.", "linear_2."))
    vt = "vision_tower.vision_model." if layout == "old" else "model.vision_tower.vision_model."
    own = m.vision_tower.model.state_dict()
    same({k: v for k, v in own.items() if not k.endswith("position_ids")}, w, lambda k: vt + k.removeprefix("vision_model."))
    tok = build_tokenizer(cfg)
    assert tok.pad_token == "<pad>" and tok.convert_tokens_to_ids("<image>") == m.image_token_id


def test_vicuna_with_clip_gets_a_trainable_new_projector(root, tmp_path):
    r = root[0]
    w = fx.write_vicuna(tmp_path / "vicuna")
    assert checkpoint_kind(tmp_path / "vicuna") == "llama"
    cfg = paper(root, f"llm.pretrained_path={tmp_path / 'vicuna'}", "moe.enabled=false")
    with pytest.warns(RandomProjectorWarning, match="projector is initialised at random; it will be trained"):
        m = LLMBindForCausalLM.from_config(cfg)
    assert m.cfg.vision.train_projector and m.projector.weight.requires_grad
    same(m.llm.model.norm.state_dict(), w, lambda k: "model.norm." + k)
    tok = build_tokenizer(cfg)                                # only tokenizer.model + tokenizer_config.json in the folder
    assert not (tmp_path / "vicuna" / "tokenizer.json").exists()
    assert tok.pad_token == "<unk>" and tok("hello")["input_ids"][0] == tok.bos_token_id == 1


def test_strictness_names_keys_and_can_warn(root, tmp_path):
    from safetensors.torch import load_file, save_file
    w = fx.write_llava_original(tmp_path / "llava", fmt="safetensors", shards=1)
    sd = load_file(str(tmp_path / "llava" / "model.safetensors"))
    cfg = paper(root, f"llm.pretrained_path={tmp_path / 'llava'}", "moe.enabled=false")
    sd.pop("model.layers.1.mlp.down_proj.weight"); sd["model.extra_adapter.weight"] = torch.ones(2)
    save_file(sd, str(tmp_path / "llava" / "model.safetensors"))
    with pytest.raises(CheckpointKeyError, match=r"1 \['model.layers.1.mlp.down_proj.weight'\] missing keys, "
                                                 r"1 \['model.extra_adapter.weight'\] unexpected keys.*--set strict_load=false"):
        LLMBindForCausalLM.from_config(cfg)
    with pytest.warns(UserWarning, match="model.layers.1.mlp.down_proj.weight"):
        m = LLMBindForCausalLM.from_config(cfg.override("strict_load=false"))
    same(m.llm.model.layers[0].state_dict(), w, lambda k: "model.layers.0." + k)
    sd.pop("model.mm_projector.bias"); sd["model.layers.1.mlp.down_proj.weight"] = w["model.layers.1.mlp.down_proj.weight"]
    sd.pop("model.extra_adapter.weight")
    save_file(sd, str(tmp_path / "llava" / "model.safetensors"))
    with pytest.raises(CheckpointKeyError, match=r"projector.*1 \['bias'\] missing keys"):
        LLMBindForCausalLM.from_config(cfg)


def test_clip_and_sam_strictness(root, tmp_path):
    from safetensors.torch import load_file, save_file
    import shutil
    r = root[0]
    shutil.copytree(r / "clip-vit-large-patch14", tmp_path / "clip")
    sd = load_file(str(tmp_path / "clip" / "model.safetensors"))
    sd.pop("vision_model.pre_layrnorm.weight")
    save_file(sd, str(tmp_path / "clip" / "model.safetensors"))
    with pytest.raises(CheckpointKeyError, match="pre_layrnorm.weight"):
        LLMBindForCausalLM.from_config(paper(root, f"vision.pretrained_path={tmp_path / 'clip'}", "moe.enabled=false"))
    sam = torch.load(r / "sam_vit_h_4b8939.pth", weights_only=True)
    sam["mask_decoder.extra"] = torch.ones(1)
    torch.save(sam, tmp_path / "sam.pth")
    scfg = fx.tiny_sam_config()
    from dataclasses import replace
    with pytest.raises(CheckpointKeyError, match=r"1 \['mask_decoder.extra'\] unexpected keys"):
        build_sam(replace(scfg, checkpoint=str(tmp_path / "sam.pth")))
    with pytest.warns(UserWarning, match="mask_decoder.extra"):
        build_sam(replace(scfg, checkpoint=str(tmp_path / "sam.pth")), strict=False)


def test_tokenizer_errors(root, tmp_path):
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text((root[0] / "LLaVA-Lightning-7B-v1-1" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        build_tokenizer(paper(root, f"llm.pretrained_path={tmp_path / 'llm'}"))


def test_paper_config_in_miniature_trains_and_round_trips(root, tmp_path):
    cfg = paper(root)
    resolved, notes = resolve_checkpoint_config(LLMBindConfig.paper_7b(root[0]))
    assert resolved.llm.hidden_size == 64 and any("llm.hidden_size: 4096 -> 64" in n for n in notes)
    m = LLMBindForCausalLM.from_config(cfg).train()
    out = m(**batch_for(m))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.pred_masks[1].shape == (1, 20, 30)
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    # a batch without <seg>: every trainable tensor still gets a (zero) gradient (ZeRO-2 buckets agree across ranks)
    m.zero_grad(set_to_none=True)
    m(**batch_for(m, with_seg=False)).loss.backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad: p.add_(0.01)
    m.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "base.safetensors").exists()
    assert LLMBindConfig.from_file(tmp_path / "saved" / "config.json").llm.hidden_size == 64
    m2 = LLMBindForCausalLM.from_pretrained(tmp_path / "saved")
    m.eval(); m2.eval()
    b = batch_for(m)
    with torch.no_grad():
        torch.testing.assert_close(m(**b).logits, m2(**b).logits, atol=1e-5, rtol=0)
    # a saved file that lost tensors, or holds NaN, is refused
    from safetensors.torch import load_file, save_file
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    save_file({}, str(tmp_path / "saved" / "model.safetensors"))
    with pytest.raises(CheckpointKeyError, match=f"{len(saved)} \\[.*missing keys"):
        LLMBindForCausalLM.from_pretrained(tmp_path / "saved")
    k = next(k for k in saved if k.endswith("lora_B"))
    saved[k] = saved[k].clone(); saved[k].view(-1)[0] = float("inf")
    save_file(saved, str(tmp_path / "saved" / "model.safetensors"))
    with pytest.raises(ValueError, match="NaN or inf"):
        LLMBindForCausalLM.from_pretrained(tmp_path / "saved")


def test_gradient_checkpointing_same_loss_and_grads(root):
    cfg = paper(root)
    res = []
    for gc in ("false", "true"):
        m = LLMBindForCausalLM.from_config(cfg.override(f"train.gradient_checkpointing={gc}")).train()
        o = m(**batch_for(m)); o.loss.backward()
        res.append((o.loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = res
    torch.testing.assert_close(l1, l0)
    assert sorted(g0) == sorted(g1)
    for n in g0: torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-4)


def test_llm_is_read_straight_into_its_dtype(root):
    from llmbind.model import build_llm, read_llm_folder
    cfg = paper(root, "dtype=bfloat16")
    parts = read_llm_folder(root[0] / "LLaVA-Lightning-7B-v1-1", torch.bfloat16)
    t = parts["llm"]["model.layers.0.mlp.up_proj.weight"]
    llm = build_llm(cfg, 320, torch.bfloat16, tensors=parts)
    assert llm.model.layers[0].mlp.up_proj.weight.data_ptr() == t.data_ptr()      # the tensor read is the parameter: no copy
    assert all(p.dtype == torch.bfloat16 for p in llm.parameters())
    assert llm.model.rotary_emb.inv_freq.device.type == "cpu" and not llm.model.rotary_emb.inv_freq.is_meta
