#!/usr/bin/env python3
"""refit's DIET-lite model trained by PyTorch (CPU) and by ONNX Runtime's training API.

Input: the featurized dataset that `bench_train features` writes (per example the feature ids of
each token, the intent index and the BILOU tags, plus the `TrainOptions` refit trains with and its
dense parameters' names), so the peers see exactly the inputs refit's trainer sees. The network, loss, optimiser and batching
reproduce worker/engine/src/model.rs, batch.rs and trainer.rs:

  per epoch: each token whose word occurs once in the data gets the unseen-word feature in
             place of its word feature with probability rare_word_oov
  per batch: the tagger sees each token as an unseen word with probability tagger_word_mask
  per token: embedding rows [V, D] of its feature ids, each weighted 1/sqrt(#features) (and,
             while training, zeroed with probability feature_dropout), summed
             -> + b_tok = t; ReLU(t) -> dropout                              = h [B, T, D]
             tagger's view: a token whose first feature is the unseen-word feature is that
             feature's row alone: t' = emb[oov] + b_tok; ReLU(t') -> the same dropout = h'
  intent:    mean of h over the example's tokens -> Linear(D,H) [+ max of h over them
             -> Linear(D,H) without bias, when refit's model has w_int1_max] -> ReLU -> dropout
             -> Linear(H,C)
  entities:  [h'(t-w) .. h'(t+w)] (zero outside the example) -> Linear((2w+1)D,H) -> ReLU
             -> dropout -> Linear(H,K)                                       (K = 1 + 4 types)
  loss     = mean intent cross-entropy + entity_loss_weight x mean tag cross-entropy over the
             batch's tokens
  AdamW (lr 0.003, betas 0.9/0.999, eps 1e-8, decoupled weight decay 1e-4 on every parameter),
  batch 64, dropout 0.2, feature dropout 0.2, rare-word swaps 0.7, window w = 2 -- the values
  come from the features file.

With dropout and feature dropout off and the same initial parameters (`--init`, refit's initial
checkpoint from `bench_train features --init`), every peer's per-epoch losses match refit's to
~1e-3 (before refit added max pooling, the ORT peer's matched to 5 decimals; torch adds AdamW's
eps after the bias correction). The peers warn when the features file names a training option
or a dense parameter they do not implement: refit's model has changed, extend this file.

Frameworks (--frameworks, comma list):
  torch      PyTorch, gather + weighted sum over batches padded to their longest example and
             richest token (the same graph as the ONNX export); AdamW
  torch_bag  PyTorch, the embedding as nn.EmbeddingBag(mode="sum", per_sample_weights) over the
             batch's features without padding (ids + offsets)
  torch_sparse  as torch_bag with sparse=True gradients and torch.optim.SparseAdam for the
             embedding: lazy Adam over the rows a batch uses, like refit (but without weight decay
             on those rows: SparseAdam has none); AdamW for the rest
  ort        onnxruntime-training: the `torch` module exported to ONNX (training mode, dropout
             kept), `artifacts.generate_artifacts` with a custom loss block (intent CE + tag CE
             with ignore_index) and onnxblock AdamW, run with `training.api`; the max
             pooling is exported as GatherElements at the ArgMax (ORT training has no ReduceMax
             gradient)

In torch, torch_bag and ort the embedding is dense (dense gradient, dense AdamW over all V rows
each step): what these frameworks do by default. refit updates only the rows a batch uses (lazy
AdamW), as torch_sparse does. The two take slightly different paths (dense Adam keeps moving a
row for a few steps after the batch that used it); the throughput is what this benchmark compares.

Each run: a fresh model, 1 warm-up epoch, then --epochs timed epochs; examples/s over the timed
epochs (batch assembly included, as in refit); --repeats runs, median reported. Threads:
torch.set_num_threads(--threads); ORT intra_op_num_threads = --threads, inter_op 1.

  python bench/peers.py --data bench/results/financial-demo.features.json --epochs 20 --repeats 3
Prints one JSON object per framework on stdout (progress on stderr).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# refit's TrainOptions defaults; the features file's `train_options` (what refit trains with)
# override them, see Data.
LR, BETAS, EPS, WD, DROPOUT, BATCH = 0.003, (0.9, 0.999), 1e-8, 1e-4, 0.2, 64
FEATURE_DROPOUT, ENTITY_WEIGHT, RARE_OOV, TAGGER_MASK = 0.0, 1.0, 0.0, 0.0
IGNORE = -100
KNOWN_OPTIONS = {"batch_size", "learning_rate", "weight_decay", "dropout", "feature_dropout",
                 "entity_loss_weight", "rare_word_oov", "tagger_word_mask"}
# Options the peers know but do not implement: fine at these values (bench_train exports
# intent_label_smoothing 0; ORT's training API has no smoothed cross-entropy).
UNIMPLEMENTED_AT = {"intent_label_smoothing": 0.0}
# refit's dense parameters the peers implement; w_int1_max (when present) adds max pooling.
KNOWN_PARAMS = {"b_tok", "w_int1", "w_int1_max", "b_int1", "w_int2", "b_int2", "w_ent1", "b_ent1",
                "w_ent2", "b_ent2"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data

class Data:
    """The dataset padded to its own maxima; batches are cut down to their own maxima."""

    def __init__(self, path):
        global LR, WD, DROPOUT, BATCH, FEATURE_DROPOUT, ENTITY_WEIGHT, RARE_OOV, TAGGER_MASK
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        self.meta = {k: v for k, v in d.items() if k != "examples"}
        o = d.get("train_options", {})
        LR = o.get("learning_rate", LR)
        WD = o.get("weight_decay", WD)
        DROPOUT = o.get("dropout", DROPOUT)
        BATCH = o.get("batch_size", BATCH)
        FEATURE_DROPOUT = o.get("feature_dropout", FEATURE_DROPOUT)
        ENTITY_WEIGHT = o.get("entity_loss_weight", ENTITY_WEIGHT)
        RARE_OOV = o.get("rare_word_oov", RARE_OOV)
        TAGGER_MASK = o.get("tagger_word_mask", TAGGER_MASK)
        off = {k: o[k] for k, fine in UNIMPLEMENTED_AT.items() if k in o and o[k] != fine}
        if off:
            log(f"peers: WARNING: refit trains with options the peers do not implement: {off}")
        # The peers train with one batch size throughout; bench_train exports a constant one.
        if o.get("final_batch_size", BATCH) != BATCH:
            log(f"peers: WARNING: refit grows its batch size from {BATCH} to "
                f"{o['final_batch_size']}; the peers keep {BATCH}")
        unknown = sorted(set(o) - KNOWN_OPTIONS - {"final_batch_size"} - set(UNIMPLEMENTED_AT))
        if unknown:
            log(f"peers: WARNING: refit trains with options the peers do not implement: "
                f"{ {k: o[k] for k in unknown} }")
        params = {name for name, _ in d.get("dense_params", [])}
        self.max_pool = "w_int1_max" in params
        unknown = sorted(params - KNOWN_PARAMS)
        if unknown:
            log(f"peers: WARNING: refit's model has parameters the peers do not implement: {unknown}; "
                f"the peers train a different model")
        ex = d["examples"]
        self.n = len(ex)
        self.V, self.D, self.H = d["vocab_rows"], d["embed"], d["hidden"]
        self.C, self.K = d["intents"], d["tags"]
        self.window = d["window"]
        self.oov = d.get("oov_id")  # None: no unseen-word feature (an old refit)
        rare = d.get("rare_words", [])
        T = max([len(e["tokens"]) for e in ex] + [1])
        F = max([len(t) for e in ex for t in e["tokens"]] + [1])
        self.ids = np.zeros((self.n, T, F), np.int64)
        self.fw = np.zeros((self.n, T, F), np.float32)
        self.tags = np.full((self.n, T), IGNORE, np.int64)
        self.ntok = np.zeros(self.n, np.int64)
        self.nfeat = np.ones(self.n, np.int64)
        self.intent = np.array([e["intent"] for e in ex], np.int64)
        for i, e in enumerate(ex):
            self.ntok[i] = len(e["tokens"])
            for t, ids in enumerate(e["tokens"]):
                if ids:
                    self.ids[i, t, :len(ids)] = ids
                    self.fw[i, t, :len(ids)] = 1.0 / np.sqrt(len(ids))
                    self.nfeat[i] = max(self.nfeat[i], len(ids))
            for t, tag in enumerate(e["tags"][:len(e["tokens"])]):
                self.tags[i, t] = tag
        self.rare = np.array(rare, np.int64).reshape(-1, 2)
        self.rare_word = self.ids[self.rare[:, 0], self.rare[:, 1], 0].copy()

    def swap_rare_words(self, rng):
        """Once per epoch, as refit does: each word seen once becomes the unseen-word feature
        with probability RARE_OOV (its n-grams stay)."""
        if self.oov is None or RARE_OOV <= 0 or len(self.rare) == 0:
            return
        swap = rng.random(len(self.rare)) < RARE_OOV
        self.ids[self.rare[:, 0], self.rare[:, 1], 0] = np.where(swap, self.oov, self.rare_word)

    def batch(self, idx, rng=None):
        """ids [B,T,F] i64, fw [B,T,F] f32, mask [B,T] f32, tok_w [B,T] f32, oov [B,T] f32 (1 for a
        token whose first feature is the unseen-word feature), intent [B] i64, tags [B*T] i64
        (IGNORE on padding). With `rng`, feature dropout as refit does it: each feature's weight
        is zeroed with probability FEATURE_DROPOUT (no rescaling)."""
        T = max(int(self.ntok[idx].max()), 1)
        F = int(self.nfeat[idx].max())
        n = self.ntok[idx]
        fw = self.fw[idx, :T, :F]
        if rng is not None and FEATURE_DROPOUT > 0:
            fw[rng.random(fw.shape, dtype=np.float32) < FEATURE_DROPOUT] = 0.0
        mask = (np.arange(T)[None, :] < n[:, None]).astype(np.float32)
        tok_w = mask / np.maximum(n, 1)[:, None].astype(np.float32)
        ids = self.ids[idx, :T, :F]
        oov = (ids[:, :, 0] == self.oov).astype(np.float32) if self.oov is not None \
            else np.zeros((len(idx), T), np.float32)
        if rng is not None and TAGGER_MASK > 0:  # the tagger sees random tokens as unseen words
            oov[rng.random(oov.shape, dtype=np.float32) < TAGGER_MASK] = 1.0
        return (ids, fw, mask, tok_w, oov, self.intent[idx], self.tags[idx, :T].reshape(-1))


def epochs_of(n, epochs, seed):
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(n)
        yield [perm[i:i + BATCH] for i in range(0, n, BATCH)]


# ----------------------------------------------------------------------------- the model

def read_safetensors(path):
    """name -> float32 array, from a safetensors file (standard library + numpy)."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", t
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(body[a:b], np.float32).reshape(t["shape"]).copy()
    return out


