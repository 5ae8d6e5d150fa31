"""Slower and integration checks of llmbind.moe and llmbind.kernels (the notebooks hold the quick ones).

Run: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 pytest -q tests/test_moe.py
"""
import copy

import pytest
import torch
from torch import nn

from llmbind import kernels
from llmbind.config import LLMBindConfig, MoEConfig
from llmbind.kernels import route
from llmbind.moe import (LoRAMoELinear, inject_lora_moe, lora_moe_layers, load_balancing_loss, moe_aux_loss,
                         routing_stats, count_parameters)
from llmbind.tokens import tiny_llama

torch.set_num_threads(1)
CPU_IMPLS = ["dense", "grouped", "fused"]
CASES = [dict(), dict(T=1), dict(T=7, d_in=13, d_out=11, r=3), dict(top_k=4), dict(num_experts=1, top_k=1),
         dict(top_k=1), dict(T=2, num_experts=8, top_k=2), dict(T=3, num_experts=8, top_k=8, r=1), dict(with_out=False)]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("seed", [0, 1])
def test_impl_matches_reference(impl, case, seed):
    errs = kernels.check_impl(impl, seed=seed, **case)
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_impl_bf16(impl):
    errs = kernels.check_impl(impl, T=9, d_in=40, d_out=24, dtype=torch.bfloat16)
    assert max(errs.values()) < 3e-2, errs


@pytest.mark.parametrize("case", [dict(), dict(T=1), dict(T=7, d_in=13, d_out=11, r=3), dict(top_k=4),
                                  dict(num_experts=1, top_k=1), dict(with_out=False), dict(T=40, d_in=33, d_out=50)])
def test_triton_interpreter(monkeypatch, case):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    errs = kernels.check_impl("triton", **case)
    assert max(errs.values()) < 1e-5, errs


def test_triton_interpreter_bf16(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    errs = kernels.check_impl("triton", T=9, d_in=20, d_out=24, dtype=torch.bfloat16)
    assert max(errs.values()) < 3e-2, errs


@pytest.mark.parametrize("impl", ["loop", "dense", "grouped"])
def test_gradcheck_float64(impl):
    "Finite differences in float64 through routing (softmax, top-k, renormalise) and the expert sum."
    p = kernels.make_problem(T=5, d_in=6, d_out=4, num_experts=3, top_k=2, r=2, dtype=torch.float64)
    fn = kernels.get_impl(impl)
    def f(x, A, B, logits):
        w, e = route(logits, 2)
        return fn(x, A, B, w, e, 2.0)
    assert torch.autograd.gradcheck(f, (p["x"], p["lora_A"], p["lora_B"], p["logits"]))


def _layer_grads(layer, x):
    for q in layer.parameters(): q.grad = None
    x = x.clone().requires_grad_()
    y = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum().backward()
    return [y.detach(), x.grad, layer.lora_A.grad, layer.lora_B.grad, layer.router.weight.grad]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("shape", [(1, 17), (3, 5, 17), (2, 1, 1, 17)])
@pytest.mark.parametrize("N,k", [(4, 2), (3, 3), (1, 1), (5, 1)])
def test_layer_against_loop(impl, shape, N, k):
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(17, 9, bias=True), num_experts=N, top_k=k, r=3, lora_alpha=5)
    with torch.no_grad(): layer.lora_B.normal_()
    x = torch.randn(shape)
    layer.impl = "loop"; ref = _layer_grads(layer, x)
    layer.impl = impl; got = _layer_grads(layer, x)
    assert got[0].shape == (*shape[:-1], 9)
    for a, b in zip(got, ref): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_layer_bf16_close_to_fp32():
    torch.manual_seed(0)
    l32 = LoRAMoELinear(nn.Linear(24, 16), r=4)
    with torch.no_grad(): l32.lora_B.normal_()
    l16 = copy.deepcopy(l32).bfloat16()
    x = torch.randn(6, 24)
    y32, y16 = l32(x), l16(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=3e-2, atol=3e-2)


def test_peft_lora_equivalence_with_bias_and_many_tokens():
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as PeftLinear
    torch.manual_seed(3)
    base = nn.Linear(31, 19, bias=True)
    ours = LoRAMoELinear(copy.deepcopy(base), num_experts=1, top_k=1, r=5, lora_alpha=7)
    ref = PeftLinear(copy.deepcopy(base), "default", config=LoraConfig(r=5, lora_alpha=7), r=5, lora_alpha=7)
    with torch.no_grad():
        ours.lora_B.normal_()
        ref.lora_A["default"].weight.copy_(ours.lora_A[0]); ref.lora_B["default"].weight.copy_(ours.lora_B[0])
    x = torch.randn(4, 33, 31)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    tol = dict(rtol=1e-5, atol=1e-5)     # float32; the two add the same terms in a different order
    torch.testing.assert_close(y1, y2, **tol)
    y1.square().sum().backward(); y2.square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **tol)
    torch.testing.assert_close(ours.lora_A.grad[0], ref.lora_A["default"].weight.grad, **tol)
    torch.testing.assert_close(ours.lora_B.grad[0], ref.lora_B["default"].weight.grad, **tol)


