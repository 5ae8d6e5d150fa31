"""Dispatch of every task tag through LLMBindAgent.execute, the failure notes, run folders, and `llmbind chat` end to end."""
import io, json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llmbind.agent import LLMBindAgent, Turn, chat_command, mask_overlay, box_overlay
from llmbind.config import GeneratorsConfig, LLMBindConfig
from llmbind.generators import GeneratorRegistry
from llmbind.tokens import TASKS

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def fake_registry(log):
    "Instant stand-ins for the four generators; each call is recorded as (task, prompt, image size)."
    def make(task, kind):
        def fn(prompt, image=None, seed=0):
            log.append((task, prompt, None if image is None else image.size))
            if kind == "image": return Image.new("RGB", (24, 16), (seed * 30 % 256, 90, 160))
            if kind == "video": return np.zeros((3, 16, 16, 3), np.uint8)
            return np.zeros(400, np.float32), {"sample_rate": 8000}
        return fn
    reg = GeneratorRegistry()
    reg.register("gen", make("gen", "image"), kind="image")
    reg.register("edit", make("edit", "image"), kind="image", needs_image=True)
    reg.register("video", make("video", "video"), kind="video")
    reg.register("audio", make("audio", "audio"), kind="audio")
    return reg


@pytest.fixture(scope="module")
def model():
    return LLMBindAgent.from_preset("tiny").model


@pytest.fixture
def log():
    return []


@pytest.fixture
def agent(model, log):
    a = LLMBindAgent(model, fake_registry(log))
    a.set_image(Image.new("RGB", (30, 20), (10, 200, 10)))
    return a


# --- every tag and alias -------------------------------------------------------------------------------
PROMPT_TAGS = [(t.task, o, c) for t in TASKS.values() if t.kind == "prompt" for o, c in ((t.open, t.close), *t.aliases)]
EMBED_TAGS = [(t.task, s) for t in TASKS.values() if t.kind == "embedding" for s in (t.open, *t.aliases)]
KIND = {"gen": "image", "edit": "image", "video": "video", "audio": "audio"}


def test_tag_lists_cover_the_table():
    assert {o for _, o, _ in PROMPT_TAGS} == {"<gen>", "<edit>", "<vid_cap>", "<video_cap>", "<aud_cap>", "<audio_cap>"}
    assert {s for _, s in EMBED_TAGS} == {"<seg>", "<det>", "<detect>", "<cls>"}


@pytest.mark.parametrize("task,open_,close", PROMPT_TAGS, ids=[o for _, o, _ in PROMPT_TAGS])
def test_prompt_tag(agent, log, task, open_, close):
    t = agent.execute(f"Here you are: {open_}  a quiet lake at dawn {close} enjoy!", user="please")
    assert t.messages == [], t.messages
    assert [(c.task, c.prompt, c.tag) for c in t.calls] == [(task, "a quiet lake at dawn", open_)]
    assert [(a.kind, a.task) for a in t.artifacts] == [(KIND[task], task)]
    assert log[-1][:2] == (task, "a quiet lake at dawn")
    assert log[-1][2] == (30, 20)                       # every generator is offered the current image
    if task in ("gen", "edit"): assert agent.current_image is t.artifacts[0].data
    else: assert agent.current_image.size == (30, 20)


@pytest.mark.parametrize("task,tag", EMBED_TAGS, ids=[s for _, s in EMBED_TAGS])
def test_embedding_tag(agent, log, task, tag):
    t = agent.execute(f"Sure, {tag}.", user="where is it?")
    assert t.messages == [], t.messages
    assert log == []                                    # no generator runs
    got = [(a.kind, a.task) for a in t.artifacts]
    if task == "seg":
        assert got == [("mask", "seg"), ("image", "seg")]
        assert t.artifacts[0].data.shape == (20, 30) and t.artifacts[0].data.dtype == bool
        assert t.artifacts[1].data.size == (30, 20)
    elif task == "det":
        assert got == [("box", "det"), ("image", "det")]
        assert len(t.artifacts[0].data) == 4 and all(0 <= v <= 1 for v in t.artifacts[0].data)
    else:
        assert got == [("label", "cls")]
        assert t.artifacts[0].data in LLMBindConfig.tiny().segment.class_names
    assert agent.current_image.size == (30, 20)         # overlays never replace the current image