INIT = None  # refit's initial checkpoint (--init): the peers then start from its parameters


def make_model(data, seed, bag=False, sparse=False, for_onnx=False):
    import torch
    from torch import nn
    import torch.nn.functional as Fn

    class Diet(nn.Module):
        def __init__(self):
            super().__init__()
            V, D, H, C, K = data.V, data.D, data.H, data.C, data.K
            self.bag = bag
            self.emb = nn.EmbeddingBag(V, D, mode="sum", sparse=sparse) if bag else nn.Embedding(V, D)
            self.b_tok = nn.Parameter(torch.zeros(D))
            self.int1, self.int2 = nn.Linear(D, H), nn.Linear(H, C)
            # refit's intent head also sees the max over the tokens (w_int1_max, no bias of its own)
            self.int1_max = nn.Linear(D, H, bias=False) if data.max_pool else None
            self.window = data.window
            self.ent1, self.ent2 = nn.Linear((2 * data.window + 1) * D, H), nn.Linear(H, K)
            # the unseen-word feature's row (the padding row when there is none)
            self.register_buffer("oov_id", torch.tensor([data.oov or 0]), persistent=False)
            self.drop = nn.Dropout(DROPOUT)
            # refit's initialisation: normal(0, 1/sqrt(D)) rows with a zero padding row,
            # He-normal matrices, zero biases.
            with torch.no_grad():
                self.emb.weight.normal_(0.0, 1.0 / np.sqrt(D))
                self.emb.weight[0].zero_()
                for lin in (self.int1, self.int2, self.ent1, self.ent2):
                    lin.weight.normal_(0.0, np.sqrt(2.0 / lin.in_features))
                    lin.bias.zero_()
                if self.int1_max is not None:
                    self.int1_max.weight.normal_(0.0, np.sqrt(2.0 / D))
                if INIT is not None:
                    p = read_safetensors(INIT)
                    self.emb.weight.copy_(torch.from_numpy(p["param/embedding"]))
                    self.b_tok.copy_(torch.from_numpy(p["param/b_tok"]))
                    for name, lin in (("int1", self.int1), ("int2", self.int2),
                                      ("ent1", self.ent1), ("ent2", self.ent2)):
                        lin.weight.copy_(torch.from_numpy(p[f"param/w_{name}"].T.copy()))
                        lin.bias.copy_(torch.from_numpy(p[f"param/b_{name}"]))
                    if self.int1_max is not None:
                        self.int1_max.weight.copy_(torch.from_numpy(p["param/w_int1_max"].T.copy()))

        def forward(self, ids, fw, mask, tok_w, oov, offsets=None):
            if self.bag:  # ragged: ids/fw list the batch's features, offsets start each token
                B, T = mask.shape
                # one more bag holding the unseen-word feature alone, in the same call (one
                # sparse gradient for the embedding, not two)
                bags = self.emb(torch.cat([ids, self.oov_id]),
                                torch.cat([offsets, offsets.new_tensor([ids.shape[0]])]),
                                per_sample_weights=torch.cat([fw, fw.new_ones(1)]))
                tok, oov_row = bags[:-1].reshape(B, T, -1), bags[-1:]
            else:
                tok = (self.emb(ids) * fw.unsqueeze(-1)).sum(2)
                oov_row = self.emb(self.oov_id)
            tok = tok + self.b_tok
            # the tagger sees an unseen word as the unseen-word row alone
            tok_ent = tok + oov.unsqueeze(-1) * (oov_row + self.b_tok - tok)
            keep = self.drop(torch.ones_like(tok))  # one dropout mask for both views, as refit
            h = Fn.relu(tok) * keep
            h_ent = Fn.relu(tok_ent) * keep * mask.unsqueeze(-1)  # zero outside the example
            hm = h * mask.unsqueeze(-1)
            sentence = (h * tok_w.unsqueeze(-1)).sum(1)
            z = self.int1(sentence)
            if self.int1_max is not None:  # h >= 0, so the zeros of padding never win
                # ORT training has no ReduceMax gradient (and TopK's crashes its gradient
                # builder): the same max as GatherElements at the ArgMax
                if for_onnx:
                    strongest = hm.gather(1, hm.argmax(dim=1, keepdim=True)).squeeze(1)
                else:
                    strongest = hm.amax(dim=1)
                z = z + self.int1_max(strongest)
            intent_logits = self.int2(self.drop(Fn.relu(z)))
            w, T = self.window, h_ent.shape[1]
            padded = Fn.pad(h_ent, (0, 0, w, w))
            ctx = torch.cat([padded[:, k:k + T] for k in range(2 * w + 1)], dim=-1)
            tag_logits = self.ent2(self.drop(Fn.relu(self.ent1(ctx))))
            return intent_logits, tag_logits.reshape(-1, tag_logits.shape[-1])

    torch.manual_seed(seed)
    return Diet()


