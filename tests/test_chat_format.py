"""A trained model speaks in the chat format it was trained with, everywhere: `generate`, `llmbind chat --checkpoint`,
the evaluation. A tiny model is taught one dialogue under a system message of its own, saved, and asked again
through the command line."""
import json
from pathlib import Path
import torch
import pytest
from llmbind.config import LLMBindConfig
from llmbind.data import Sample
from llmbind.model import LLMBindForCausalLM, LegacyFormatWarning
from llmbind.pipeline import chat_collator
from llmbind.tokens import parse_response, VICUNA_SYSTEM
from llmbind.evaluate import evaluate_model
from llmbind.cli import main as cli_main

REQUEST = "Paint a large blue star at the top."
ANSWER = "Sure, here is the picture: <gen> a large blue star at the top </gen>"

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A tiny model that learnt one dialogue under the system message 'Draw on request.' (150 AdamW steps), saved in RUN/model."
    torch.manual_seed(0)
    cfg = LLMBindConfig.tiny().override("chat.system=Draw on request.", "llm.num_layers=2")
    model = LLMBindForCausalLM.from_config(cfg)
    talk = [{"role": "user", "content": REQUEST}, {"role": "assistant", "content": ANSWER}]
    other = [{"role": "user", "content": "Good morning!"}, {"role": "assistant", "content": "Good morning! What shall I draw?"}]
    batch = chat_collator(cfg, model.tokenizer)([Sample("g", "image_gen", talk), Sample("c", "image_gen", other)])
    batch = {k: v for k, v in batch.items() if k not in ("sources", "truncated", "dropped", "ids")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(150):
        opt.zero_grad(); model(**batch).loss.backward(); opt.step()
    run = tmp_path_factory.mktemp("run")
    model.save_pretrained(run / "model")
    return run, model

def test_generate_uses_the_saved_format(trained):
    run, model = trained
    back = LLMBindForCausalLM.from_pretrained(run / "model")
    assert back.cfg.chat.system == "Draw on request."
    res = back.generate(REQUEST, max_new_tokens=24)
    assert res.text == ANSWER and not res.problems
    # the same request under another system message is not what the model learnt: the format is what makes it answer
    other = back.generate([{"role": "system", "content": VICUNA_SYSTEM}, {"role": "user", "content": REQUEST}], max_new_tokens=24)
    assert other.text != ANSWER
    # the evaluation asks in the model's format too: the learnt dialogue is answered exactly, first turn and all
    rep = evaluate_model(back, [Sample("g", "image_gen", [{"role": "user", "content": REQUEST}, {"role": "assistant", "content": ANSWER}])],
                         progress=False)
    assert rep["dispatch_accuracy"] == 1.0 and rep["prompt_exact_match"] == 1.0 and rep["first_turns"]["n_answers"] == 1

def test_chat_command_answers_with_one_gen_call(trained, tmp_path, capsys):
    run, _ = trained
    assert cli_main(["chat", "--checkpoint", str(run), REQUEST, "--out", str(tmp_path / "chat")]) == 0
    out, err = capsys.readouterr()
    answer = next(l for l in out.splitlines() if l.startswith("ASSISTANT: "))[len("ASSISTANT: "):]
    calls = parse_response(answer)
    assert [(c.task, c.prompt) for c in calls] == [("gen", "a large blue star at the top")] and not calls.problems
    assert "untrained" not in err and "malformed" not in out + err          # a trained checkpoint gets no "noise" note
    turn = json.loads((tmp_path / "chat" / "conversation.json").read_text())["turns"][-1]
    assert [(c["task"], c["prompt"]) for c in turn["calls"]] == [("gen", "a large blue star at the top")]
    art = [a for a in turn["artifacts"] if a["task"] == "gen"]                 # the tiny Stable Diffusion drew it
    assert len(art) == 1 and art[0]["kind"] == "image" and (tmp_path / "chat" / Path(art[0]["path"]).name).is_file()

def test_folder_saved_before_the_format_warns(trained, tmp_path):
    import shutil
    run, _ = trained
    old = tmp_path / "old"; shutil.copytree(run / "model", old)
    cfg = json.loads((old / "config.json").read_text()); del cfg["chat"]
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(LegacyFormatWarning, match="system message 'A chat.'"):
        m = LLMBindForCausalLM.from_pretrained(old)
    assert m.cfg.chat.system == "A chat."
