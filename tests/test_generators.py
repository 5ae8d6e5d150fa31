"""Round trips for llmbind.generators: tiny pipelines -> save_pretrained -> the user's loader -> same outputs."""
import dataclasses, json, shutil, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from llmbind import generators as G
from llmbind.config import GeneratorsConfig, LLMBindConfig

torch.set_num_threads(1)
TINY = LLMBindConfig.tiny().generators
PROMPTS = {"gen": "a red circle", "edit": "make it blue", "video": "a ball bouncing", "audio": "rain on a roof"}
CASES = [  # (id, generator class, pipeline kind, extra kwargs)
    ("gen", G.ImageGenerator, "sd", {}),
    ("edit", G.ImageEditor, "instruct_pix2pix", {}),
    ("video", G.VideoGenerator, "text_to_video", {}),
    ("audioldm", G.AudioGenerator, "audioldm", {"audio_kind": "audioldm"}),
    ("audioldm2", G.AudioGenerator, "audioldm2", {"audio_kind": "audioldm2"}),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    "Every tiny pipeline saved once, as a user's checkpoint folder would look."
    root = tmp_path_factory.mktemp("ckpt")
    out = {kind: G.save_pipeline(G.build_tiny_pipeline(kind, seed=0), root / kind) for _, _, kind, _ in CASES}
    yield out
    G.clear_pipeline_cache()


@pytest.fixture(scope="module")
def source_image():
    return G.ImageGenerator.tiny()("a test picture", seed=11).data


def as_array(art):
    if art.kind == "video": return np.stack([np.asarray(f, dtype=np.float32) for f in art.data])  # (F, H, W, 3)
    return np.asarray(art.data, dtype=np.float32)


def tiny_sizes(cls, **kw):
    return dict(num_inference_steps=TINY.num_inference_steps, guidance_scale=TINY.guidance_scale,
                **{**cls._size_kwargs(TINY), **kw})


@pytest.mark.parametrize("name,cls,kind,kw", CASES, ids=[c[0] for c in CASES])
def test_round_trip_same_output(folders, source_image, name, cls, kind, kw):
    image = source_image if cls.needs_image else None
    prompt = PROMPTS[cls.task]
    tiny = cls.tiny(**kw)
    loaded = cls.from_pretrained(folders[kind], device="cpu", dtype="float32", **tiny_sizes(cls, **kw))
    assert not loaded.loaded                                        # lazy: nothing loaded before the first call
    a, b = tiny(prompt, image=image, seed=5), loaded(prompt, image=image, seed=5)
    assert loaded.loaded and type(loaded.pipe).__name__ == G.PIPELINES[kind].pipeline
    assert (a.kind, a.task, a.seed, a.prompt) == (b.kind, b.task, b.seed, b.prompt)
    x, y = as_array(a), as_array(b)
    assert x.shape == y.shape
    tol = 1.0 if a.kind in ("image", "video") else 1e-5             # 8-bit pixels: one grey level
    assert np.abs(x - y).max() <= tol
    # the seed matters, and the same seed reproduces
    c = loaded(prompt, image=image, seed=6)
    assert np.abs(as_array(c) - y).max() > tol
    assert np.abs(as_array(loaded(prompt, image=image, seed=5)) - y).max() <= tol


def test_output_shapes(folders, source_image):
    reg = G.GeneratorRegistry.from_config(TINY, device="cpu", dtype="float32")
    img = reg.run("gen", "a star", seed=0)
    assert img.data.size == (TINY.image_size, TINY.image_size)
    assert reg.run("edit", "greener", image=img.data).data.size == img.data.size
    vid = reg.run("video", "waves")
    assert len(vid.data) == TINY.num_frames and vid.data[0].size == (TINY.image_size, TINY.image_size)
    aud = reg.run("audio", "a bell")
    assert aud.data.dtype == np.float32 and aud.data.shape == (int(TINY.audio_seconds * aud.sample_rate),)
    assert np.isfinite(aud.data).all() and np.abs(aud.data).max() > 1e-4  # audible, not numerically silent


def test_from_config_with_folders_matches_tiny(folders, source_image):
    cfg = dataclasses.replace(TINY, tiny=False, image_gen_path=str(folders["sd"]), image_edit_path=str(folders["instruct_pix2pix"]),
                              video_path=str(folders["text_to_video"]), audio_path=str(folders["audioldm2"]), audio_kind="audioldm2")
    reg = G.GeneratorRegistry.from_config(cfg, device="cpu", dtype="float32")
    tiny = G.GeneratorRegistry.from_config(dataclasses.replace(TINY, audio_kind="audioldm2"), device="cpu", dtype="float32")
    assert reg.tasks() == tiny.tasks() == ["gen", "edit", "video", "audio"]
    for task in reg.tasks():
        image = source_image if task == "edit" else None
        a, b = reg.run(task, PROMPTS[task], image=image, seed=1), tiny.run(task, PROMPTS[task], image=image, seed=1)
        assert np.abs(as_array(a) - as_array(b)).max() <= (1.0 if a.kind != "audio" else 1e-5)


def test_loader_respects_dtype_and_caches(folders):
    g = G.ImageGenerator.from_pretrained(folders["sd"], device="cpu", dtype="bfloat16", **tiny_sizes(G.ImageGenerator)).load()
    assert g.pipe.unet.dtype == torch.bfloat16 and g.pipe.vae.dtype == torch.bfloat16
    assert g.pipe.device.type == "cpu"
    h = G.ImageGenerator.from_pretrained(folders["sd"], device="cpu", dtype="bfloat16", **tiny_sizes(G.ImageGenerator)).load()
    assert h.pipe is g.pipe                                          # one copy per (kind, folder, device, dtype)
    f32 = G.ImageGenerator.from_pretrained(folders["sd"], device="cpu", dtype="float32", **tiny_sizes(G.ImageGenerator)).load()
    assert f32.pipe is not g.pipe and f32.pipe.unet.dtype == torch.float32
    assert g("a cat").data.size == (TINY.image_size, TINY.image_size)


def test_incomplete_folders_name_the_missing_part(folders, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(folders["sd"], broken)
    for f in (broken / "text_encoder").glob("*.safetensors"): f.unlink()
    with pytest.raises(FileNotFoundError, match="'text_encoder/' has no weights"):
        G.ImageGenerator.from_pretrained(broken)
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(FileNotFoundError, match="scheduler"):
        G.check_pipeline_folder("sd", broken)
    with pytest.raises(ValueError, match="audio_kind to 'audioldm2'"):
        G.AudioGenerator.from_pretrained(folders["audioldm2"], audio_kind="audioldm")
    with pytest.raises(ValueError, match="needs a TextToVideoSDPipeline"):
        G.VideoGenerator.from_pretrained(folders["sd"])
    # unchecked (as from_config builds them): the error comes at the first call and names the config field
    reg = G.GeneratorRegistry.from_config(dataclasses.replace(TINY, video_path=str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match="generators.video_path"):
        reg.run("video", "waves")


def test_saved_files(tmp_path, monkeypatch):
    reg = G.GeneratorRegistry.from_config(TINY, device="cpu", dtype="float32")
    vid = reg.run("video", "waves", seed=0)
    p = vid.save(tmp_path, "clip")
    assert p.suffix == ".mp4" and sorted(Path(f).name for f in vid.extra["files"]) == ["clip.gif", "clip.mp4"]
    import imageio_ffmpeg
    assert imageio_ffmpeg.count_frames_and_secs(str(p))[0] == TINY.num_frames
    aud = reg.run("audio", "a bell", seed=0)
    from scipy.io import wavfile
    sr, pcm = wavfile.read(aud.save(tmp_path, "bell"))
    assert sr == aud.sample_rate and len(pcm) == len(aud.data)
    meta = json.loads(json.dumps([vid.to_dict(), aud.to_dict()]))
    assert meta[0]["files"] == vid.extra["files"] and meta[1]["extra"]["sample_rate"] == aud.sample_rate
    monkeypatch.setattr(G, "_ffmpeg_exe", lambda: None)
    with pytest.warns(UserWarning, match="GIF only"):
        q = vid.save(tmp_path / "noffmpeg", "clip")
    assert q.suffix == ".gif" and not (tmp_path / "noffmpeg" / "clip.mp4").exists()


def test_not_configured_names_the_field():
    reg = G.GeneratorRegistry.from_config(GeneratorsConfig())
    assert reg.tasks() == [] and set(reg.not_configured) == {"gen", "edit", "video", "audio"}
    for task, fld in [("gen", "image_gen_path"), ("edit", "image_edit_path"), ("video", "video_path"), ("audio", "audio_path")]:
        with pytest.raises(G.GeneratorNotConfigured, match=f"generators.{fld}"):
            reg.get(task)
    with pytest.raises(G.MissingImageError, match="there is none yet"):
        G.ImageEditor.tiny()("make it red")
