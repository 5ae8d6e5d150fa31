"""Tiny checkpoints in the on-disk formats users have: original LLaVA, llava-hf, Vicuna, OpenAI CLIP, SAM.

Plain Python (no pytest): tests and notebooks put this folder on `sys.path` and call the writers. Every
writer returns the tensors it wrote (or the path), so a test can compare what a loader read with what
is on disk. Sizes are tiny (LLM width 64, 2 layers; CLIP 32 px) so writing everything takes seconds.
"""
from __future__ import annotations
import io, json
from pathlib import Path
import torch

LLM_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 max_position_embeddings=256, rms_norm_eps=1e-6)
CLIP_VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   projection_dim=16)
CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                 max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
SAM_SIZES = dict(image_size=32, prompt_embed_dim=16, encoder_embed_dim=32, encoder_depth=1, encoder_patch_size=8,
                 encoder_num_heads=2, decoder_depth=1)
CORPUS = ["A chat between a curious user and an artificial intelligence assistant.",
          "USER: what is in the picture? ASSISTANT: a red circle and a blue square on a grey background.",
          "segment the dog please. Sure, it is here. Draw a cat on the grass; make a video of the sea; play rain sounds.",
          "0123456789 the quick brown fox jumps over the lazy dog."]
_SP_MODEL: bytes | None = None


def _added(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def sentencepiece_model() -> bytes:
    "A LLaMA-like sentencepiece BPE model (unk 0, bos 1, eos 2, byte fallback), trained offline once per process."
    global _SP_MODEL
    if _SP_MODEL is None:
        import sentencepiece as spm
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 10), model_writer=buf, vocab_size=320, model_type="bpe",
                                       byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
                                       split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
                                       normalization_rule_name="identity", hard_vocab_limit=False, num_threads=1, minloglevel=2)
        _SP_MODEL = buf.getvalue()
    return _SP_MODEL


def write_sp_tokenizer(path, model_max_length: int = 2048, pad_unk: bool = False) -> int:
    "tokenizer.model + Vicuna-like tokenizer_config.json + special_tokens_map.json (no tokenizer.json); returns the vocabulary size."
    import sentencepiece as spm
    path = Path(path); path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(sentencepiece_model())
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": _added("<s>"), "clean_up_tokenization_spaces": False,
           "eos_token": _added("</s>"), "legacy": False, "model_max_length": model_max_length, "pad_token": None,
           "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": _added("<unk>")}
    special = {"bos_token": _added("<s>"), "eos_token": _added("</s>"), "unk_token": _added("<unk>")}
    if pad_unk: cfg["pad_token"] = special["pad_token"] = "<unk>"           # LLaVA saves its tokenizer with pad = unk
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return spm.SentencePieceProcessor(model_proto=sentencepiece_model()).get_piece_size()


