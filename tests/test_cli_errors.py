"""User mistakes end as one clear line (exit status 2, no traceback), however `llmbind` is started; bad input loses nothing."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

from llmbind.config import ConfigError, LLMBindConfig, UserError

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")


# --- 1. impossible values are refused by the config, naming the field -------------------------------------
@pytest.mark.parametrize("assignment, field", [
    ("vision.num_heads=0", "vision.num_heads"), ("train.lr=inf", "train.lr"), ("train.lr=nan", "train.lr"),
    ("train.lr=-inf", "train.lr"), ("train.betas=[0.9, NaN]", "train.betas[1]"), ("llm.rms_norm_eps=-1", "llm.rms_norm_eps"),
    ("llm.rms_norm_eps=0", "llm.rms_norm_eps"), ("llm.max_position_embeddings=0", "llm.max_position_embeddings"),
    ("preset=huge", "preset"), ("preset=7b", "preset"), ("segment.encoder_patch_size=0", "segment.encoder_patch_size"),
    ("segment.encoder_num_heads=0", "segment.encoder_num_heads"), ("segment.decoder_depth=0", "segment.decoder_depth"),
    ("vision.hidden_size=0", "vision.hidden_size"), ("vision.intermediate_size=-1", "vision.intermediate_size"),
    ("generators.num_frames=0", "generators.num_frames"), ("generators.audio_seconds=inf", "generators.audio_seconds"),
    ("generators.guidance_scale=nan", "generators.guidance_scale"), ("loss.dice_weight=inf", "loss.dice_weight"),
    ("moe.lora_alpha=inf", "moe.lora_alpha"), ("train.grad_clip=Infinity", "train.grad_clip"),
    ("data.synthetic_train_size=0", "data.synthetic_train_size"), ("train.grad_accum=0", "train.grad_accum"),
])
@pytest.mark.parametrize("preset", ["tiny", "paper_7b"])
def test_impossible_values_name_the_field(assignment, field, preset):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("[", r"\[")):
        LLMBindConfig.from_preset(preset).override(assignment)


def test_every_float_field_refuses_nan_and_inf():
    import typing, dataclasses
    cfg, n = LLMBindConfig.tiny(), 0
    for sec in ("vision", "llm", "moe", "segment", "loss", "data", "train", "generators"):
        hints = typing.get_type_hints(type(getattr(cfg, sec)))
        for f in dataclasses.fields(getattr(cfg, sec)):
            if hints[f.name] is not float: continue
            n += 1
            for v in ("inf", "-inf", "nan"):
                with pytest.raises(ConfigError, match=rf"{sec}\.{f.name}"): cfg.override(f"{sec}.{f.name}={v}")
    assert n >= 15


def test_nan_in_a_json_file(tmp_path):
    (tmp_path / "c.json").write_text('{"preset": "tiny", "train": {"lr": NaN}}')
    with pytest.raises(ConfigError, match=r"train\.lr: must be a finite number"): LLMBindConfig.from_file(tmp_path / "c.json")


# --- 2. a partial file naming a preset starts from that preset --------------------------------------------
def test_partial_file_starts_from_its_preset(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: tiny\ntrain: {lr: 0.001}\n")
    cfg = LLMBindConfig.from_file(tmp_path / "c.yaml")
    assert cfg == LLMBindConfig.tiny().override("train.lr=0.001")
    assert cfg.llm.hidden_size == 128 and cfg.device == "cpu"                     # not the 7B defaults
    assert LLMBindConfig.from_dict({"preset": "paper_7b", "moe": {"top_k": 1}}) == LLMBindConfig.paper_7b().override("moe.top_k=1")
    assert LLMBindConfig.from_dict({"moe": {"top_k": 1}}).llm.hidden_size == 4096  # no preset: the dataclass defaults, as before


@pytest.mark.parametrize("make", [LLMBindConfig.tiny, LLMBindConfig.paper_7b, LLMBindConfig, lambda: LLMBindConfig.paper_7b("/c", "/d"),
                                  lambda: LLMBindConfig.tiny().override("moe.top_k=1", 'data.mix={"a": 1, "b": 2}'),
                                  lambda: LLMBindConfig.paper_7b().override("data.datasets={}", "segment.class_names=[]")])
def test_round_trip_is_exact(make, tmp_path):
    cfg = make()
    assert LLMBindConfig.from_dict(cfg.to_dict()) == cfg and LLMBindConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    for name in ("c.json", "c.yaml"): assert LLMBindConfig.from_file(cfg.save(tmp_path / name)) == cfg


# --- 3. files that cannot be a config ---------------------------------------------------------------------
def test_unreadable_config_files(tmp_path):
    for name in ("latin1.json", "latin1.yaml"):
        (tmp_path / name).write_bytes('{"train": {"output_dir": "runs/café"}}'.encode("latin-1"))
        with pytest.raises(ConfigError, match="not UTF-8"): LLMBindConfig.from_file(tmp_path / name)
    (tmp_path / "deep.json").write_text('{"data": {"mix": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    (tmp_path / "deep.yaml").write_text("data: {mix: " + "[" * 5_000 + "]" * 5_000 + "}")
    for name in ("deep.json", "deep.yaml"):
        with pytest.raises(ConfigError, match="nested too deeply"): LLMBindConfig.from_file(tmp_path / name)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"): LLMBindConfig.from_file(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="is a folder"): LLMBindConfig.from_file(tmp_path)
    with pytest.raises(ConfigError, match="is a folder"): LLMBindConfig.tiny().save(tmp_path)


def test_config_command_one_line_errors(tmp_path, capsys):
    from llmbind.cli import main
    (tmp_path / "bad.json").write_bytes(b'{"moe": "\xff"}')
    for args, msg in ((["--save", str(tmp_path)], "is a folder"), (["--config", str(tmp_path / "bad.json")], "not UTF-8"),
                      (["--set", "vision.num_heads=0"], "vision.num_heads"), (["--set", "preset=big"], "preset")):
        assert main(["config", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("llmbind config: error:") and msg in err and "Traceback" not in err, err
    (tmp_path / "file").write_text("x")
    assert main(["config", "--save", str(tmp_path / "file" / "c.json")]) == 2     # parent is a file
    assert "--save: cannot write" in capsys.readouterr().err


# --- 4. a model folder with a missing or damaged tokenizer ------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import torch
    from llmbind.model import LLMBindForCausalLM
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("saved")
    LLMBindForCausalLM.from_config(LLMBindConfig.tiny()).save_pretrained(d / "model")
    return d / "model"


def test_from_pretrained_tokenizer_errors(saved_model, tmp_path, capsys):
    from llmbind.model import LLMBindForCausalLM
    from llmbind.cli import main
    cut = tmp_path / "cut"; shutil.copytree(saved_model, cut)
    tj = cut / "tokenizer" / "tokenizer.json"; tj.write_text(tj.read_text()[:300])
    with pytest.raises(ValueError, match=f"{cut}/tokenizer: the tokenizer cannot be read"): LLMBindForCausalLM.from_pretrained(cut)
    gone = tmp_path / "gone"; shutil.copytree(saved_model, gone); shutil.rmtree(gone / "tokenizer")
    with pytest.raises(FileNotFoundError, match=f"{gone} has no tokenizer"): LLMBindForCausalLM.from_pretrained(gone)
    for d, msg in ((cut, "cannot be read"), (gone, "tokenizer/")):                # `llmbind chat --checkpoint`: one line
        assert main(["chat", "hi", "--checkpoint", str(d), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("llmbind chat: error:") and msg in err and str(d) in err, err


# --- 5. every sub-command, as `llmbind` and as `python -m llmbind.cli` ------------------------------------
USER_ERRORS = {"config": (["--set", "vision.num_heads=0"], "vision.num_heads"), "train": (["--steps", "0"], "--steps"),
               "demo": (["--steps-a", "0"], "--steps-a"), "chat": (["hi", "--max-new-tokens", "0"], "--max-new-tokens"),
               "eval": ([], "give --run"), "bench": (["--impls", "nope"], "--impls")}


def test_user_errors_are_one_line_both_ways(tmp_path):
    script = shutil.which("llmbind")
    starts = {"python -m llmbind.cli": [sys.executable, "-m", "llmbind.cli"]}
    if script: starts["llmbind"] = [script]
    procs = {(how, name): subprocess.Popen([*cmd, name, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           cwd=tmp_path, env=ENV)
             for how, cmd in starts.items() for name, (args, _) in USER_ERRORS.items()}
    bad = []
    for (how, name), p in procs.items():
        _, err = p.communicate(timeout=600)
        lines = [l for l in err.splitlines() if l.strip()]
        ok = (p.returncode == 2 and "Traceback" not in err and len(lines) == 1
              and lines[0].startswith(f"llmbind {name}: error:") and USER_ERRORS[name][1] in lines[0])
        if not ok: bad.append(f"{how} {name}: rc {p.returncode}\n{err[-1500:]}")
    assert not bad, "\n\n".join(bad)
    assert script, "the llmbind console script is not installed (pip install -e .)"


def test_user_error_is_one_class():
    import llmbind.cli, llmbind.agent, llmbind.evaluate
    assert llmbind.cli.UserError is UserError
    assert "UserError" in llmbind.cli.__all__


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe not utf-8", b"{\"a\": " * 5000])
def test_deepspeed_file_must_be_one_object(tmp_path, content, capsys):
    "`llmbind train --deepspeed FILE`: a list, a non-UTF-8 or a too-deep file is one line, and no run folder is made."
    from llmbind.cli import main
    f = tmp_path / "ds.json"; f.write_bytes(content)
    assert main(["train", "--preset", "tiny", "--steps", "2", "--out", str(tmp_path / "run"), "--deepspeed", str(f)]) == 2
    err = capsys.readouterr().err
    assert "--deepspeed" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
