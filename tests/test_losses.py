"""Property tests of llmbind.losses against direct computations (random shapes, dtypes, batch layouts)."""
import math, subprocess, sys
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck

from llmbind.config import LossConfig
from llmbind.losses import (IGNORE_INDEX, ar_loss, per_sample_ar_loss, per_task_losses, sigmoid_bce_loss, dice_loss,
                            mask_loss, box_loss, cls_loss, compute_total_loss, loss_terms, weighted_total, LOSS_TERMS)

torch.set_num_threads(1)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def np_bce(x, t):  # per-pixel BCE written with numpy, stable form
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


@SETTINGS
@given(n=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9), extra=st.integers(0, 5),
       scale=st.sampled_from([1.0, 1000.0]), seed=st.integers(0, 10_000))
def test_mask_terms_match_numpy(n, h, w, extra, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, w, generator=g, dtype=torch.float64) * 4
    t = (torch.rand(n, h, w, generator=g) > 0.5).double()
    nm = n + extra
    xn, tn = x.numpy(), t.numpy()
    bce = sum(np_bce(xn[m], tn[m]).mean() for m in range(n)) / nm
    p = 1 / (1 + np.exp(-xn))
    dice = sum(1 - (2 * (p[m] * tn[m]).sum() / scale + 1e-6) / (p[m].sum() / scale + tn[m].sum() / scale + 1e-6)
               for m in range(n)) / nm
    assert math.isclose(sigmoid_bce_loss(x, t, nm).item(), bce, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(dice_loss(x, t, nm, scale=scale).item(), dice, rel_tol=1e-9, abs_tol=1e-12)


def lisa_mask_loss(preds, gts, bce_w=2.0, dice_w=0.5):
    "LISA's loop: per image with num_masks = n_i, times n_i, summed, / (total + 1e-8)."
    bce = dice = 0.0; num = 0
    for p, g in zip(preds, gts):
        g = g.to(p.dtype); k = g.shape[0]
        b = F.binary_cross_entropy_with_logits(p, g, reduction="none").flatten(1, 2).mean(1).sum() / (k + 1e-8)
        s = p.sigmoid().flatten(1, 2); tt = g.flatten(1, 2)
        d = (1 - (2 * (s / 1000 * tt).sum(-1) + 1e-6) / ((s / 1000).sum(-1) + (tt / 1000).sum(-1) + 1e-6)).sum() / (k + 1e-8)
        bce = bce + b * k; dice = dice + d * k; num += k
    return bce_w * bce / (num + 1e-8) + dice_w * dice / (num + 1e-8)


@SETTINGS
@given(sizes=st.lists(st.tuples(st.integers(1, 3), st.integers(2, 12), st.integers(2, 12)), min_size=1, max_size=4),
       seed=st.integers(0, 10_000))
def test_mask_loss_matches_lisa(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    preds = [torch.randn(*s, generator=g, dtype=torch.float64) for s in sizes]
    gts = [torch.rand(*s, generator=g) > 0.3 for s in sizes]
    loss, terms = mask_loss(preds, gts)
    assert terms["num_masks"] == sum(s[0] for s in sizes)
    assert torch.allclose(loss, lisa_mask_loss(preds, gts), rtol=1e-7)


def test_ar_loss_matches_hf_llama_with_padding_and_bf16():
    from llmbind.tokens import tiny_llama
    torch.manual_seed(0)
    m = tiny_llama(50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    ids = torch.randint(4, 50, (3, 17))
    attn = torch.ones_like(ids); attn[1, 12:] = 0; attn[2, 4:] = 0
    labels = ids.masked_fill(attn == 0, IGNORE_INDEX); labels[:, :4] = IGNORE_INDEX
    with torch.no_grad(): out = m(input_ids=ids, attention_mask=attn, labels=labels)
    assert torch.allclose(ar_loss(out.logits, labels), out.loss, atol=1e-6)
    assert torch.allclose(ar_loss(out.logits.bfloat16(), labels), out.loss, atol=2e-2)
    per, n = per_sample_ar_loss(out.logits, labels)
    assert n.tolist() == [13, 8, 0] and torch.isnan(per[2])
    assert math.isclose(((per[:2] * n[:2]).sum() / n.sum()).item(), out.loss.item(), rel_tol=1e-5)
    assert set(per_task_losses(out.logits, labels, ["a", "b", "b"])) == {"a", "b"}


def test_gradients_reach_exactly_the_inputs_of_present_terms():
    torch.manual_seed(0)
    lg = torch.randn(2, 6, 9, requires_grad=True)
    lb = torch.randint(0, 9, (2, 6))
    pm = torch.randn(1, 5, 5, requires_grad=True)
    aux = torch.tensor(1.1, requires_grad=True)
    cl = torch.randn(0, 4, requires_grad=True)   # no <cls> rows in this batch: absent, zero gradient
    total, logs = compute_total_loss(LossConfig(), logits=lg, labels=lb, pred_masks=[pm, None],
                                     gt_masks=[torch.ones(1, 5, 5), None], aux_loss=aux,
                                     cls_logits=cl, cls_targets=torch.zeros(0, dtype=torch.long))
    total.backward()
    assert set(logs) == {"total", "ar", "mask", "mask_bce", "mask_dice", "aux"}
    assert logs.absent == ("det_l1", "det_giou", "cls")
    assert lg.grad.abs().sum() > 0 and pm.grad.abs().sum() > 0 and math.isclose(aux.grad.item(), 0.01, rel_tol=1e-6)
    assert cl.grad is None or cl.grad.numel() == 0


def test_weighted_total_is_eq7():
    cfg = LossConfig(ce_weight=0.7, mask_weight=1.5, bce_weight=3.0, dice_weight=0.25, aux_weight=0.1,
                     det_l1_weight=4.0, det_giou_weight=1.5, cls_weight=0.3)
    terms = {k: torch.tensor(float(i + 1)) for i, k in enumerate(["ar", "mask_bce", "mask_dice", "aux", "det_l1", "det_giou", "cls"])}
    want = 0.7 * 1 + 1.5 * (3.0 * 2 + 0.25 * 3) + 0.1 * 4 + 4.0 * 5 + 1.5 * 6 + 0.3 * 7
    assert math.isclose(weighted_total(cfg, terms).item(), want, rel_tol=1e-6)


def test_box_loss_matches_detr_formula():
    from torchvision.ops import generalized_box_iou
    torch.manual_seed(0)
    def boxes(n):
        r = torch.rand(n, 2, 2).sort(dim=1).values     # (n, [min, max], [x, y])
        return torch.cat([r[:, 0], r[:, 1]], -1)        # (n, 4) x1 y1 x2 y2
    p, g = boxes(7), boxes(7)
    loss, t = box_loss(p, g, l1_weight=5.0, giou_weight=2.0)
    want = 5.0 * F.l1_loss(p, g, reduction="sum") / 7 + 2.0 * (1 - torch.diag(generalized_box_iou(p, g))).sum() / 7
    assert torch.allclose(loss, want, atol=1e-5)


def test_import_respects_layers():
    code = ("import sys, llmbind.losses; bad = [m for m in ('llmbind.model', 'llmbind.data', 'llmbind.train', "
            "'llmbind.moe', 'torchvision') if m in sys.modules]; print(bad); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