def _llama(vocab_size: int, seed: int, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM
    c = LlamaConfig(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                    **{**LLM_SIZES, **extra})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return c, LlamaForCausalLM(c)


def _state(module) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _write_shards(path: Path, tensors: dict, fmt: str, shards: int, prefix: str = ""):
    "Write `tensors` as HF does: one file, or `shards` files plus an index.json (safetensors or pytorch .bin)."
    from safetensors.torch import save_file
    if fmt not in ("bin", "safetensors"): raise ValueError(f"fmt must be 'bin' or 'safetensors', got {fmt!r}")
    stem, ext = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    keys = list(tensors)
    parts = [keys[i::shards] for i in range(shards)] if shards > 1 else [keys]
    weight_map = {}
    for i, ks in enumerate(parts):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}" if shards > 1 else f"{stem}.{ext}"
        chunk = {k: tensors[k] for k in ks}
        if fmt == "bin": torch.save(chunk, path / name)
        else: save_file(chunk, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in ks})
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (path / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_vicuna(path, fmt: str = "bin", shards: int = 2, seed: int = 0) -> dict:
    "A Vicuna-like folder: LlamaForCausalLM weights (sharded .bin as vicuna-7b-v1.5), config.json, sentencepiece tokenizer. Returns the tensors."
    path = Path(path); path.mkdir(parents=True, exist_ok=True)
    vocab = write_sp_tokenizer(path, model_max_length=4096)
    c, m = _llama(vocab, seed)
    d = c.to_dict(); d.update(architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="float16")
    (path / "config.json").write_text(json.dumps(d, indent=2))
    sd = {k: v.half() for k, v in _state(m).items()}
    _write_shards(path, sd, fmt, shards)
    return sd


def write_llava_original(path, projector: str = "linear", fmt: str = "bin", shards: int = 2, seed: int = 1,
                         clip_hidden: int = CLIP_VISION["hidden_size"]) -> dict:
    "An original LLaVA folder (haotian-liu/LLaVA): LlavaLlamaForCausalLM config with mm_* keys, LLaMA + model.mm_projector weights. Returns the tensors."
    if projector not in ("linear", "mlp2x_gelu"): raise ValueError(f"projector must be 'linear' or 'mlp2x_gelu', got {projector!r}")
    path = Path(path); path.mkdir(parents=True, exist_ok=True)
    vocab = write_sp_tokenizer(path, model_max_length=2048, pad_unk=True)
    c, m = _llama(vocab, seed)
    d = c.to_dict()
    d.update(architectures=["LlavaLlamaForCausalLM"], model_type="llava", torch_dtype="float16", mm_hidden_size=clip_hidden,
             mm_use_im_start_end=False, mm_vision_select_layer=-2, mm_vision_tower="openai/clip-vit-large-patch14",
             use_mm_proj=True, tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False)
    if projector == "mlp2x_gelu":                # LLaVA-1.5 names the projector; Lightning (v1) has no such key: linear
        d.update(model_type="llava_llama", mm_projector_type="mlp2x_gelu", mm_vision_select_feature="patch",
                 mm_patch_merge_type="flat", image_aspect_ratio="pad")
    (path / "config.json").write_text(json.dumps(d, indent=2))
    sd = _state(m)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 100)
        H = c.hidden_size
        if projector == "linear":
            sd["model.mm_projector.weight"], sd["model.mm_projector.bias"] = torch.randn(H, clip_hidden) * 0.1, torch.randn(H) * 0.1
        else:
            sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"] = torch.randn(H, clip_hidden) * 0.1, torch.randn(H) * 0.1
            sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"] = torch.randn(H, H) * 0.1, torch.randn(H) * 0.1
    inv = 1.0 / (10000 ** (torch.arange(0, c.hidden_size // c.num_attention_heads, 2).float() / (c.hidden_size // c.num_attention_heads)))
    for i in range(c.num_hidden_layers):         # transformers 4.28 (Lightning's) stored the rotary buffer in the weights
        sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    sd = {k: v.half() for k, v in sd.items()}
    _write_shards(path, sd, fmt, shards)
    return sd


def _clip_config():
    from transformers import CLIPConfig
    return CLIPConfig(vision_config=dict(CLIP_VISION), text_config=dict(CLIP_TEXT), projection_dim=16)


def write_clip(path, seed: int = 2) -> dict:
    "A full CLIPModel folder (text and vision halves) like openai/clip-vit-large-patch14, with the legacy 'vision_model.' key names. Returns the tensors."
    from transformers import CLIPModel
    from safetensors.torch import save_file
    path = Path(path); path.mkdir(parents=True, exist_ok=True)
    c = _clip_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = CLIPModel(c)
    sd = {}
    for k, v in _state(m).items():               # the OpenAI folders name the vision half 'vision_model.*' whatever
        if k.startswith(("text_model.", "vision_model.", "visual_projection", "text_projection", "logit_scale")): sd[k] = v
        elif k.startswith("vision_tower."): sd["vision_model." + k[len("vision_tower."):]] = v
        else: sd[k] = v
    n_pos = (CLIP_VISION["image_size"] // CLIP_VISION["patch_size"]) ** 2 + 1
    sd["vision_model.embeddings.position_ids"] = torch.arange(n_pos)[None]        # a buffer that old checkpoints carry
    sd["text_model.embeddings.position_ids"] = torch.arange(CLIP_TEXT["max_position_embeddings"])[None]
    d = c.to_dict(); d.update(architectures=["CLIPModel"])
    (path / "config.json").write_text(json.dumps(d, indent=2))
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return sd


def write_llava_hf(path, layout: str = "old", seed: int = 3, shards: int = 2) -> dict:
    "A llava-hf folder (LlavaForConditionalGeneration, e.g. llava-1.5-7b-hf) in the 'old' (language_model.model.*) or 'v5' (model.language_model.*) key layout. Returns the tensors."
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, AutoTokenizer
    if layout not in ("old", "v5"): raise ValueError(f"layout must be 'old' or 'v5', got {layout!r}")
    path = Path(path); path.mkdir(parents=True, exist_ok=True)
    write_sp_tokenizer(path / "_sp", model_max_length=4096)
    tok = AutoTokenizer.from_pretrained(str(path / "_sp"), local_files_only=True)
    tok.add_tokens(["<image>"], special_tokens=True); tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(str(path))
    for f in (path / "_sp").iterdir(): f.unlink()
    (path / "_sp").rmdir()
    vocab = (len(tok) + 63) // 64 * 64                       # llava-hf pads the vocabulary to a multiple of 64 (32064)
    tc = LlamaConfig(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=len(tok) - 1, **LLM_SIZES)
    c = LlavaConfig(text_config=tc.to_dict(), vision_config=CLIPVisionConfig(**CLIP_VISION).to_dict(),
                    image_token_index=tok.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
                    vision_feature_layer=-2, vision_feature_select_strategy="default")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = LlavaForConditionalGeneration(c)
    sd = {}
    for k, v in _state(m).items():               # this transformers' names -> the two layouts on the hub, independent of version
        k = k.replace("model.vision_tower.vision_model.", "model.vision_tower.")
        if k.startswith("model.vision_tower."): k = "model.vision_tower.vision_model." + k[len("model.vision_tower."):]
        if layout == "old":
            for a, b in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                         ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector.")):
                if k.startswith(a): k = b + k[len(a):]; break
        sd[k] = v
    d = c.to_dict(); d.update(architectures=["LlavaForConditionalGeneration"])
    (path / "config.json").write_text(json.dumps(d, indent=2))
    _write_shards(path, sd, "safetensors", shards)
    return sd


def tiny_sam_config():
    "The `SegmentConfig` of the tiny SAM that write_sam writes."
    from llmbind.config import SegmentConfig
    return SegmentConfig(sam_type="tiny", class_names=[], **SAM_SIZES)


def write_sam(path, seed: int = 4) -> dict:
    "A SAM .pth (a plain state dict with segment-anything's key names) for the tiny SAM of `tiny_sam_config()`. Returns the tensors."
    from llmbind.segment import build_sam
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    sam = build_sam(tiny_sam_config(), load_checkpoint=False, seed=seed)
    sd = _state(sam)
    torch.save(sd, path)
    return sd


def write_generators(root) -> list[str]:
    "The four diffusers folders under paper_7b's names, from llmbind.generators' tiny builders; returns their paths."
    from llmbind.generators import build_tiny_pipeline, save_pipeline
    root, out = Path(root), []
    for kind, name in (("sd", "stable-diffusion-v1-5"), ("instruct_pix2pix", "instruct-pix2pix"),
                       ("text_to_video", "text-to-video-ms-1.7b"), ("audioldm", "audioldm-s-full-v2")):
        out.append(str(save_pipeline(build_tiny_pipeline(kind), root / name)))
    return out


def write_checkpoints(root, generators: bool = False) -> list[str]:
    "Everything `LLMBindConfig.paper_7b(root)` names, tiny; returns the `key=value` overrides that make that config a tiny CPU one."
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    write_llava_original(root / "LLaVA-Lightning-7B-v1-1", projector="linear")
    write_clip(root / "clip-vit-large-patch14")
    write_sam(root / "sam_vit_h_4b8939.pth")
    if generators: write_generators(root)
    L, V, S = LLM_SIZES, CLIP_VISION, SAM_SIZES
    sets = [f"llm.hidden_size={L['hidden_size']}", f"llm.intermediate_size={L['intermediate_size']}",
            f"llm.num_layers={L['num_hidden_layers']}", f"llm.num_heads={L['num_attention_heads']}",
            f"llm.num_kv_heads={L['num_key_value_heads']}", f"llm.max_position_embeddings={L['max_position_embeddings']}",
            f"llm.rms_norm_eps={L['rms_norm_eps']}", "llm.vocab_size=320", "llm.model_max_length=128",
            f"vision.image_size={V['image_size']}", f"vision.patch_size={V['patch_size']}", f"vision.hidden_size={V['hidden_size']}",
            f"vision.num_layers={V['num_hidden_layers']}", f"vision.num_heads={V['num_attention_heads']}",
            f"vision.intermediate_size={V['intermediate_size']}", f"data.image_size={V['image_size']}",
            "segment.sam_type=tiny"] + [f"segment.{k}={v}" for k, v in S.items()] + [
            "segment.class_names=[circle,square]", "moe.layers=every_other",
            "chat.system=A chat.",     # LLaVA's system message alone would fill most of the tiny 128-position context
            "train.micro_batch_size=2", "train.grad_accum=1", "train.precision=fp32", "train.nproc=1", "train.total_steps=2",
            "train.warmup_steps=1", "device=cpu", "dtype=float32"]
    if generators:
        sets += ["generators.num_inference_steps=2", "generators.image_size=32", "generators.num_frames=4",
                 "generators.audio_seconds=0.5"]
    return sets
