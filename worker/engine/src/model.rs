//! The "DIET-lite" model as ONNX graphs: the training step (forward, loss, gradients, AdamW) and
//! the inference model.
//!
//! ```text
//! feature ids [B,T,F] ─Gather(embedding)─▶ [B,T,F,D] ×weights ─Σ_F─▶ tokens [B,T,D] ─+b, ReLU, dropout─▶ h
//! h ─mean and max over an example's tokens─▶ sentence [B,D]×2 ─MLP─▶ intent logits [B,C]
//! h' = h, but an unseen word's token is the unseen-word row alone (its n-grams dropped)
//! h' ─flatten, Gather(context window)─▶ [B·T, 2w+1, D] ─MLP─▶ tag logits [B·T, K]   (BILOU tags)
//! loss = intent cross-entropy + tag cross-entropy
//! ```
//!
//! **Row-sparse training.** The embedding is the only large parameter (`V × D`). The step graph
//! never sees it whole: the trainer gathers the rows a batch uses (`emb_rows`, `[U, D]`) with
//! their AdamW moments, the graph updates those rows (lazy AdamW: untouched rows keep their
//! moments and are not decayed), and the trainer scatters them back. So a step costs
//! `O(U·D)` for the embedding, not `O(V·D)`, and the vocabulary can grow freely.
//!
//! Dropout masks and one-hot targets are fed as inputs made by the trainer's seeded RNG, so a
//! run is reproducible and its RNG state can be checkpointed.

use super::autodiff::{AutodiffError, gradients};
use super::graph::{DType, Dim, Graph, TensorData, Value};

/// Sizes that fix the graphs' shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Embedding width `D`.
    pub embed: i64,
    /// Hidden width `H` of both heads.
    pub hidden: i64,
    /// Number of intents `C`.
    pub intents: i64,
    /// Number of entity tags `K`.
    pub tags: i64,
    /// Context window `w`: the tagger sees `2w + 1` tokens.
    pub window: i64,
}

impl Dims {
    /// Tokens the tagger sees per position.
    pub fn context(&self) -> i64 {
        2 * self.window + 1
    }
}

/// The dense (non-embedding) parameters, in a fixed order, with their shapes.
pub fn dense_params(d: &Dims) -> Vec<(&'static str, Vec<i64>)> {
    vec![
        ("b_tok", vec![d.embed]),
        ("w_int1", vec![d.embed, d.hidden]),
        ("w_int1_max", vec![d.embed, d.hidden]),
        ("b_int1", vec![d.hidden]),
        ("w_int2", vec![d.hidden, d.intents]),
        ("b_int2", vec![d.intents]),
        ("w_ent1", vec![d.context() * d.embed, d.hidden]),
        ("b_ent1", vec![d.hidden]),
        ("w_ent2", vec![d.hidden, d.tags]),
        ("b_ent2", vec![d.tags]),
    ]
}

/// The name of the embedding parameter.
pub const EMBEDDING: &str = "embedding";

/// AdamW's constants (the learning rate and bias correction come in per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The inputs every forward pass takes besides the parameters and the feature ids. A batch is
/// ragged, not padded: `N` features of `M` tokens of `B` examples, each listed once.
struct Batch {
    /// `[N, 1]` the token each feature belongs to.
    feat_tok: Value,
    /// `[M, 1]` the weight of each of a token's features (1/√ its features).
    tok_scale: Value,
    /// `[M, 1]` pooling weight of each token (1/tokens of its example).
    tok_w: Value,
    /// `[M, 1]` the example each token belongs to.
    tok_ex: Value,
    /// `[M, 2w+1]` the tokens in each token's context window (itself where the window leaves
    /// the example).
    ctx_idx: Value,
    /// `[M, 2w+1, 1]` 1 inside the example, 0 outside.
    ctx_mask: Value,
    /// `[M, 1]` 1 for a token whose word is unseen (its first feature is the unseen-word
    /// feature), else 0.
    tok_oov: Value,
    /// `[1]` the unseen-word feature's row in the embedding (0 without one).
    oov_row: Value,
    /// `[2]` = `[M, D]`, the shape of the token matrix.
    tok_shape: Value,
    /// `[2]` = `[B, D]`, the shape of the sentence matrix.
    sent_shape: Value,
}