def test_inject_layer_choices_and_llama_model():
    m = inject_lora_moe(tiny_llama(768, num_layers=5), MoEConfig(layers="all", target_modules=["up_proj"]))
    assert list(lora_moe_layers(m)) == [f"model.layers.{i}.mlp.up_proj" for i in range(5)]
    m = inject_lora_moe(tiny_llama(768, num_layers=5), MoEConfig())
    assert sorted({n.split(".")[2] for n in lora_moe_layers(m)}) == ["0", "2", "4"]
    inner = tiny_llama(768, num_layers=4).model      # a LlamaModel, not ForCausalLM
    inject_lora_moe(inner, MoEConfig(layers=[3]))
    assert list(lora_moe_layers(inner)) == ["layers.3.mlp.gate_proj", "layers.3.mlp.up_proj", "layers.3.mlp.down_proj"]


def test_paper_7b_on_meta_counts():
    from transformers import LlamaConfig, LlamaForCausalLM
    c = LLMBindConfig.paper_7b()
    lc = LlamaConfig(vocab_size=c.llm.vocab_size, hidden_size=c.llm.hidden_size, intermediate_size=c.llm.intermediate_size,
                     num_hidden_layers=c.llm.num_layers, num_attention_heads=c.llm.num_heads,
                     num_key_value_heads=c.llm.num_kv_heads, tie_word_embeddings=False)
    with torch.device("meta"): m = LlamaForCausalLM(lc)
    m.requires_grad_(False)
    inject_lora_moe(m, c.moe)
    layers = lora_moe_layers(m)
    assert len(layers) == 48 and all(l.lora_A.is_meta and l.router.weight.is_meta for l in layers.values())
    n = count_parameters(m)
    assert n["trainable"] == 24_428_544
    assert abs(n["share"] - 0.003612) < 1e-5


def test_training_step_only_adapters_change_and_state_dict_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = tiny_llama(768, num_layers=2, hidden_size=64, intermediate_size=96, num_heads=2).requires_grad_(False)
    inject_lora_moe(m, MoEConfig(r=4, lora_alpha=8.0))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(4, 700, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool); mask[1, 8:] = False
    for _ in range(3):
        out = m(ids, attention_mask=mask.long(), labels=ids)
        loss = out.loss + 0.01 * moe_aux_loss(m, token_mask=mask)
        opt.zero_grad(); loss.backward(); opt.step()
    after = m.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.endswith(("lora_A", "lora_B", "router.weight")) for k in changed)
    assert any(k.endswith("router.weight") for k in changed)
    torch.save(after, tmp_path / "sd.pt")
    m2 = inject_lora_moe(tiny_llama(768, num_layers=2, hidden_size=64, intermediate_size=96, num_heads=2), MoEConfig(r=4, lora_alpha=8.0))
    m2.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    with torch.no_grad(): torch.testing.assert_close(m2(ids).logits, m(ids).logits)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_router_gradients(reentrant):
    "Non-reentrant checkpointing keeps the aux loss differentiable; reentrant checkpointing does not (documented)."
    torch.manual_seed(0)
    m = tiny_llama(768, num_layers=2, hidden_size=64, intermediate_size=96, num_heads=2).requires_grad_(False)
    inject_lora_moe(m, MoEConfig(r=4, lora_alpha=8.0, layers="all"))
    m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    m.train()
    ids = torch.randint(4, 700, (2, 10))
    m.model.embed_tokens.weight.requires_grad_(True)      # something upstream must require grad for reentrant checkpoints
    out = m(ids, labels=ids)
    aux = moe_aux_loss(m)
    if reentrant:
        assert not aux.requires_grad
    else:
        (out.loss + aux).backward()
        assert all(l.router.weight.grad is not None and l.router.weight.grad.abs().sum() > 0 for l in lora_moe_layers(m).values())


def test_aux_loss_against_mixtral_per_layer():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    torch.manual_seed(0)
    m = inject_lora_moe(tiny_llama(768, num_layers=2, hidden_size=64, intermediate_size=96, num_heads=2), MoEConfig(layers="all"))
    ids = torch.randint(4, 700, (3, 7)); mask = torch.rand(3, 7) > 0.3
    m(ids)
    ours = moe_aux_loss(m, token_mask=mask)
    ref = sum(load_balancing_loss_func((l.last_router_logits,), l.num_experts, top_k=1, attention_mask=mask)
              for l in lora_moe_layers(m).values())
    torch.testing.assert_close(ours, ref)
    stats = routing_stats(m, mask)
    for name, s in stats.items():
        assert s.tokens == int(mask.sum())
        torch.testing.assert_close(s.load.sum(), torch.tensor(1.0))