# ----------------------------------------------------------------------------- torch

def torch_run(data, epochs, seed, bag, sparse=False):
    import torch
    import torch.nn.functional as Fn
    model = make_model(data, seed, bag, sparse)
    # weight decay on every parameter, like refit (SparseAdam has none for the embedding)
    dense = [p for p in model.parameters() if not (sparse and p is model.emb.weight)]
    opts = [torch.optim.AdamW(dense, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)]
    if sparse:  # lazy Adam over the rows a batch uses (no weight decay: SparseAdam has none)
        opts.append(torch.optim.SparseAdam([model.emb.weight], lr=LR, betas=BETAS, eps=EPS))
    model.train()
    ends, losses = [], []
    rng = np.random.default_rng(seed + 1000)
    t0 = time.perf_counter()
    for batches in epochs_of(data.n, epochs + 1, seed):
        data.swap_rare_words(rng)
        total = 0.0
        for idx in batches:
            ids, fw, mask, tok_w, oov, intent, tags = data.batch(idx, rng)
            offsets = None
            if bag:  # EmbeddingBag's ragged input: only the real features, no padding
                real = ids != 0
                counts = real.reshape(-1, ids.shape[2]).sum(1)
                offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]))
                ids, fw = ids[real], fw[real]
            ids, fw, mask, tok_w, oov, intent, tags = (
                torch.from_numpy(np.ascontiguousarray(x)) for x in (ids, fw, mask, tok_w, oov, intent, tags))
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            il, tl = model(ids, fw, mask, tok_w, oov, offsets)
            loss = Fn.cross_entropy(il, intent) + ENTITY_WEIGHT * Fn.cross_entropy(tl, tags, ignore_index=IGNORE)
            loss.backward()
            for opt in opts:
                opt.step()
            total += loss.item()
        ends.append(time.perf_counter())
        losses.append(total / len(batches))
    return ends[0] - t0, ends[-1] - ends[0], losses


