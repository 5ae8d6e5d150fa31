"Tests for llmbind.evaluate: metrics against direct computations, the evaluation loop on stubs and on the tiny model, `llmbind eval`."
import contextlib, io, json, math
from pathlib import Path
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from PIL import Image
from llmbind.data import Sample
from llmbind.tokens import IMAGE_TOKEN, format_call
from llmbind import evaluate as ev

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- segmentation
@st.composite
def mask_pairs(draw):
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        dp, dg = draw(st.floats(0, 1)), draw(st.floats(0, 1))
        out.append((rng.random((h, w)) < dp, rng.random((h, w)) < dg))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask_pairs(), st.integers(1, 4))
def test_giou_ciou_meter_match_numpy(pairs, batch):
    P, G = [p for p, _ in pairs], [g for _, g in pairs]
    inter = np.array([np.logical_and(p, g).sum() for p, g in pairs], float)
    union = np.array([np.logical_or(p, g).sum() for p, g in pairs], float)
    ious = [i / u if u else 1.0 for i, u in zip(inter, union)]
    assert ev.giou(P, G) == pytest.approx(np.mean(ious))
    want_c = inter.sum() / union.sum() if union.sum() else 1.0
    assert ev.ciou(P, G) == pytest.approx(want_c)
    m = ev.SegmentationMeter()
    for k in range(0, len(P), batch): m.update(P[k:k + batch], G[k:k + batch])
    assert m.count == len(P)
    assert m.giou == pytest.approx(np.mean(ious)) and m.ciou == pytest.approx(want_c)
    np.testing.assert_allclose(m.ious, ious)


def test_iou_stats_stacked_and_errors():
    rng = np.random.default_rng(1)
    P, G = rng.random((2, 3, 5, 6)) < 0.5, rng.random((2, 3, 5, 6)) < 0.5
    i, u = ev.iou_stats(P, G)
    assert i.shape == (2, 3)
    assert i[1, 2] == (P[1, 2] & G[1, 2]).sum() and u[0, 1] == (P[0, 1] | G[0, 1]).sum()
    with pytest.raises(TypeError, match="threshold"): ev.iou_stats(P.astype(float), G)
    with pytest.raises(ValueError, match="same shape"): ev.iou_stats(P[0], G)


def test_box_iou_matches_direct():
    rng = np.random.default_rng(2)
    a, b = np.sort(rng.random((50, 2, 2)), 1).reshape(50, 4)[:, [0, 2, 1, 3]], np.sort(rng.random((50, 2, 2)), 1).reshape(50, 4)[:, [0, 2, 1, 3]]
    def direct(p, g):
        iw = max(0, min(p[2], g[2]) - max(p[0], g[0])); ih = max(0, min(p[3], g[3]) - max(p[1], g[1]))
        inter = iw * ih
        return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)
    np.testing.assert_allclose(ev.box_iou(a, b), [direct(p, g) for p, g in zip(a, b)])


# ----------------------------------------------------------------------------- generation metrics
def fd_scipy(fa, fb):
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.atleast_2d(np.cov(fa, rowvar=False)), np.atleast_2d(np.cov(fb, rowvar=False))
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


@pytest.mark.parametrize("seed,d", [(0, 1), (1, 4), (2, 16), (3, 40)])
def test_frechet_distance_matches_scipy(seed, d):
    rng = np.random.default_rng(seed)
    fa = rng.normal(size=(500, d))
    fb = rng.normal(rng.normal(size=d), 1.0, size=(400, d)) @ rng.normal(size=(d, d))
    ref = fd_scipy(fa, fb)
    assert ev.frechet_distance(fa, fb) == pytest.approx(ref, rel=1e-7, abs=1e-9)
    assert ev.frechet_distance(fb, fa) == pytest.approx(ref, rel=1e-7, abs=1e-9)     # symmetric


def test_frechet_distance_shift_and_singular():
    rng = np.random.default_rng(4)
    fa, c = rng.normal(size=(30, 64)), rng.normal(size=64)           # 30 samples, 64 dims: singular covariance
    assert ev.frechet_distance(fa, fa + c) == pytest.approx(c @ c, rel=1e-6)
    assert ev.frechet_distance(fa, fa) == pytest.approx(0.0, abs=1e-8)
    assert math.isfinite(ev.frechet_distance(fa, rng.normal(size=(5, 64))))
    mu, s = ev.feature_stats(fa)
    assert ev.frechet_distance_from_stats(mu, s, mu + c, s) == pytest.approx(c @ c, rel=1e-6)


