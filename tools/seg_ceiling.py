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
states; the training cIoU says how much of the rest is held-out pairs. Offline, CPU, a few minutes.
"""
import argparse, copy, os, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

from llmbind.pipeline import chat_collator
from llmbind.losses import dice_loss, sigmoid_bce_loss
from llmbind.model import LLMBindForCausalLM
from llmbind.segment import decode_masks, gather_embedding_states
from llmbind.train import fit
from llmbind.synthetic import COLOURS, SHAPES, load_shapes_world


def collect(model, collate, data_dir, split, n, batch=16):
    "States (N, D), SAM embeddings (N, c, h, w), masks (N, H, W) and (colour, kind) words of every `<seg>` of `n` referring records."
    world = load_shapes_world(data_dir, split, leaves=["seg/referring"], seed=0)
    samples = [s.load() for s in list(world["seg/referring"])[:n]]
    if not samples: raise SystemExit(f"no referring records in the {split} split of {data_dir}")
    colours = sorted(COLOURS, key=len, reverse=True)
    S, E, M, Y = [], [], [], []
    for a in range(0, len(samples), batch):
        part = samples[a:a + batch]
        b = collate(part)
        for k in ("ids", "sources", "truncated", "dropped"): b.pop(k, None)
        with torch.no_grad():
            o = model(**{k: v for k, v in b.items() if k not in ("labels",)})
            states = gather_embedding_states(o.hidden_states, o.token_ids, model.seg_token_id)
            emb = model.segment.encode_images(b["sam_images"])
        for r, s in enumerate(part):
            asks = [m["content"].lower() for m in s.messages if m["role"] == "user"]
            for j in range(len(states[r])):
                q = f" {asks[j] if j < len(asks) else ''} ".replace("?", " ").replace(".", " ")
                S.append(states[r][j]); E.append(emb[r]); M.append(b["masks"][r][j].float())
                Y.append((next((c for c in colours if f" {c} " in q), "none"), next((k for k in SHAPES if k in q), "none")))
    return torch.stack(S), torch.stack(E), torch.stack(M), Y


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


def masks(fcs, sam, S, E, M, size):
    "Mask logits (N, H, W) for cached states."
    prompts = fcs(S)
    lo = decode_masks(sam, E, [p[None] for p in prompts], [(size, size)] * len(S), [tuple(M.shape[1:])] * len(S), batched=True)
    return torch.stack([m[0] for m in lo])


def ciou(fcs, sam, data, size, chunk=64):
    S, E, M, _ = data
    inter = union = 0.0
    with torch.no_grad():
        for a in range(0, len(S), chunk):
            p, g = masks(fcs, sam, S[a:a + chunk], E[a:a + chunk], M[a:a + chunk], size) > 0, M[a:a + chunk].bool()
            inter += float((p & g).sum()); union += float((p | g).sum())
    return inter / union if union else float("nan")


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
    cfg = model.cfg
    collate = chat_collator(cfg, model.tokenizer)
    train = collect(model, collate, a.run / "data", "train", a.records)
    held = collect(model, collate, a.run / "data_pairs", "test", 10**6)
    print(f"cached {len(train[0])} training and {len(held[0])} held-out-pair <seg> states ({time.perf_counter() - t0:.0f}s)")
    for name, i in (("colour", 0), ("kind", 1)):
        tr, te = probe(train[0], [y[i] for y in train[3]], held[0], [y[i] for y in held[3]])
        print(f"linear probe of the {name} named in the request: training {tr:.2f}, held-out pairs {te:.2f}")
    size = cfg.segment.image_size
    fcs, sam = copy.deepcopy(model.segment.text_hidden_fcs), copy.deepcopy(model.segment.sam)
    print(f"the run as it is: referring cIoU training {ciou(fcs, sam, train, size):.3f}, held-out pairs {ciou(fcs, sam, held, size):.3f}")
    # what stage B trains of the mask side (the model's freezing policy, kept by the copies)
    params = [p for p in (*fcs.parameters(), *sam.mask_decoder.parameters()) if p.requires_grad]
    S, E, M, _ = train
    g = torch.Generator().manual_seed(0)

    def step(_):                          # a random batch of cached states -> masks, stage B's mask loss (Eq. 9)
        i = torch.randint(0, len(S), (a.batch,), generator=g)
        pred = masks(fcs, sam, S[i], E[i], M[i], size)
        return cfg.loss.bce_weight * sigmoid_bce_loss(pred, M[i], a.batch) + cfg.loss.dice_weight * dice_loss(pred, M[i], a.batch)

    def report(r):
        print(f"mask side alone, step {r.step} ({r.step * a.batch} expressions): referring cIoU training "
              f"{ciou(fcs, sam, train, size):.3f}, held-out pairs {ciou(fcs, sam, held, size):.3f} ({time.perf_counter() - t0:.0f}s)",
              flush=True)

    fit(step, params, a.steps, lr=a.lr, weight_decay=0.0, log=report, log_every=300)   # plain AdamW at a constant lr


if __name__ == "__main__":
    sys.exit(main())