# ----------------------------------------------------------------------------- ort

def ort_artifacts(data, seed, outdir):
    import onnx
    import torch
    from onnxruntime.training import artifacts, onnxblock

    model = make_model(data, seed, bag=False, for_onnx=True)
    model.train()
    B, T, F = 2, 3, 4
    dummy = (torch.zeros(B, T, F, dtype=torch.int64), torch.ones(B, T, F), torch.ones(B, T), torch.ones(B, T) / T,
             torch.zeros(B, T))
    fwd = outdir / "forward.onnx"
    axes = {"ids": {0: "B", 1: "T", 2: "F"}, "fw": {0: "B", 1: "T", 2: "F"},
            "mask": {0: "B", 1: "T"}, "tok_w": {0: "B", 1: "T"}, "oov": {0: "B", 1: "T"},
            "intent_logits": {0: "B"}, "tag_logits": {0: "BT"}}
    torch.onnx.export(model, dummy, str(fwd), export_params=True, opset_version=17,
                      do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING,
                      input_names=["ids", "fw", "mask", "tok_w", "oov"],
                      output_names=["intent_logits", "tag_logits"], dynamic_axes=axes)

    class ScalarConstant(onnxblock.Block):
        """A scalar float initializer (blocks.Constant makes a [1] tensor, whose broadcast
        breaks the gradient builder)."""

        def __init__(self, name, value):
            super().__init__()
            self._name, self._value = name, value

        def build(self):
            self.base.graph.initializer.append(
                onnx.helper.make_tensor(self._name, onnx.TensorProto.FLOAT, [], [self._value]))
            return self._name

    class DietLoss(onnxblock.Block):
        def __init__(self):
            super().__init__()
            self.ce_int = onnxblock.loss.CrossEntropyLoss()
            self.ce_tag = onnxblock.loss.CrossEntropyLoss(ignore_index=IGNORE)
            self.add = onnxblock.blocks.Add()
            self.mul = onnxblock.blocks.Mul()
            self.weight = ScalarConstant("entity_loss_weight", float(ENTITY_WEIGHT))

        def build(self, intent_logits, tag_logits):
            intent = self.ce_int(intent_logits, "intent_labels")
            tag = self.ce_tag(tag_logits, "tag_labels")
            if ENTITY_WEIGHT != 1.0:
                tag = self.mul(tag, self.weight())
            return self.add(intent, tag)

    m = onnx.load(str(fwd))
    params = [i.name for i in m.graph.initializer]
    artifacts.generate_artifacts(
        m, requires_grad=params, frozen_params=[], loss=DietLoss(),
        optimizer=onnxblock.optim.AdamW(betas=BETAS, eps=EPS, weight_decay=WD),
        artifact_directory=str(outdir))


