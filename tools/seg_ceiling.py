"""Where the referring cIoU of a demo run goes: what its `<seg>` states hold, and what the mask side reaches with more data.

    python tools/seg_ceiling.py RUN [--records 800] [--steps 1500] [--batch 32] [--lr 3e-3]

RUN is a folder written by `llmbind demo` (it needs RUN/model, RUN/data and RUN/data_pairs). The script

1. runs the model once, teacher-forced, over the referring records of the training split and of the held-out
   pairs (`data_pairs`) and keeps each `<seg>` state, the SAM image embedding and the true mask;
2. fits linear probes (softmax regression) of the colour and the kind named in the request on those states;
3. reports the run's own referring cIoU on both sets, then trains a copy of `text_hidden_fcs` and SAM's mask
   decoder alone on the cached training states (the LLM, its states and SAM's image encoder stay as they are)
   and reports the cIoU every few hundred steps.

The gap between (3)'s first and last line is what more referring data through the mask side is worth with these
states; the training cIoU says how much of the rest is held-out pairs. A run's model has been through the demo's
stage C already (`llmbind.demo.fit_mask_side`, which uses the same cache); on `RUN/stage_b` weights alone the gap is
what stage C can win. Offline, CPU, a few minutes.
"""
import argparse, copy, os, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

from llmbind.demo import cached_ciou, mask_loss, seg_states
from llmbind.model import LLMBindForCausalLM
from llmbind.train import fit
from llmbind.synthetic import COLOURS, SHAPES


def collect(model, data_dir, split, n):
    "A `seg_states` cache of the referring records of a split, with the (colour, kind) words each request names."
    cache = seg_states(model, data_dir, split, leaves=["seg/referring"], records=n)
    colours = sorted(COLOURS, key=len, reverse=True)
    words = []
    for _, ask in cache["asks"]:
        q = f" {ask.lower()} ".replace("?", " ").replace(".", " ")
        words.append((next((c for c in colours if f" {c} " in q), "none"), next((k for k in SHAPES if k in q), "none")))
    return dict(cache, words=words)


def probe(X, y, Xt, yt, steps=500):
    "Train/held-out accuracy of a softmax regression on standardised states."
    classes = sorted(set(y)); ix = {c: i for i, c in enumerate(classes)}
    Y, Yt = torch.tensor([ix[c] for c in y]), torch.tensor([ix.get(c, -1) for c in yt])
    mu, sd = X.mean(0), X.std(0) + 1e-5
    X, Xt = (X - mu) / sd, (Xt - mu) / sd
    head = torch.nn.Linear(X.shape[1], len(classes))
    fit(lambda s: torch.nn.functional.cross_entropy(head(X), Y), steps=steps,          # full batch, every step
        optimizer=torch.optim.Adam(head.parameters(), 1e-2, weight_decay=1e-4))
    with torch.no_grad(): return float((head(X).argmax(1) == Y).float().mean()), float((head(Xt).argmax(1) == Yt).float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--records", type=int, default=800, help="training referring records to cache (default 800)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    for need in ("model", "data", "data_pairs"):
        if not (a.run / need).exists(): raise SystemExit(f"{a.run / need} is missing: give a folder written by `llmbind demo`")
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    t0 = time.perf_counter()
    model = LLMBindForCausalLM.from_pretrained(a.run / "model").eval()
    train = collect(model, a.run / "data", "train", a.records)
    held = collect(model, a.run / "data_pairs", "test", None)
    S, E, M = train["states"], train["embeddings"], train["masks"]
    print(f"cached {len(S)} training and {len(held['states'])} held-out-pair <seg> states ({time.perf_counter() - t0:.0f}s)")
    for name, i in (("colour", 0), ("kind", 1)):
        tr, te = probe(S, [y[i] for y in train["words"]], held["states"], [y[i] for y in held["words"]])
        print(f"linear probe of the {name} named in the request: training {tr:.2f}, held-out pairs {te:.2f}")
    side = copy.deepcopy(model)         # its mask side trains; the freezing policy (what stage B trains) comes along
    print(f"the run as it is: referring cIoU training {cached_ciou(side, train):.3f}, held-out pairs {cached_ciou(side, held):.3f}")
    params = [p for p in (*side.segment.text_hidden_fcs.parameters(), *side.segment.sam.mask_decoder.parameters()) if p.requires_grad]
    g = torch.Generator().manual_seed(0)

    def step(_):                          # a random batch of cached states -> masks, stage B's mask loss (Eq. 9)
        i = torch.randint(0, len(S), (a.batch,), generator=g)
        return mask_loss(side, S[i], E[i], M[i])

    def report(r):
        print(f"mask side alone, step {r.step} ({r.step * a.batch} expressions): referring cIoU training "
              f"{cached_ciou(side, train):.3f}, held-out pairs {cached_ciou(side, held):.3f} ({time.perf_counter() - t0:.0f}s)",
              flush=True)

    side.train()
    fit(step, params, a.steps, lr=a.lr, weight_decay=0.0, log=report, log_every=300)   # plain AdamW at a constant lr

if __name__ == "__main__":
    sys.exit(main())