def test_mixed_response_runs_in_order(agent, log):
    t = agent.execute("<gen> a boat </gen> <edit> paint it red </edit> <seg> <det> <cls> "
                      "<video_cap> waves </video_cap> <audio_cap> gulls </audio_cap>")
    assert t.messages == []
    assert [c.task for c in t.calls] == ["gen", "edit", "seg", "det", "cls", "video", "audio"]
    assert [a.task for a in t.artifacts] == ["gen", "edit", "seg", "seg", "det", "det", "cls", "video", "audio"]
    assert [e[0] for e in log] == ["gen", "edit", "video", "audio"]
    assert log[1][2] == (24, 16)                         # the edit received the generated image
    # <seg> and <det> refer to the image the model saw when it answered (the turn's starting image)
    assert t.find("mask")[0].data.shape == (20, 30)


def test_generator_seeds_advance_and_reset(agent, log):
    a = agent.execute("<gen> x </gen>").artifacts[0]
    b = agent.execute("<gen> x </gen>").artifacts[0]
    assert (a.seed, b.seed) == (0, 1)
    agent.reset()
    assert agent.execute("<gen> x </gen>").artifacts[0].seed == 0


# --- malformed responses -------------------------------------------------------------------------------
MALFORMED = {
    "unclosed": ("<gen> a cat", "malformed tag: <gen> is never closed"),
    "unclosed_alias": ("<video_cap> waves", "malformed tag: <video_cap> is never closed"),
    "stray_close": ("a cat </gen>", "malformed tag: </gen> closes nothing"),
    "stray_close_alias": ("noise </audio_cap>", "malformed tag: </audio_cap> closes nothing"),
    "nested": ("<gen> a <edit> red </edit> cat </gen>", "malformed tag: <edit> opened inside <gen>"),
    "nested_same": ("<gen> a <gen> cat </gen> </gen>", "malformed tag: <gen> opened inside <gen>"),
    "empty": ("<gen></gen>", "malformed tag: <gen></gen> has an empty prompt"),
    "blank": ("<aud_cap>   </aud_cap>", "malformed tag: <aud_cap></aud_cap> has an empty prompt"),
    "embedding_in_prompt": ("<gen> a <seg> cat </gen>", "malformed tag: <seg> inside the prompt of <gen>"),
    "mismatched": ("<gen> a cat </edit>", "malformed tag: </edit> does not close <gen>"),
    "unknown": ("<3d> a teapot </3d>", "unknown tag <3d>: no task uses it, so it was ignored"),
    "typo": ("<gne> a cat </gne>", "unknown tag <gne>: no task uses it, so it was ignored"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed(agent, log, name):
    text, note = MALFORMED[name]
    t = agent.execute(text)
    assert note in t.messages, t.messages
    assert t.artifacts == [] and log == []
    assert agent.execute("<gen> still fine </gen>").messages == []      # the conversation goes on


def test_malformed_does_not_block_good_calls(agent, log):
    t = agent.execute("<gen> a dog </gen> then <edit> oops and </3d> <cls>")
    assert [a.task for a in t.artifacts] == ["gen"]
    assert "malformed tag: <edit> is never closed" in t.messages
    assert "unknown tag </3d>: no task uses it, so it was ignored" in t.messages


def test_seg_inside_a_prompt_does_not_shift_masks(agent):
    t = agent.execute("<gen> a <seg> x </gen> a <seg> b <seg>")
    assert [a.kind for a in t.artifacts] == ["mask", "image", "mask", "image"]
    assert [a.extra["call"] for a in t.find("mask")] == [1, 2]


@pytest.mark.parametrize("response", [None, 42])
def test_execute_rejects_non_text(agent, response):
    with pytest.raises(TypeError, match="response must be a string"): agent.execute(response)


# --- missing image, failing and unconfigured generators -----------------------------------------------
def test_edit_and_seg_without_image(model, log):
    a = LLMBindAgent(model, fake_registry(log))
    t = a.execute("<edit> make it red </edit> and <seg>")
    assert t.messages == ["<seg> needs an image: generate or upload one first",
                          "<edit> needs an image: generate or upload one first"]
    assert t.artifacts == [] and log == []
    t = a.execute("<gen> a cat </gen>")                  # goes on; then the edit works on the new image
    t = a.execute("<edit> make it red </edit>")
    assert t.messages == [] and log[-1] == ("edit", "make it red", (24, 16))


def test_failing_generator(agent, log):
    def boom(prompt, image=None, seed=0): raise RuntimeError("CUDA out of memory")
    agent.generators.register("audio", boom, kind="audio")
    t = agent.execute("<aud_cap> thunder </aud_cap> <gen> a storm </gen>")
    assert t.messages == ["the audio generator failed on <aud_cap> thunder: RuntimeError: CUDA out of memory"]
    assert [a.task for a in t.artifacts] == ["gen"]
    assert agent.execute("<gen> after </gen>").messages == []


def test_failing_factory(agent):
    def factory(): raise OSError("weights missing")
    agent.generators.register("video", factory)
    t = agent.execute("<vid_cap> a storm </vid_cap>")
    assert t.messages == ["the video generator failed on <vid_cap> a storm: OSError: weights missing"]


@pytest.mark.parametrize("task,tag,field", [("gen", "<gen>", "image_gen_path"), ("edit", "<edit>", "image_edit_path"),
                                            ("video", "<vid_cap>", "video_path"), ("audio", "<audio_cap>", "audio_path")])
def test_not_configured(model, task, tag, field):
    a = LLMBindAgent(model, GeneratorRegistry.from_config(GeneratorsConfig()))      # no paths and not tiny
    a.set_image(Image.new("RGB", (8, 8)))
    close = tag.replace("<", "</")
    t = a.execute(f"{tag} something {close}")
    assert len(t.messages) == 1 and f"is not configured: set generators.{field}" in t.messages[0], t.messages
    assert t.messages[0].startswith("the ")


def test_without_model(log):
    a = LLMBindAgent(None, fake_registry(log))
    t = a.execute("<gen> a cat </gen> <det>")
    assert [x.task for x in t.artifacts] == ["gen"]
    assert t.messages == ["<det> needs the model to decode its hidden state (this agent has no model)"]
    with pytest.raises(ValueError, match="chat needs a model"): a.chat("hi")


def test_registered_task_with_new_tag(agent):
    agent.generators.register("upscale", lambda prompt, image=None, seed=0: image.resize((60, 40)), "<up>", "</up>",
                              kind="image", needs_image=True)
    t = agent.execute("<up> twice as big </up>")
    assert t.messages == [] and agent.current_image.size == (60, 40)


# --- chat, history, trimming ---------------------------------------------------------------------------
def test_chat_and_history(agent, monkeypatch):
    t1 = agent.chat("draw a cat", max_new_tokens=6)
    t2 = agent.chat("now a dog", max_new_tokens=6)
    assert isinstance(t1, Turn) and isinstance(t1.response, str)
    assert [t.user for t in agent.history] == ["draw a cat", "now a dog"]
    monkeypatch.setattr(agent.model.tokenizer, "model_max_length", 10_000)   # only the 256 positions limit the text
    msgs = agent._conversation("next")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in msgs[::2]] == ["draw a cat", "now a dog", "next"]
    monkeypatch.undo()
    assert agent._conversation("next", reserve=200) == [{"role": "user", "content": "next"}]   # no room: history dropped
    with pytest.raises(ValueError, match="empty"): agent.chat("  ")


def test_long_history_is_trimmed(agent):
    for i in range(15): agent.execute("ok " * 30, user=f"turn {i} " + "blah " * 30)
    t = agent.chat("still there?", max_new_tokens=8)
    assert not any("could not answer" in m for m in t.messages), t.messages
    t = agent.execute("<seg>", user="segment")
    assert t.messages == [] and len(t.find("mask")) == 1


def test_user_image_tag_gives_a_note(model):
    a = LLMBindAgent(model, GeneratorRegistry())
    t = a.chat("look at <image> this")                   # <image> typed by hand, no image attached
    assert t.messages and t.messages[0].startswith("the model could not answer")


# --- files ---------------------------------------------------------------------------------------------
def test_real_tiny_generators_save_files(model, tmp_path):
    a = LLMBindAgent.from_preset("tiny", out_dir=tmp_path)
    t = a.execute("<gen> a cabin </gen> <edit> summer </edit> <video_cap> fireflies </video_cap> "
                  "<audio_cap> crickets </audio_cap>", user="go")
    t2 = a.execute("<seg> <det> <cls>", user="and segment it")
    assert t.messages == [] and t2.messages == []
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["conversation.json", "t001_1_gen.png", "t001_2_edit.png", "t001_3_video.gif", "t001_3_video.mp4",
                     "t001_4_audio.wav", "t002_1_seg_mask.png", "t002_1_seg_overlay.png", "t002_2_det_box.json",
                     "t002_2_det_overlay.png", "t002_3_cls.txt"]
    idx = json.loads((tmp_path / "conversation.json").read_text())
    assert [x["index"] for x in idx["turns"]] == [1, 2]
    assert idx["turns"][0]["artifacts"][2]["files"] == [str(tmp_path / "t001_3_video.gif"), str(tmp_path / "t001_3_video.mp4")]
    assert Image.open(tmp_path / "t002_1_seg_mask.png").size == a.current_image.size


def test_overlays():
    im = Image.new("RGB", (10, 6), (0, 0, 255))
    m = np.zeros((6, 10), bool); m[2:4, 3:6] = True
    ov = np.asarray(mask_overlay(im, m))
    assert (ov[0, 0] == [0, 0, 255]).all() and not (ov[3, 4] == [0, 0, 255]).all()
    bx = np.asarray(box_overlay(im, np.array([[0, 0, 1, 1]])))
    assert (bx[0, 0] == [40, 220, 40]).all() and (bx[3, 4] == [0, 0, 255]).all()


# --- from_run ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    model.save_pretrained(d / "model")
    model.cfg.save(d / "config.json")
    (d / "checkpoints").mkdir()                          # the rest of a training run's folder, as `llmbind train` leaves it
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    return d


def test_from_run(run_dir, model, tmp_path):
    a = LLMBindAgent.from_run(run_dir, out_dir=tmp_path)
    ref = LLMBindAgent(model, GeneratorRegistry())
    pic = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    m1 = a.execute("<seg>", image=pic).find("mask")[0].data
    m2 = ref.execute("<seg>", image=pic).find("mask")[0].data
    assert (m1 == m2).mean() > 0.99                      # the same weights came back
    assert set(a.generators.tasks()) == {"gen", "edit", "video", "audio"}


def test_from_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"): LLMBindAgent.from_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no saved LLMBind model"): LLMBindAgent.from_run(tmp_path)
    with pytest.raises(ValueError, match="unknown agent preset"): LLMBindAgent.from_preset("paper_7b")