def ort_run(data, epochs, seed, art):
    import onnxruntime as ort
    from onnxruntime.training.api import CheckpointState, Module, Optimizer
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    ort.set_seed(seed)
    state = CheckpointState.load_checkpoint(str(art / "checkpoint"))
    module = Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"),
                    device="cpu", session_options=so)
    opt = Optimizer(str(art / "optimizer_model.onnx"), module)
    opt.set_learning_rate(LR)
    names = module.input_names()
    assert names == ["ids", "fw", "mask", "tok_w", "oov", "intent_labels", "tag_labels"], names
    module.train()
    ends, losses = [], []
    rng = np.random.default_rng(seed + 1000)
    t0 = time.perf_counter()
    for batches in epochs_of(data.n, epochs + 1, seed):
        data.swap_rare_words(rng)
        total = 0.0
        for idx in batches:
            ids, fw, mask, tok_w, oov, intent, tags = (np.ascontiguousarray(x) for x in data.batch(idx, rng))
            loss = module(ids, fw, mask, tok_w, oov, intent, tags)
            opt.step()
            module.lazy_reset_grad()
            total += float(loss)
        ends.append(time.perf_counter())
        losses.append(total / len(batches))
    return ends[0] - t0, ends[-1] - ends[0], losses


# ----------------------------------------------------------------------------- main