def test_inception_score_matches_direct():
    rng = np.random.default_rng(5)
    for n, c, splits in ((60, 4, 1), (97, 10, 10), (40, 3, 7)):
        logits = rng.normal(0, 2, (n, c))
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        scores = []
        for part in np.array_split(p, splits):
            py = part.mean(0)
            scores.append(np.exp(np.mean([scipy.stats.entropy(r, py) for r in part])))
        m, s = ev.inception_score(torch.tensor(p), splits)
        assert m == pytest.approx(np.mean(scores), rel=1e-9) and s == pytest.approx(np.std(scores), abs=1e-9)
    with pytest.raises(ValueError, match="splits"): ev.inception_score(p, 100)


def test_random_extractors_deterministic_and_fid_orders():
    rng = np.random.default_rng(6)
    imgs = [rng.integers(0, 255, (33, 47, 3), dtype=np.uint8) for _ in range(6)]
    a, b = ev.RandomConvFeatures(seed=3)(imgs), ev.RandomConvFeatures(seed=3)(imgs)
    np.testing.assert_array_equal(a, b)
    assert not ev.RandomConvFeatures.comparable_to_published
    t = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(ev.RandomConvFeatures(seed=3)(t), a, rtol=1e-5, atol=1e-6)
    waves = [np.sin(np.arange(300) * 0.1)]                            # shorter than n_fft: padded
    assert ev.RandomAudioFeatures()(waves).shape == (1, 64)
    with pytest.raises(ValueError, match="empty"): ev.RandomAudioFeatures()([np.zeros(0)])


def test_clip_similarity_video_direct():
    model, proc = ev.tiny_clip(seed=1)
    rng = np.random.default_rng(7)
    vids = [rng.integers(0, 255, (3, 20, 20, 3), dtype=np.uint8), rng.integers(0, 255, (2, 20, 20, 3), dtype=np.uint8)]
    texts = ["a red circle spinning", "rain"]
    per = ev.clip_similarity(vids, texts, model, proc, reduce=False, batch_size=2)
    with torch.no_grad():
        te = model.get_text_features(**{k: v for k, v in proc(text=texts, return_tensors="pt", padding=True).items()}).pooler_output
        want = []
        for v, t in zip(vids, te):
            ie = model.get_image_features(pixel_values=proc(images=list(v), return_tensors="pt")["pixel_values"]).pooler_output
            want.append(torch.cosine_similarity(ie, t[None]).mean().item())
    np.testing.assert_allclose(per, want, rtol=1e-5, atol=1e-6)


def test_inception_features_from_local_weights(tmp_path):
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    ext = ev.InceptionFeatures(tmp_path / "inception.pth", resize=75)
    imgs = [np.full((40, 40, 3), v, np.uint8) for v in (0, 128, 255)]
    f = ev.extract_features(ext, imgs, batch_size=2)
    assert f.shape == (3, 2048) and np.isfinite(f).all()
    p = ext.probs(imgs)
    assert p.shape == (3, 1000) and np.allclose(p.sum(1), 1, atol=1e-5)


# ----------------------------------------------------------------------------- the evaluation loop
class R:
    def __init__(self, text, masks=None, boxes=None, classes=()):
        self.text, self.masks, self.boxes, self.classes, self.problems = text, masks, boxes, list(classes), []


class Echo:
    "Answers every turn with a function of the history; teacher forcing returns the reference with given masks."
    def __init__(self, answer, forced_masks=None): self.answer, self.forced_masks, self.log = answer, forced_masks, []
    def generate(self, messages, image=None, max_new_tokens=64, response=None):
        self.log.append((len(messages), response is not None))
        if response is not None: return R(response, masks=self.forced_masks)
        return self.answer(messages)


def conv(*turns):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def test_turns_all_uses_reference_history_and_own_targets():
    img = Image.new("RGB", (6, 6))
    m = np.zeros((3, 6, 6), bool); m[0, :2] = True; m[1, 2:4] = True; m[2, 4:] = True
    s = Sample("x", "referring", conv(f"{IMAGE_TOKEN}\na", "<seg>.", "b", "<seg> and <seg>."), image=img, masks=m)
    seen = []
    def answer(msgs):
        seen.append([x["content"] for x in msgs])
        n = sum(x["content"].count("<seg>") for x in msgs)            # history rows come first, like LLMBind's generate
        rows = torch.from_numpy(np.concatenate([np.zeros((n, 6, 6), bool), m[:1]]))   # answer: one <seg>, the first mask
        return R("<seg>.", masks=rows)
    rep = ev.evaluate_model(Echo(answer), [s], turns="all", forced_masks=False, progress=False)
    assert rep["n_answers"] == 2
    assert seen[1] == [f"{IMAGE_TOKEN}\na", "<seg>.", "b"]
    recs = rep["records"]
    assert recs[0]["seg_iou"] == [1.0]                                # turn 1: mask 0 vs mask 0
    assert recs[1]["seg_iou"] == [0.0, 0.0]                           # turn 2: mask 0 vs mask 1, missing vs mask 2
    assert recs[1]["pred_signature"] == "seg" and recs[1]["ref_signature"] == "seg+seg"
    assert rep["dispatch_accuracy"] == 0.5
    assert rep["segmentation"]["referring"]["n"] == 3


