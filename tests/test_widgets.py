"""The widget demos driven headless in a plain Python process (no notebook, no kernel)."""
import io, json
from datetime import datetime, timezone
import numpy as np
import pytest
from PIL import Image
from llmbind.config import paper_mixture, mixture_leaf_probs
from llmbind.generators import GeneratorRegistry
from llmbind.agent import LLMBindAgent
from llmbind.widgets import ChatDemo, RoutingExplorer, MixtureExplorer, MaskOverlay, SELECT_ALL


def _registry():
    reg = GeneratorRegistry()
    reg.register("gen", lambda prompt, image=None, seed=0: Image.new("RGB", (16, 16), (200, 0, 0)), kind="image")
    reg.register("video", lambda prompt, image=None, seed=0: np.random.default_rng(seed).random((3, 8, 8, 3)), kind="video")
    reg.register("audio", lambda prompt, image=None, seed=0: (np.zeros(800, np.float32), {"sample_rate": 8000}), kind="audio")
    return reg


def test_chat_without_kernel():
    chat = ChatDemo(LLMBindAgent(None, _registry()), script=["<gen> a red square </gen>"])
    chat.text.value = "draw a red square"
    chat.send.click()
    assert len(chat.turns) == 1 and '<img src="data:image/png' in chat.view.children[0].value
    chat.text.value, chat.answer.value = "clip and sound", "<vid_cap> rain </vid_cap> <aud_cap> rain </aud_cap>"
    chat.send.click()
    html = chat.view.children[-1].value
    assert "data:image/gif" in html and "<audio controls" in html
    chat.upload.value = ({"name": "x.bin", "type": "", "size": 3, "content": memoryview(b"abc"),
                          "last_modified": datetime.now(timezone.utc)},)
    chat.text.value = "look"
    chat.send.click()
    assert "'x.bin' is not an image" in chat.notes[-1] and len(chat.turns) == 2
    chat.text.value = "no script left, no model"
    chat.send.click()
    assert chat.notes[-1].startswith("ValueError: chat needs a model")
    assert "<img" in chat.snapshot().data


def test_routing_explorer_from_run(tmp_path):
    routing = {"vqa": {"L0.up": [0.5, 0.5, 0.0, 0.0]}, "seg": {"L0.up": [0.25, 0.25, 0.25, 0.25]}}
    (tmp_path / "report.json").write_text(json.dumps({"routing": routing}))
    rx = RoutingExplorer.from_run(tmp_path)
    assert "image/png" in rx.out.outputs[0]["data"]
    rx.task.value = SELECT_ALL
    labels, a = rx.selection()
    assert labels == ["vqa", "seg"] and a.shape == (2, 4)
    with pytest.raises(FileNotFoundError, match="llmbind demo"):
        RoutingExplorer.from_run(tmp_path / "nothing")


def test_mixture_explorer_matches_config():
    mx = MixtureExplorer(batch_size=13)
    assert mx.probabilities() == mixture_leaf_probs(paper_mixture())
    assert sum(mx.sample().values()) == 13
    mx.set_weights({"seg": 0, "vqa": 0, "interactive": 0})
    assert "invalid mixture" in mx.message.value and mx.out.outputs == ()


def test_mask_overlay_threshold():
    logits = np.linspace(-4, 4, 64 * 64, dtype=np.float32).reshape(64, 64)
    mo = MaskOverlay(np.zeros((64, 64, 3), np.uint8), logits)
    assert mo.area == int((logits > 0).sum())
    mo.threshold.value = 0.9
    assert mo.area == int((logits > np.log(9)).sum()) and f"<b>{mo.area}</b>" in mo.info.value