def test_load_balancing_loss_bounds_random():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        N = int(torch.randint(1, 9, (1,), generator=g))
        lg = torch.randn(int(torch.randint(1, 64, (1,), generator=g)), N, generator=g) * 3
        v = load_balancing_loss(lg, N).item()
        assert 0 < v <= N + 1e-5


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_layer_with_dropout_matches_loop(impl):
    "With LoRA dropout the router sees the clean input and the experts the dropped one (no fused router matmul)."
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(17, 9), num_experts=4, top_k=2, r=3, lora_dropout=0.3).train()
    with torch.no_grad(): layer.lora_B.normal_()
    x = torch.randn(5, 17)
    layer.impl = "loop"; torch.manual_seed(1); ref = _layer_grads(layer, x)
    layer.impl = impl; torch.manual_seed(1); got = _layer_grads(layer, x)
    for a, b in zip(got, ref): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.manual_seed(1); y_drop = layer(x)
    torch.manual_seed(2); assert not torch.allclose(layer(x), y_drop)   # dropout is active in training


def test_fused_router_logits_match_router():
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(17, 9), impl="dense")
    x = torch.randn(6, 17)
    layer(x)
    torch.testing.assert_close(layer.last_router_logits, layer.router(x))


# ---- the fused path (one autograd Function for router, top-k, gates and experts; notebook 03, "Fast path 4")

@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("case", [dict(), dict(T=1), dict(T=7, d_in=13, d_out=11, r=3), dict(top_k=4), dict(top_k=1),
                                  dict(T=2, num_experts=8, top_k=2), dict(with_bias=False)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_fused_against_reference_both_conventions(case, renormalize):
    errs = kernels.check_fused(renormalize=renormalize, **case)
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("N,k", [(3, 2), (3, 3), (4, 1)])
def test_fused_gradcheck_float64(N, k, renormalize):
    g = torch.Generator().manual_seed(N * 10 + k)
    leaf = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
    x, Wg, A, B, W0, b0, bo = leaf(5, 6), leaf(N, 6), leaf(N, 2, 6), leaf(N, 4, 2), leaf(4, 6), leaf(4), leaf(5, 4)
    f = kernels.FusedLoRAMoE.apply
    assert torch.autograd.gradcheck(lambda *t: f(*t, None, k, 2.0, renormalize), (x, Wg, A, B, W0, b0))
    assert torch.autograd.gradcheck(lambda x, Wg, A, B, bo: f(x, Wg, A, B, None, None, bo * 1, k, 2.0, renormalize), (x, Wg, A, B, bo))


def test_fused_has_no_host_synchronisation():
    "No nonzero, boolean masks or .item() in forward or backward: nothing that makes a GPU wait for the host."
    from torch.utils._python_dispatch import TorchDispatchMode
    seen = set()
    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(17, 9), impl="fused")
    x = torch.randn(6, 17, requires_grad=True)
    with Record():
        y = layer(x)
        (y.sum() + layer.last_router_logits.square().sum()).backward()   # both outputs carry gradient
    bad = {"aten.nonzero", "aten._local_scalar_dense", "aten.masked_select", "aten.index_put_", "aten.masked_scatter"}
    assert not (seen & bad), seen & bad
    assert "aten.topk" in seen and layer.router.weight.grad is not None


def test_fused_decode_path_has_no_graph_and_matches():
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(17, 9), impl="fused")
    with torch.no_grad(): layer.lora_B.normal_()
    x = torch.randn(3, 17)
    with torch.no_grad():
        y = layer(x)
        layer.impl = "loop"; ref = layer(x)
    assert y.grad_fn is None and layer.last_router_logits is not None
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_fused_falls_back_where_it_cannot_apply():
    "Dropout, mixed dtypes, a base that is not a plain nn.Linear: the same numbers as the stacked path."
    torch.manual_seed(0)
    class MyLinear(nn.Linear): pass
    layer = LoRAMoELinear(MyLinear(17, 9), impl="fused")
    with torch.no_grad(): layer.lora_B.normal_()
    x = torch.randn(4, 17)
    layer.impl = "loop"; ref = _layer_grads(layer, x)
    layer.impl = "fused"; got = _layer_grads(layer, x)                 # base given as an output (base_out)
    for a, b in zip(got, ref): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16


def test_fused_tiny_model_with_mask_and_checkpointing():
    "Training loss with the masked balancing loss: fused = dense, plain and with non-reentrant checkpointing."
    def step(impl, ckpt):
        torch.manual_seed(0)
        m = tiny_llama(768, num_layers=2, hidden_size=64, intermediate_size=96, num_heads=2).requires_grad_(False)
        inject_lora_moe(m, MoEConfig(r=4, lora_alpha=8.0, layers="all"))
        for l in lora_moe_layers(m).values():
            l.impl = impl
            with torch.no_grad(): l.lora_B.normal_(std=0.1)
        if ckpt: m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        m.train()
        ids = torch.randint(4, 700, (2, 12), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(2, 12, dtype=torch.bool); mask[1, 7:] = False
        loss = m(ids, attention_mask=mask.long(), labels=ids).loss + 0.1 * moe_aux_loss(m, token_mask=mask)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    ref_loss, ref = step("dense", False)
    for ckpt in (False, True):
        loss, got = step("fused", ckpt)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for n in ref: torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6)