fn batch_inputs(g: &mut Graph, dt: DType, d: &Dims) -> Batch {
    let (n, m) = (Dim::sym("features"), Dim::sym("tokens"));
    let one = Dim::Fixed(1);
    Batch {
        feat_tok: g.input("feat_tok", DType::I64, vec![n, one.clone()]),
        tok_scale: g.input("tok_scale", dt, vec![m.clone(), one.clone()]),
        tok_w: g.input("tok_w", dt, vec![m.clone(), one.clone()]),
        tok_ex: g.input("tok_ex", DType::I64, vec![m.clone(), one.clone()]),
        ctx_idx: g.input(
            "ctx_idx",
            DType::I64,
            vec![m.clone(), Dim::Fixed(d.context())],
        ),
        ctx_mask: g.input(
            "ctx_mask",
            dt,
            vec![m.clone(), Dim::Fixed(d.context()), one.clone()],
        ),
        tok_oov: g.input("tok_oov", dt, vec![m, one.clone()]),
        oov_row: g.input("oov_row", DType::I64, vec![one]),
        tok_shape: g.input("tok_shape", DType::I64, vec![Dim::Fixed(2)]),
        sent_shape: g.input("sent_shape", DType::I64, vec![Dim::Fixed(2)]),
    }
}

/// Parameter values inside a graph, by name.
struct Params {
    dense: Vec<(&'static str, Value)>,
}

impl Params {
    fn get(&self, name: &str) -> Value {
        self.dense
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .expect("known parameter")
    }
}

struct Forward {
    intent_logits: Value,
    tag_logits: Value,
}

/// Dropout masks (training only): `[M,D]` for token vectors, `[B,H]` and `[M,H]` for the heads.
struct Dropout {
    tok: Value,
    int: Value,
    ent: Value,
}

fn forward(
    g: &mut Graph,
    d: &Dims,
    embedding: Value,
    feat_idx: Value,
    p: &Params,
    batch: &Batch,
    dropout: Option<&Dropout>,
) -> Forward {
    let dt = g.dtype(embedding);
    let (m, b) = (Dim::sym("tokens"), Dim::sym("batch"));
    let zero = g.scalar(dt, 0.0);

    // Token vectors: each token's feature rows summed (a scatter-add by token), then weighted
    // (every feature of a token has the same weight, so the [M, D] sum is scaled, not the
    // [N, D] rows: a twentieth of the work).
    let e = g.gather(embedding, feat_idx);
    let zeros = g.expand_to(zero, batch.tok_shape, vec![m.clone(), Dim::Fixed(d.embed)]);
    let tok = g.scatter_add_rows(zeros, batch.feat_tok, e);
    let tok = g.mul(tok, batch.tok_scale);
    let tok = g.add(tok, p.get("b_tok"));
    // The tagger's view: an unseen word is the unseen-word feature alone (weight 1), so it is
    // judged by its neighbours, not by n-grams that say little about a new name.
    let oov = g.gather(embedding, batch.oov_row);
    let oov = g.add(oov, p.get("b_tok"));
    let towards_oov = g.sub(oov, tok);
    let towards_oov = g.mul(towards_oov, batch.tok_oov);
    let tok_ent = g.add(tok, towards_oov);
    let mut h = g.relu(tok);
    let mut h_ent = g.relu(tok_ent);
    if let Some(drop) = dropout {
        h = g.mul(h, drop.tok);
        h_ent = g.mul(h_ent, drop.tok);
    }

    // Intent head: the mean of an example's token vectors, then an MLP.
    let pooled = g.mul(h, batch.tok_w);
    let zeros = g.expand_to(zero, batch.sent_shape, vec![b, Dim::Fixed(d.embed)]);
    let sentence = g.scatter_add_rows(zeros, batch.tok_ex, pooled);
    let z = g.matmul(sentence, p.get("w_int1"));
    // ... and their elementwise max (the strongest evidence for each feature), so a single
    // telling word is not averaged away in a long sentence. h ≥ 0, so zeros are a safe start.
    let zeros = g.expand_to(
        zero,
        batch.sent_shape,
        vec![Dim::sym("batch"), Dim::Fixed(d.embed)],
    );
    let strongest = g.scatter_max_rows(zeros, batch.tok_ex, h);
    let z_max = g.matmul(strongest, p.get("w_int1_max"));
    let z = g.add(z, z_max);
    let z = g.add(z, p.get("b_int1"));
    let mut z = g.relu(z);
    if let Some(drop) = dropout {
        z = g.mul(z, drop.int);
    }
    let intent_logits = g.matmul(z, p.get("w_int2"));
    let intent_logits = g.add(intent_logits, p.get("b_int2"));

    // Entity head: each token with its neighbours, then an MLP over BILOU tags.
    let ctx = g.gather(h_ent, batch.ctx_idx);
    let ctx = g.mul(ctx, batch.ctx_mask);
    let ctx = g.reshape(
        ctx,
        &[-1, d.context() * d.embed],
        vec![m, Dim::Fixed(d.context() * d.embed)],
    );
    let y = g.matmul(ctx, p.get("w_ent1"));
    let y = g.add(y, p.get("b_ent1"));
    let mut y = g.relu(y);
    if let Some(drop) = dropout {
        y = g.mul(y, drop.ent);
    }
    let tag_logits = g.matmul(y, p.get("w_ent2"));
    let tag_logits = g.add(tag_logits, p.get("b_ent2"));
    Forward {
        intent_logits,
        tag_logits,
    }
}

/// Builds the training-step graph.
///
/// All trainable values travel as **one flat vector** `params` (`[S]`): the `U` embedding rows
/// the batch uses (`[U, D]`, row-major), then the dense parameters in [`dense_params`] order; its
/// AdamW moments `params_m` and `params_v` alike. One Split cuts it into the parameters, one
/// Concat joins their gradients, and one AdamW updates everything: a few dozen nodes instead of
/// a dozen per parameter, which is where a step's time went (ONNX Runtime's per-node cost, not
/// arithmetic, dominates at these sizes).
///
/// Inputs: `params`, `params_m`, `params_v` (`[S]`); `sizes` (`[1 + dense]`: `U·D`, then each
/// dense parameter's length); `feat_idx` (`[N]`, indices into the
/// batch's embedding rows); the batch inputs of [`infer_graph`]; dropout masks `drop_tok`
/// (`[M,D]`), `drop_int` (`[B,H]`), `drop_ent` (`[M,H]`); targets `intent_target` (`[B,C]`,
/// one-hot already divided by B) and `tag_target` (`[M,K]`, one-hot divided by the batch's
/// token count, times the entity loss weight); scalars `lr_t` (the bias-corrected step size)
/// and `keep` (`1 − learning rate × weight decay`: the decay applies to every parameter, biases
/// included, as PyTorch's AdamW does when given all parameters).
///
/// Outputs: `loss`, `intent_loss`, `tag_loss`, `new_params`, `new_params_m`, `new_params_v`.
pub fn train_graph(d: &Dims, adam: &AdamW) -> Result<Graph, AutodiffError> {
    let dt = DType::F32;
    let mut g = Graph::new();
    let (b, m, n) = (Dim::sym("batch"), Dim::sym("tokens"), Dim::sym("features"));
    let flat = || vec![Dim::sym("params")];
    let params = g.input("params", dt, flat());
    let params_m = g.input("params_m", dt, flat());
    let params_v = g.input("params_v", dt, flat());
    let order = dense_params(d);
    let sizes = g.input(
        "sizes",
        DType::I64,
        vec![Dim::Fixed(1 + order.len() as i64)],
    );
    let feat_idx = g.input("feat_idx", DType::I64, vec![n]);
    let batch = batch_inputs(&mut g, dt, d);
    let dropout = Dropout {
        tok: g.input("drop_tok", dt, vec![m.clone(), Dim::Fixed(d.embed)]),
        int: g.input("drop_int", dt, vec![b.clone(), Dim::Fixed(d.hidden)]),
        ent: g.input("drop_ent", dt, vec![m.clone(), Dim::Fixed(d.hidden)]),
    };
    let intent_target = g.input("intent_target", dt, vec![b, Dim::Fixed(d.intents)]);
    let tag_target = g.input("tag_target", dt, vec![m, Dim::Fixed(d.tags)]);
    let lr_t = g.input("lr_t", dt, vec![]);
    let keep = g.input("keep", dt, vec![]);

    // Cut the flat vector into the parameters.
    let mut piece_shapes = vec![vec![Dim::sym("embedding_values")]];
    piece_shapes.extend(
        order
            .iter()
            .map(|(_, dims)| vec![Dim::Fixed(dims.iter().product())]),
    );
    let pieces = g.split0(params, sizes, piece_shapes);
    let emb = g.reshape(
        pieces[0],
        &[-1, d.embed],
        vec![Dim::sym("rows"), Dim::Fixed(d.embed)],
    );
    let mut dense = Vec::new();
    for ((name, dims), &piece) in order.iter().zip(&pieces[1..]) {
        let shape = dims.iter().map(|&n| Dim::Fixed(n)).collect();
        dense.push((*name, g.reshape(piece, dims, shape)));
    }
    let params_by_name = Params { dense };

    let fwd = forward(
        &mut g,
        d,
        emb,
        feat_idx,
        &params_by_name,
        &batch,
        Some(&dropout),
    );
    let intent_loss = cross_entropy(&mut g, fwd.intent_logits, intent_target);
    let tag_loss = cross_entropy(&mut g, fwd.tag_logits, tag_target);
    let loss = g.add(intent_loss, tag_loss);

    let mut wrt = vec![emb];
    wrt.extend(params_by_name.dense.iter().map(|(_, v)| *v));
    let grads = gradients(&mut g, loss, &wrt)?;
    let mut flat_grads = Vec::with_capacity(grads.len());
    for (i, &grad) in grads.iter().enumerate() {
        let len = match i {
            0 => Dim::sym("embedding_values"),
            _ => Dim::Fixed(order[i - 1].1.iter().product()),
        };
        flat_grads.push(g.reshape(grad, &[-1], vec![len]));
    }
    let grad = g.concat(&flat_grads, 0, flat());

    g.output(loss, "loss");
    g.output(intent_loss, "intent_loss");
    g.output(tag_loss, "tag_loss");
    let (new_p, new_m, new_v) = adamw(&mut g, adam, params, params_m, params_v, grad, lr_t, keep);
    g.output(new_p, "new_params");
    g.output(new_m, "new_params_m");
    g.output(new_v, "new_params_v");
    Ok(g)
}

/// `-Σ target · log_softmax(logits)`: the targets carry the averaging weights.
fn cross_entropy(g: &mut Graph, logits: Value, target: Value) -> Value {
    let logp = g.log_softmax(logits);
    let t = g.mul(logp, target);
    let s = g.sum_all(t);
    g.neg(s)
}

/// One AdamW update of a flat vector as graph nodes (Kingma & Ba's efficient form with the bias
/// correction folded into `lr_t`), with decoupled weight decay `p ← keep·p`.
#[allow(clippy::too_many_arguments)]
fn adamw(
    g: &mut Graph,
    adam: &AdamW,
    p: Value,
    m: Value,
    v: Value,
    grad: Value,
    lr_t: Value,
    keep: Value,
) -> (Value, Value, Value) {
    let m1 = g.scale(m, adam.beta1);
    let g1 = g.scale(grad, 1.0 - adam.beta1);
    let new_m = g.add(m1, g1);
    let v1 = g.scale(v, adam.beta2);
    let gg = g.mul(grad, grad);
    let g2 = g.scale(gg, 1.0 - adam.beta2);
    let new_v = g.add(v1, g2);
    let root = g.sqrt(new_v);
    let eps = g.scalar(g.dtype(p), adam.eps);
    let denom = g.add(root, eps);
    let step = g.div(new_m, denom);
    let step = g.mul(step, lr_t);
    let decayed = g.mul(p, keep);
    let new_p = g.sub(decayed, step);
    (new_p, new_m, new_v)
}

/// Parameter values for building the inference graph.
pub struct ParamData<'a> {
    /// The embedding, `[V, D]` row-major.
    pub embedding: &'a [f32],
    /// Vocabulary size `V` (rows of the embedding).
    pub vocab: i64,
    /// Dense parameters by name, in [`dense_params`] order.
    pub dense: Vec<(&'a str, &'a [f32])>,
}

