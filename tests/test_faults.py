"""Faults around a run folder, with the stand-in on two CPU ranks (seconds per run): the launcher killed during training
(SIGKILL) and while a checkpoint is being written (SIGTERM) leaves no process behind; a second trainer on a folder in
use fails at once; the newest checkpoint corrupted on disk is detected, set aside and skipped, and the run still ends
with the weights of an uninterrupted one. Plus: --overwrite only deletes llmbind runs, a checkpoint file replaced by a
pickle that runs code is refused without running it, an edited config or too few steps is refused on resume, a
non-finite gradient norm stops the run with the rank's error, and a cut-short metrics line does not block a resume."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
pytestmark = pytest.mark.slow          # whole training runs: `bash tools/test.sh --slow`
import torch
from safetensors.torch import load_file

from llmbind.config import LLMBindConfig, ConfigError
from llmbind.train import (launch, read_metrics, read_latest, list_checkpoints, train_command, prepare_run_dir,
                           check_overwritable, weights_only_loading, write_manifest, RunLockedError, METRICS)

os.environ.setdefault("LLMBIND_DS_SHM", "cached")
M, D = "llmbind.standin:standin_model", "llmbind.standin:standin_data"
STEPS = 10
PATIENCE = 600      # seconds a wait for the training processes may take before the test gives up (a hang, not a timing)


def config(**sets):
    return LLMBindConfig.tiny().override(
        f"train.total_steps={STEPS}", "train.warmup_steps=2", "train.lr=1e-2", "train.micro_batch_size=4",
        "train.grad_accum=2", "train.save_every=3", "train.nproc=2", *[f"{k}={v}" for k, v in sets.items()])


LAUNCHER = """import json, sys
from llmbind.config import LLMBindConfig
from llmbind.train import launch
launch(2, LLMBindConfig.from_dict(json.loads(sys.argv[2])), "llmbind.standin:standin_model", "llmbind.standin:standin_data",
       sys.argv[1], quiet=True, progress=False, **json.loads(sys.argv[3]))