THREADS = 2


def main():
    global THREADS, INIT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="features JSON from `bench_train features`")
    ap.add_argument("--frameworks", default="torch,torch_bag,torch_sparse,ort")
    ap.add_argument("--epochs", type=int, default=20, help="timed epochs (after 1 warm-up epoch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--init", help="diagnostics: start from this refit checkpoint (bench_train features --init)")
    args = ap.parse_args()
    THREADS, INIT = args.threads, args.init

    import torch
    torch.set_num_threads(args.threads)
    import onnxruntime as ort
    ort.set_default_logger_severity(3)

    data = Data(args.data)
    log(f"peers: {args.data}: {data.n} examples, V={data.V}, C={data.C}, K={data.K}; batch {BATCH}, "
        f"lr {LR}, weight decay {WD}, dropout {DROPOUT}, feature dropout {FEATURE_DROPOUT}, "
        f"entity loss weight {ENTITY_WEIGHT}")
    for fw in args.frameworks.split(","):
        runs = []
        extra = {}
        with tempfile.TemporaryDirectory(prefix="refit-bench-ort-") as tmp:
            if fw == "ort":
                t = time.perf_counter()
                ort_artifacts(data, args.seed, Path(tmp))
                extra["generate_artifacts_s"] = time.perf_counter() - t
            for rep in range(args.repeats):
                seed = args.seed + rep
                if fw in ("torch", "torch_bag", "torch_sparse"):
                    warm, secs, loss = torch_run(data, args.epochs, seed, fw != "torch", fw == "torch_sparse")
                elif fw == "ort":
                    warm, secs, loss = ort_run(data, args.epochs, seed, Path(tmp))
                else:
                    sys.exit(f"unknown framework {fw}")
                r = {"rep": rep, "examples_per_sec": data.n * args.epochs / secs, "seconds": secs,
                     "warmup_epoch_seconds": warm, "final_loss": loss[-1], "epoch_losses": loss}
                log(f"{fw} rep{rep}: {r['examples_per_sec']:.0f} examples/s, {secs:.2f} s, "
                    f"final loss {loss[-1]:.4f}")
                runs.append(r)
        out = {"framework": fw, "data": data.meta.get("data"), "examples": data.n,
               "vocab_rows": data.V, "epochs": args.epochs, "warmup_epochs": 1, "threads": args.threads,
               "runs": runs, "median_examples_per_sec": statistics.median(r["examples_per_sec"] for r in runs),
               "versions": {"torch": torch.__version__, "onnxruntime-training": ort.__version__,
                            "numpy": np.__version__, "python": sys.version.split()[0]},
               **extra}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