/// Names of the inference model's outputs.
pub const INTENT_PROBS: &str = "intent_probs";
/// Per-token BILOU tag probabilities, `[M, K]`.
pub const TAG_PROBS: &str = "tag_probs";

/// Builds the inference graph with the parameters as initializers.
///
/// A batch is ragged: `N` features of `M` tokens of `B` examples. Inputs: `feat_ids` (`[N]`
/// vocabulary ids), `feat_tok` (`[N, 1]`, the feature's token), `tok_scale` (`[M, 1]`, 1/√(features
/// of the token)), `tok_w` (`[M, 1]`, 1/(tokens of the example)), `tok_ex` (`[M, 1]`, the
/// token's example), `ctx_idx` (`[M, 2w+1]`, the tokens of each token's context window, itself
/// outside the example), `ctx_mask` (`[M, 2w+1, 1]`, 0 outside the example), `tok_oov` (`[M,
/// 1]`, 1 for a token whose word is unseen), `oov_row` (`[1]`, the unseen-word feature's id, 0
/// without one), `tok_shape` (`[M, D]`) and `sent_shape` (`[B, D]`). Outputs: [`INTENT_PROBS`] (`[B, C]`) and [`TAG_PROBS`]
/// (`[M, K]`).
pub fn infer_graph(d: &Dims, data: &ParamData<'_>) -> Graph {
    let dt = DType::F32;
    let mut g = Graph::new();
    let feat_ids = g.input("feat_ids", DType::I64, vec![Dim::sym("features")]);
    let batch = batch_inputs(&mut g, dt, d);
    let embedding = g.initializer(
        EMBEDDING,
        &[data.vocab, d.embed],
        TensorData::F32(data.embedding.to_vec()),
    );
    let mut dense = Vec::new();
    for ((name, dims), (data_name, values)) in dense_params(d).into_iter().zip(&data.dense) {
        assert_eq!(name, *data_name, "dense parameters out of order");
        dense.push((
            name,
            g.initializer(name, &dims, TensorData::F32(values.to_vec())),
        ));
    }
    let params = Params { dense };
    let fwd = forward(&mut g, d, embedding, feat_ids, &params, &batch, None);
    let probs = g.softmax(fwd.intent_logits);
    g.output(probs, INTENT_PROBS);
    let tags = g.softmax(fwd.tag_logits);
    g.output(tags, TAG_PROBS);
    g
}