def test_report_agrees_with_standalone_metrics():
    rng = np.random.default_rng(8)
    tasks = ["vqa", "chat", "image_gen", "image_edit", "audio", "video"]
    refs = {"vqa": "It is red.", "chat": "You're welcome!", "image_gen": "Here: " + format_call("gen", "a red circle"),
            "image_edit": "Done: " + format_call("edit", "a red circle and a blue star"),
            "audio": format_call("audio", "rain at night"), "video": format_call("video", "a star spinning")}
    outs = ["It is <seg>.", "ok", format_call("gen", "a red circle"), format_call("gen", "a red circle and a blue star"),
            format_call("audio", "Rain  at night"), format_call("video", "a star")]
    samples, table = [], {}
    for k in range(24):
        t = tasks[k % 6]
        samples.append(Sample(f"s{k}", t, conv(f"q{k}", refs[t])))
        table[f"q{k}"] = outs[rng.integers(6)] if rng.random() < 0.5 else refs[t]
    rep = ev.evaluate_model(Echo(lambda msgs: R(table[msgs[-1]["content"]])), samples, progress=False)
    preds, rr = [r["prediction"] for r in rep["records"]], [r["reference"] for r in rep["records"]]
    assert rep["dispatch_accuracy"] == pytest.approx(ev.dispatch_accuracy(preds, rr))
    assert rep["prompt_exact_match"] == pytest.approx(ev.prompt_exact_match(preds, rr))
    assert rep["seg_false_positive_rate"] == pytest.approx(ev.seg_false_positive_rate(preds, [s.task for s in samples]))
    np.testing.assert_array_equal(rep["confusion"]["matrix"], ev.confusion_matrix(preds, rr))
    assert sum(rep["counts"].values()) == 24
    json.dumps(ev.to_jsonable(rep), allow_nan=False)


# ----------------------------------------------------------------------------- the tiny model and the command
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    from llmbind.config import LLMBindConfig
    from llmbind.model import LLMBindForCausalLM
    from llmbind.synthetic import write_shapes_world
    cfg = LLMBindConfig.tiny()
    run = tmp_path_factory.mktemp("run")
    LLMBindForCausalLM.from_config(cfg).save_pretrained(run / "weights_final")     # an unusual name: found by search
    write_shapes_world(run / "data", {"test": 1, "val": 1}, seed=0, image_size=cfg.data.image_size, kinds=cfg.segment.class_names)
    return run


def cli(*argv):
    from llmbind.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(["eval", *argv])
    return rc, out.getvalue(), err.getvalue()


def test_eval_command_run_folder(saved_run):
    rc, out, err = cli("--run", str(saved_run), "--limit", "1", "--max-new-tokens", "6", "--quiet")
    assert rc == 0, err
    assert "task dispatch accuracy" in out and "referring gIoU / cIoU" in out
    rep = json.loads((saved_run / "eval_test.json").read_text())
    assert rep["first_turns"]["n_answers"] == 10 and rep["n_answers"] >= 10 and rep["split"] == "test"   # every turn of one sample per kind
    assert rep["model_dir"].endswith("weights_final")
    assert set(rep["segmentation_forced"]) == {"semantic", "referring", "reasoning", "all"}
    for k in ("dispatch_accuracy", "prompt_exact_match", "seg_false_positive_rate"): assert 0 <= rep[k] <= 1


def test_eval_command_model_and_data(saved_run, tmp_path):
    out_file = tmp_path / "r" / "val.json"
    rc, out, err = cli("--model", str(saved_run / "weights_final"), "--data", str(saved_run / "data"), "--split", "val",
                       "--limit", "1", "--max-new-tokens", "4", "--no-forced", "--quiet", "--out", str(out_file))
    assert rc == 0, err
    rep = json.loads(out_file.read_text())
    assert rep["split"] == "val" and rep["segmentation_forced"] == {}


def test_eval_command_errors(tmp_path):
    rc, _, err = cli()
    assert rc == 2 and "--run RUN" in err
    rc, _, err = cli("--run", str(tmp_path))
    assert rc == 2 and "no saved model" in err
    rc, _, err = cli("--model", str(tmp_path), "--data", str(tmp_path / "nope"))
    assert rc == 2 and "is not a folder" in err
    rc, _, err = cli("--run", str(tmp_path), "--limit", "0")
    assert rc == 2 and "--limit" in err