# --- the command line ----------------------------------------------------------------------------------
def test_cli_one_shot_subprocess(tmp_path):
    "`llmbind chat TEXT --preset tiny` in a fresh process, from another folder, as a fresh clone would run it."
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cli = "import sys; from llmbind.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", cli, "chat", "draw a cat", "--preset", "tiny", "--out", str(tmp_path / "out"),
                        "--max-new-tokens", "8"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "USER: draw a cat" in r.stdout and "ASSISTANT:" in r.stdout
    idx = json.loads((tmp_path / "out" / "conversation.json").read_text())
    assert idx["turns"][0]["user"] == "draw a cat" and idx["model"] == "tiny"


def test_cli_response_and_image(tmp_path, capsys):
    pic = tmp_path / "in.png"; Image.new("RGB", (20, 12), (200, 0, 0)).save(pic)
    rc = chat_command(["segment it", "--image", str(pic), "--out", str(tmp_path / "o"),
                       "--response", "Sure: <seg> and <edit> make it blue </edit>"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "[seg] mask: 20x12" in out and "[edit] image" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "conversation.json", "t001_1_seg_mask.png", "t001_1_seg_overlay.png", "t001_2_edit.png", "t001_input.png"]


def test_cli_checkpoint(run_dir, tmp_path, capsys):
    rc = chat_command(["hello", "--checkpoint", str(run_dir), "--out", str(tmp_path), "--max-new-tokens", "4",
                       "--set", "generators.num_inference_steps=1"])
    assert rc == 0 and "ASSISTANT:" in capsys.readouterr().out


def test_cli_user_errors(tmp_path):
    from llmbind.cli import UserError, main
    with pytest.raises(UserError, match="does not exist"): chat_command(["hi", "--image", str(tmp_path / "x.png")])
    with pytest.raises(UserError, match="at least 1"): chat_command(["hi", "--max-new-tokens", "0"])
    with pytest.raises(UserError, match="does not exist"): chat_command(["hi", "--checkpoint", str(tmp_path / "run")])
    with pytest.raises(UserError, match="empty"): chat_command(["  "])
    assert main(["chat", "hi", "--checkpoint", str(tmp_path / "run")]) == 2     # printed without a traceback


def test_cli_repl(tmp_path, monkeypatch, capsys):
    pic = tmp_path / "p.png"; Image.new("RGB", (16, 16)).save(pic)
    lines = f"hello\n/image {pic}\n/response <seg>\n/reset\n/response <edit> x </edit>\n/image {tmp_path / 'none.png'}\n/quit\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert chat_command(["--out", str(tmp_path / "o"), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "[seg] mask: 16x16" in out and "(new conversation)" in out
    assert "! <edit> needs an image" in out and "! cannot use" in out
    idx = json.loads((tmp_path / "o" / "conversation.json").read_text())
    assert [t["conversation"] for t in idx["turns"]] == [0, 0, 1] and idx["conversations"] == 2


def test_training_run_layout_finds_the_model_folder(run_dir):
    "A run written by `llmbind train` (config.json, model.safetensors, checkpoints/, model/): chat and eval both read RUN/model."
    from llmbind.agent import _model_folder
    from llmbind.evaluate import find_checkpoint
    assert _model_folder(run_dir) == run_dir / "model" and find_checkpoint(run_dir) == run_dir / "model"


def test_cli_config_and_paths(tmp_path, capsys):
    "`--config FILE` with `--data-root`: the agent is built from that config (untrained LLMBind parts)."
    cfg_file = LLMBindConfig.tiny().save(tmp_path / "tiny.json")
    rc = chat_command(["draw", "--config", str(cfg_file), "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--response", "<gen> a red square </gen>", "--set", "generators.num_inference_steps=1"])
    assert rc == 0 and "[gen] image" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="LLaVA-Lightning-7B-v1-1"):
        chat_command(["hi", "--config", str(cfg_file), "--checkpoints", str(tmp_path / "ckpt")])