"""


def start_launcher(out: Path, **kw) -> subprocess.Popen:
    "`launch` in a process of its own (the process a user kills)."
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, str(out), json.dumps(config().to_dict()), json.dumps(kw)])


def wait_for(cond, proc: subprocess.Popen, out: Path, what: str):
    deadline = time.monotonic() + PATIENCE
    while not cond():
        if proc.poll() is not None:
            log = out / "launch.log"
            raise AssertionError(f"the launcher ended ({proc.returncode}) before {what}:\n"
                                 + ("\n".join(log.read_text().splitlines()[-30:]) if log.is_file() else ""))
        if time.monotonic() > deadline: raise AssertionError(f"no {what} after {PATIENCE} s")
        time.sleep(0.2)


def run_processes(out: Path) -> list[tuple[int, str]]:
    "Live processes whose command line names the run folder (the launcher, torchrun, the ranks)."
    key, found = str(out.resolve()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError: continue
        if key in cmd and state != "Z": found.append((int(pid), cmd))
    return found


def orphans_after_kill(out: Path) -> list[tuple[int, str]]:
    "Wait for the processes of the run to stop by themselves; return (and then kill) the ones still running."
    deadline = time.monotonic() + 120
    while run_processes(out) and time.monotonic() < deadline: time.sleep(0.5)
    left = run_processes(out)
    for pid, _ in left:                         # cleanup of what this test started, so one failure does not hang the rest
        try: os.kill(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    return left


def strip(recs, kind):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "step_time_s")} for r in recs if r["kind"] == kind]


def corrupt(path: Path, offset_fraction: float = 0.5, n: int = 64):
    b = bytearray(path.read_bytes()); i = int(len(b) * offset_fraction)
    b[i:i + n] = bytes((x ^ 0xFF) for x in b[i:i + n]); path.write_bytes(bytes(b))


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    ref = launch(2, config(), M, D, root / "ref", quiet=True, progress=False)          # uninterrupted
    b, res = root / "b", {"ref": ref}

    p = start_launcher(b)                                                              # 1. killed during training
    step_at_least = lambda n: lambda: (b / METRICS).is_file() and any(r.get("step", 0) >= n for r in read_metrics(b, "train"))
    wait_for(step_at_least(1), p, b, "step 1")
    with pytest.raises(RunLockedError) as e: launch(2, config(), M, D, b, resume=True, quiet=True)   # a second trainer
    res["locked"] = (str(e.value), p.pid)
    wait_for(step_at_least(4), p, b, "step 4")           # then killed at once: before step 9 (a loaded machine is slow to poll)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    res["orphans_training"] = orphans_after_kill(b)

    p = start_launcher(b, resume=True, hold_in_save=9)                                 # 2. killed while saving step 9
    tmp_state = b / "checkpoints" / "step_000009.tmp" / "trainer_state_rank000.json"
    wait_for(tmp_state.is_file, p, b, "the checkpoint of step 9 being written")
    os.kill(p.pid, signal.SIGTERM); p.wait()
    res["orphans_saving"] = orphans_after_kill(b)
    ck = b / "checkpoints"
    res["after_kills"] = {"latest": read_latest(ck), "published": list_checkpoints(ck)}

    corrupt(ck / read_latest(ck) / "mp_rank_00_model_states.pt")                       # 3. the newest checkpoint damaged
    res["final"] = launch(2, config(), M, D, b, resume=True, quiet=True, progress=False)
    res["orphans_end"] = run_processes(b)
    return root, res


def test_killing_the_launcher_stops_training(faults):
    root, res = faults
    assert res["orphans_training"] == [] and res["orphans_saving"] == [] and res["orphans_end"] == []


def test_second_trainer_is_refused_at_once(faults):
    message, pid = faults[1]["locked"]
    assert f"in use by another trainer (PID {pid})" in message


def test_damaged_checkpoint_is_skipped_and_the_run_ends_as_uninterrupted(faults):
    root, res = faults
    b, a = root / "b", root / "ref"
    assert res["after_kills"] == {"latest": "step_000006", "published": ["step_000003", "step_000006"]}
    ev = [r for r in read_metrics(b, "event") if r.get("event") in ("damaged_checkpoint", "resume")]
    assert ev[-2]["event"] == "damaged_checkpoint" and ev[-2]["tag"] == "step_000006"
    assert ev[-2]["problems"] == ["mp_rank_00_model_states.pt does not match its checksum"]
    assert ev[-1] == {"kind": "event", "event": "resume", "step": 3, "tag": "step_000003", "world_size": 2}
    assert (b / "checkpoints" / "step_000006.corrupt").is_dir()
    assert res["final"]["step"] == STEPS and read_latest(b / "checkpoints") == "step_000010"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert strip(read_metrics(a), "train") == strip(read_metrics(b), "train")


# --- --overwrite ------------------------------------------------------------------------------------------
def test_overwrite_deletes_only_runs(tmp_path, monkeypatch):
    user = tmp_path / "U"; (user / "thesis").mkdir(parents=True); (user / "thesis" / "ch1.tex").write_text("chapter one")
    with pytest.raises(FileExistsError, match="not an llmbind run"):
        train_command(["--out", str(user), "--overwrite", "--steps", "1", "--nproc", "1"])
    assert (user / "thesis" / "ch1.tex").read_text() == "chapter one" and sorted(p.name for p in user.iterdir()) == ["thesis"]
    run = tmp_path / "run"; (run / "checkpoints").mkdir(parents=True); (run / "config.json").write_text("{}")
    (run / "notes.txt").write_text("mine")                                      # a run with a file training never writes
    with pytest.raises(FileExistsError, match="notes.txt, which is not an llmbind run"): prepare_run_dir(run, overwrite=True)
    (run / "notes.txt").unlink(); (run / ".metrics.jsonl.123.tmp").write_text("")
    assert list(prepare_run_dir(run, overwrite=True).iterdir()) == []           # a run (and its leftovers) is replaced
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="it is a file"): prepare_run_dir(tmp_path / "file", overwrite=True)
    inner = tmp_path / "inner"; (inner / "checkpoints").mkdir(parents=True); (inner / "launch.json").write_text("{}")
    monkeypatch.chdir(inner)
    for where, why in ((".", "the current folder"), ("..", "a parent of the current folder"), ("/", "the root folder"),
                       (str(Path.home()), "your home folder")):
        with pytest.raises(FileExistsError, match=why): check_overwritable(where)
    with pytest.raises(FileExistsError, match="the current folder"):
        train_command(["--out", ".", "--overwrite", "--steps", "1", "--nproc", "1"])
    assert (inner / "launch.json").is_file()


# --- the metrics log ----------------------------------------------------------------------------------------
def test_partial_metrics_line_does_not_block_resume(faults, tmp_path):
    c = tmp_path / "c"; shutil.copytree(faults[0] / "ref", c)
    with open(c / METRICS, "a") as f: f.write('{"kind": "train", "step": 11, "lo')      # power lost mid-line
    with pytest.warns(UserWarning, match="incomplete last line"): assert len(read_metrics(c, "train")) == STEPS
    s = launch(2, config(**{"train.total_steps": 11}), M, D, c, resume=True, quiet=True, progress=False)
    assert s["step"] == 11 and [r["step"] for r in read_metrics(c, "train")] == list(range(1, 12))


# --- checkpoints as attack surface and the trained config ----------------------------------------------------
class Payload:
    "A pickle that runs a shell command when it is loaded."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (os.system, (f"touch {self.path}",))


def test_loader_refuses_code_and_accepts_real_checkpoints(faults, tmp_path):
    ck = faults[0] / "ref" / "checkpoints" / "step_000010"
    ran = tmp_path / "ran"; bad = tmp_path / "bad.pt"
    torch.save({"module": {"w": torch.ones(1)}, "args": Payload(ran)}, bad)
    with weights_only_loading():
        for f in sorted(ck.glob("*.pt")): torch.load(f, map_location="cpu", weights_only=False)   # DeepSpeed's own files load
        with pytest.raises(Exception, match="GLOBAL"): torch.load(bad, weights_only=False)
    assert not ran.exists()


def test_resume_refuses_a_malicious_checkpoint(faults, tmp_path):
    c = tmp_path / "c"; shutil.copytree(faults[0] / "ref", c)
    tag = c / "checkpoints" / "step_000010"; ran = tmp_path / "ran"
    states = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)
    states["args"] = Payload(ran)
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    s = launch(2, config(), M, D, c, resume=True, quiet=True, progress=False)     # the manifest catches it: step 9 is used
    assert not ran.exists() and s["step"] == STEPS and (c / "checkpoints" / "step_000010.corrupt").is_dir()
    write_manifest(c / "checkpoints" / "step_000010.corrupt")                    # an attacker who also rewrites the manifest
    shutil.rmtree(c / "checkpoints" / "step_000010"); os.rename(c / "checkpoints" / "step_000010.corrupt", tag)
    (c / "checkpoints" / "latest").write_text("step_000010")
    with pytest.raises(RuntimeError, match=r"failed on rank \d: RuntimeError: checkpoint .* weights-only load refuses"):
        launch(2, config(), M, D, c, resume=True, quiet=True, progress=False)
    assert not ran.exists()


def test_resume_refuses_an_edited_config_and_too_few_steps(faults, tmp_path):
    c = tmp_path / "c"; shutil.copytree(faults[0] / "ref", c)
    with pytest.raises(ConfigError, match="already at step 10; resume with --steps 10 or more"):
        train_command(["--out", str(c), "--resume", "--steps", "5", "--quiet"])
    saved = json.loads((c / "config.json").read_text()); saved["train"]["micro_batch_size"] = 2
    (c / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="train.micro_batch_size changed since it was trained"):
        train_command(["--out", str(c), "--resume", "--steps", "12", "--quiet"])


# --- a non-finite gradient norm ------------------------------------------------------------------------------
def inf_grad_standin(cfg):
    "The stand-in whose LM head gets an infinite gradient on the third backward pass (step 2, grad_accum 2) of rank 0."
    from llmbind.standin import standin_model
    m, calls = standin_model(cfg), [0]
    def hook(g):
        calls[0] += 1
        return g * float("inf") if calls[0] == 3 and os.environ.get("RANK") == "0" else g
    m.lm.lm_head.weight.register_hook(hook)
    return m


def test_nonfinite_grad_norm_stops_with_the_ranks_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"failed on rank \d: FloatingPointError: step 2: the gradient norm is (inf|nan)"):
        launch(2, config(**{"train.save_every": 1}), f"{Path(__file__).stem}:inf_grad_standin", D, out, quiet=True, progress=False)
    assert list_checkpoints(out / "checkpoints") == ["step_000001"]          # nothing saved after the bad step
    assert json.loads((out / "error.json").read_text())["type"] == "FloatingPointError"