# --- a damaged conversation.json never costs earlier files ---------------------------------------------
@pytest.mark.parametrize("bad", ['{"format": "llmbind-chat/1", "turns": [{"index": 1', '[1, 2]', '{"turns": [{"index": "x"}]}',
                                 b'{"turns": [{"user": "caf\xe9"}]}', '{"turns": 3}'])
def test_damaged_index_is_moved_aside_and_numbering_continues(tmp_path, bad):
    (tmp_path / "t001_1_gen.png").write_bytes(b"first"); (tmp_path / "t002_input.png").write_bytes(b"second")
    f = tmp_path / "conversation.json"
    f.write_bytes(bad) if isinstance(bad, bytes) else f.write_text(bad)
    with pytest.warns(UserWarning, match="conversation.json.corrupt-1"):
        t = LLMBindAgent(None, fake_registry([]), out_dir=tmp_path).execute("<gen> a dog </gen>")
    assert t.index == 3                                          # after the highest tNNN_ file, not turn 1 again
    assert (tmp_path / "t001_1_gen.png").read_bytes() == b"first" and (tmp_path / "t002_input.png").read_bytes() == b"second"
    assert (tmp_path / "conversation.json.corrupt-1").read_bytes() == (bad if isinstance(bad, bytes) else bad.encode())
    assert [x["index"] for x in json.loads(f.read_text())["turns"]] == [3]
    f.write_text("{cut")                                         # a second damaged index goes to corrupt-2, numbering goes on
    with pytest.warns(UserWarning, match="corrupt-2"):
        assert LLMBindAgent(None, fake_registry([]), out_dir=tmp_path).execute("<gen> a cat </gen>").index == 4
    assert (tmp_path / "conversation.json.corrupt-1").exists()


def test_index_behind_the_files_on_disk(tmp_path):
    "A valid conversation.json that lists fewer turns than the folder holds (a crash between saving and indexing)."
    a = LLMBindAgent(None, fake_registry([]), out_dir=tmp_path)
    a.execute("<gen> a dog </gen>")
    (tmp_path / "t002_1_gen.png").write_bytes(b"orphan")
    t = LLMBindAgent(None, fake_registry([]), out_dir=tmp_path).execute("<gen> a cat </gen>")
    assert t.index == 3 and (tmp_path / "t002_1_gen.png").read_bytes() == b"orphan"


def test_cli_chat_on_a_damaged_index(tmp_path, capsys):
    out = tmp_path / "o"
    assert chat_command(["a", "--out", str(out), "--response", "<gen> a dog </gen>"]) == 0
    first = (out / "t001_1_gen.png").read_bytes()
    (out / "conversation.json").write_text('{"turns": [')
    with pytest.warns(UserWarning, match="corrupt-1"):
        assert chat_command(["b", "--out", str(out), "--response", "<gen> a cat </gen>"]) == 0
    assert (out / "t001_1_gen.png").read_bytes() == first and (out / "t002_1_gen.png").is_file()
