//! Reverse-mode automatic differentiation over a [`Graph`].
//!
//! [`gradients`] appends to the graph the nodes that compute `d loss / d x` for each requested
//! value `x`. Every supported operator has a rule below that emits ordinary ONNX nodes; each rule
//! is checked against central finite differences in this module's tests.
//!
//! Supported: Add, Sub, Mul, Div, Neg, Relu, Exp, Sqrt, Identity, MatMul (2-D right operand),
//! Transpose (2-D), ReduceSum, Gather (axis 0), ScatterND (row scatter-add), Reshape, Unsqueeze,
//! Expand, LogSoftmax, Softmax (last axis). Integer and shape values carry no gradient.

use std::collections::{BTreeMap, BTreeSet};

use super::graph::{Attr, Dim, Graph, Node, Value};

/// Why gradients cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutodiffError {
    /// The loss is not a float scalar.
    #[error("the loss must be a float scalar, got {0}")]
    LossNotScalar(String),
    /// A node on the path from the parameters to the loss has no gradient rule.
    #[error("no gradient rule for operator {0}")]
    NoRule(String),
    /// A requested value does not influence the loss.
    #[error("{0} does not influence the loss")]
    Unreachable(String),
}

/// Builds `d loss / d x` for every `x` in `wrt`, in order.
pub fn gradients(g: &mut Graph, loss: Value, wrt: &[Value]) -> Result<Vec<Value>, AutodiffError> {
    if !g.dtype(loss).is_float() || !g.shape(loss).is_empty() {
        return Err(AutodiffError::LossNotScalar(format!(
            "{:?} {:?}",
            g.dtype(loss),
            g.shape(loss)
        )));
    }
    let nodes: Vec<Node> = g.nodes().to_vec();

    // Values that depend on a `wrt` value (forward) and that the loss depends on (backward).
    let mut depends: BTreeSet<Value> = wrt.iter().copied().collect();
    for node in &nodes {
        if node.inputs.iter().any(|v| depends.contains(v)) {
            depends.extend(node.outputs.iter().copied());
        }
    }
    let mut needed: BTreeSet<Value> = BTreeSet::from([loss]);
    for node in nodes.iter().rev() {
        if node.outputs.iter().any(|v| needed.contains(v)) {
            needed.extend(node.inputs.iter().copied());
        }
    }
    let on_path = |v: &Value| depends.contains(v) && needed.contains(v);

    let mut grads: BTreeMap<Value, Value> = BTreeMap::new();
    let one = g.scalar(g.dtype(loss), 1.0);
    grads.insert(loss, one);

    for node in nodes.iter().rev() {
        let [y] = node.outputs[..] else { continue };
        let Some(&dy) = grads.get(&y) else { continue };
        let wants: Vec<bool> = node
            .inputs
            .iter()
            .map(|v| on_path(v) && g.dtype(*v).is_float())
            .collect();
        if !wants.iter().any(|&w| w) {
            continue;
        }
        let input_grads = rule(g, node, y, dy, &wants)?;
        for (i, grad) in input_grads.into_iter().enumerate() {
            let (Some(grad), true) = (grad, wants[i]) else {
                continue;
            };
            let x = node.inputs[i];
            let total = match grads.get(&x) {
                Some(&prev) => g.add(prev, grad),
                None => grad,
            };
            grads.insert(x, total);
        }
    }

    wrt.iter()
        .map(|x| {
            grads
                .get(x)
                .copied()
                .ok_or_else(|| AutodiffError::Unreachable(g.name(*x).to_owned()))
        })
        .collect()
}

/// The gradients of a node's inputs, given the gradient `dy` of its output `y`.
fn rule(
    g: &mut Graph,
    node: &Node,
    y: Value,
    dy: Value,
    wants: &[bool],
) -> Result<Vec<Option<Value>>, AutodiffError> {
    let x = &node.inputs;
    let out = match node.op.as_str() {
        "Add" => vec![
            Some(unbroadcast(g, dy, x[0])),
            Some(unbroadcast(g, dy, x[1])),
        ],
        "Sub" => {
            let neg = g.neg(dy);
            vec![
                Some(unbroadcast(g, dy, x[0])),
                Some(unbroadcast(g, neg, x[1])),
            ]
        }
        "Mul" => {
            let da = wants[0].then(|| {
                let t = g.mul(dy, x[1]);
                unbroadcast(g, t, x[0])
            });
            let db = wants[1].then(|| {
                let t = g.mul(dy, x[0]);
                unbroadcast(g, t, x[1])
            });
            vec![da, db]
        }
        "Div" => {
            // y = a / b: da = dy / b, db = -dy * y / b
            let da = wants[0].then(|| {
                let t = g.div(dy, x[1]);
                unbroadcast(g, t, x[0])
            });
            let db = wants[1].then(|| {
                let t = g.mul(dy, y);
                let t = g.div(t, x[1]);
                let t = g.neg(t);
                unbroadcast(g, t, x[1])
            });
            vec![da, db]
        }
        "Neg" => vec![Some(g.neg(dy))],
        "Identity" => vec![Some(dy)],
        // Relu's output is 0 where the input is not positive, so Sign(y) is the 0/1 mask.
        "Relu" => {
            let mask = g.sign(y);
            vec![Some(g.mul(dy, mask))]
        }
        "Exp" => vec![Some(g.mul(dy, y))],
        "Sqrt" => {
            let t = g.div(dy, y);
            vec![Some(g.scale(t, 0.5))]
        }
        "MatMul" => {
            let (a, b) = (x[0], x[1]);
            let da = wants[0].then(|| {
                let bt = g.transpose2(b);
                g.matmul(dy, bt)
            });
            let db = wants[1].then(|| {
                let rank = g.shape(a).len();
                let (a2, dy2) = if rank == 2 {
                    (a, dy)
                } else {
                    let k = g.shape(a)[rank - 1].clone();
                    let n = g.shape(b)[1].clone();
                    let (Dim::Fixed(kk), Dim::Fixed(nn)) = (&k, &n) else {
                        panic!("MatMul gradient needs fixed inner dims")
                    };
                    let a2 = g.reshape(a, &[-1, *kk], vec![Dim::sym("rows"), k.clone()]);
                    let dy2 = g.reshape(dy, &[-1, *nn], vec![Dim::sym("rows"), n.clone()]);
                    (a2, dy2)
                };
                let at = g.transpose2(a2);
                g.matmul(at, dy2)
            });
            vec![da, db]
        }
        "Transpose" => {
            if node.ints("perm") != Some(&[1, 0][..]) {
                return Err(AutodiffError::NoRule("Transpose (other than 2-D)".into()));
            }
            vec![Some(g.transpose2(dy))]
        }
        "ReduceSum" => {
            let keepdims = node.int("keepdims").unwrap_or(1) == 1;
            let dy_keep = if keepdims {
                dy
            } else {
                let axes = constant_ints(g, x[1]);
                unsqueeze(g, dy, &axes)
            };
            vec![Some(g.expand_like(dy_keep, x[0])), None]
        }
        "Gather" => {
            if node.int("axis").unwrap_or(0) != 0 {
                return Err(AutodiffError::NoRule("Gather (axis != 0)".into()));
            }
            let zeros = g.zeros_like(x[0]);
            let idx = g.unsqueeze_last(x[1]);
            vec![Some(g.scatter_add_rows(zeros, idx, dy)), None]
        }
        "ScatterND" if node.attrs.get("reduction") == Some(&Attr::Str("max".into())) => {
            // Row scatter-max: an update row gets the gradient where it is the maximum (ties
            // share it). The data's own gradient is not supported (refit scatters into zeros).
            if wants[0] {
                return Err(AutodiffError::NoRule(
                    "ScatterND max (gradient of data)".into(),
                ));
            }
            let flat = g.reshape(x[1], &[-1], vec![Dim::sym("scattered")]);
            let picked = g.gather(y, flat);
            let mask = g.equal_mask(x[2], picked);
            let routed = g.gather(dy, flat);
            vec![None, None, Some(g.mul(routed, mask))]
        }
        "ScatterND" => {
            if node.attrs.get("reduction") != Some(&Attr::Str("add".into())) {
                return Err(AutodiffError::NoRule(
                    "ScatterND (other than reduction=add or max)".into(),
                ));
            }
            // Row scatter-add (indices [N, 1]): the data passes dy through, each update row
            // receives the gradient of the row it was added to.
            let d_updates = wants[2].then(|| {
                let flat = g.reshape(x[1], &[-1], vec![Dim::sym("scattered")]);
                g.gather(dy, flat)
            });
            vec![Some(dy), None, d_updates]
        }
        "Reshape" | "Unsqueeze" => vec![Some(g.reshape_like(dy, x[0])), None],
        "Expand" => vec![Some(unbroadcast(g, dy, x[0])), None],
        "LogSoftmax" | "Softmax" if node.int("axis") != Some(-1) => {
            return Err(AutodiffError::NoRule(format!("{} (axis != -1)", node.op)));
        }
        "LogSoftmax" => {
            // dx = dy - softmax(x) * sum(dy)
            let last = g.shape(y).len() as i64 - 1;
            let s = g.reduce_sum(dy, &[last], true);
            let p = g.exp(y);
            let t = g.mul(p, s);
            vec![Some(g.sub(dy, t))]
        }
        "Softmax" => {
            // dx = y * (dy - sum(dy * y))
            let last = g.shape(y).len() as i64 - 1;
            let t = g.mul(dy, y);
            let s = g.reduce_sum(t, &[last], true);
            let d = g.sub(dy, s);
            vec![Some(g.mul(y, d))]
        }
        other => return Err(AutodiffError::NoRule(other.to_owned())),
    };
    Ok(out)
}

/// Sums `dy` (shaped like the broadcast result) down to the shape of `target`.
fn unbroadcast(g: &mut Graph, dy: Value, target: Value) -> Value {
    let out = g.shape(dy).clone();
    let want = g.shape(target).clone();
    let lead = out.len().saturating_sub(want.len());
    let mut grad = dy;
    if lead > 0 {
        let axes: Vec<i64> = (0..lead as i64).collect();
        grad = g.reduce_sum(grad, &axes, false);
    }
    let kept: Vec<i64> = want
        .iter()
        .zip(&out[lead..])
        .enumerate()
        .filter(|(_, (w, o))| **w == Dim::Fixed(1) && **o != Dim::Fixed(1))
        .map(|(i, _)| i as i64)
        .collect();
    if !kept.is_empty() {
        grad = g.reduce_sum(grad, &kept, true);
    }
    grad
}

/// Inserts dims of size 1 at `axes` (of the output).
fn unsqueeze(g: &mut Graph, x: Value, axes: &[i64]) -> Value {
    let mut shape = g.shape(x).clone();
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    for &a in &sorted {
        shape.insert(a as usize, Dim::Fixed(1));
    }
    let axes_v = g.ints(&sorted);
    let dtype = g.dtype(x);
    g.node("Unsqueeze", &[x, axes_v], &[], dtype, shape)
}

/// The values of a constant 1-D i64 input (ReduceSum's axes).
fn constant_ints(g: &Graph, v: Value) -> Vec<i64> {
    g.constant_i64(v)
        .expect("ReduceSum's axes are a constant built by the graph builder")
}

#[cfg(test)]
mod tests {
    //! Every rule against central finite differences, in f64 on ONNX Runtime.

    use super::*;
    use crate::graph::{DType, TensorData};
    use crate::rng::Rng;
    use crate::runtime::{HostTensor, RuntimeOptions, run_f64, session_from_bytes};

    struct Input {
        name: &'static str,
        dims: Vec<i64>,
        data: Vec<f64>,
    }

    fn random(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| lo + (hi - lo) * rng.next_f32() as f64)
            .collect()
    }

    fn input(rng: &mut Rng, name: &'static str, dims: &[i64], lo: f64, hi: f64) -> Input {
        let n = dims.iter().product::<i64>() as usize;
        Input {
            name,
            dims: dims.to_vec(),
            data: random(rng, n, lo, hi),
        }
    }

    /// Builds `loss = Σ f(inputs) · R` (R a fixed random tensor, so every output element
    /// matters with its own weight), checks d loss / d input against finite differences.
    fn check(inputs: Vec<Input>, f: impl Fn(&mut Graph, &[Value]) -> Value) {
        let mut rng = Rng::seed(99);
        let mut g = Graph::new();
        let vals: Vec<Value> = inputs
            .iter()
            .map(|i| {
                g.input(
                    i.name,
                    DType::F64,
                    i.dims.iter().map(|&d| Dim::Fixed(d)).collect(),
                )
            })
            .collect();
        let out = f(&mut g, &vals);
        let dims: Vec<i64> = g
            .shape(out)
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Sym(_) => panic!("tests use fixed shapes"),
            })
            .collect();
        let n = dims.iter().product::<i64>() as usize;
        let r = g.constant(&dims, TensorData::F64(random(&mut rng, n, -1.0, 1.0)));
        let weighted = g.mul(out, r);
        let loss = g.sum_all(weighted);
        let grads = gradients(&mut g, loss, &vals).expect("gradients build");
        g.output(loss, "loss");
        let names: Vec<String> = (0..grads.len()).map(|i| format!("grad{i}")).collect();
        for (grad, name) in grads.iter().zip(&names) {
            g.output(*grad, name);
        }
        let bytes = g.to_model("gradcheck").to_bytes();
        let mut session = session_from_bytes(&bytes, &RuntimeOptions::default()).expect("session");

        let feed = |data: &[Vec<f64>]| -> Vec<(&str, HostTensor)> {
            inputs
                .iter()
                .zip(data)
                .map(|(i, d)| (i.name, HostTensor::f64(&i.dims, d.clone())))
                .collect()
        };
        let base: Vec<Vec<f64>> = inputs.iter().map(|i| i.data.clone()).collect();
        let mut wanted = vec!["loss"];
        wanted.extend(names.iter().map(String::as_str));
        let results = run_f64(&mut session, &feed(&base), &wanted).expect("run");
        let eps = 1e-6;
        for (k, inp) in inputs.iter().enumerate() {
            let analytic = &results[k + 1].1;
            assert_eq!(
                analytic.len(),
                inp.data.len(),
                "gradient of {} has the input's size",
                inp.name
            );
            for j in 0..inp.data.len() {
                let mut plus = base.clone();
                plus[k][j] += eps;
                let mut minus = base.clone();
                minus[k][j] -= eps;
                let lp = run_f64(&mut session, &feed(&plus), &["loss"]).unwrap()[0].1[0];
                let lm = run_f64(&mut session, &feed(&minus), &["loss"]).unwrap()[0].1[0];
                let numeric = (lp - lm) / (2.0 * eps);
                let diff = (numeric - analytic[j]).abs();
                assert!(
                    diff <= 1e-6 + 1e-5 * numeric.abs(),
                    "d loss/d {}[{j}]: analytic {} vs numeric {numeric}",
                    inp.name,
                    analytic[j]
                );
            }
        }
    }

    fn rng() -> Rng {
        Rng::seed(7)
    }

    #[test]
    fn add_sub_with_broadcasting() {
        let mut r = rng();
        check(
            vec![
                input(&mut r, "x", &[3, 4], -1.0, 1.0),
                input(&mut r, "y", &[4], -1.0, 1.0),
            ],
            |g, v| g.add(v[0], v[1]),
        );
        check(
            vec![
                input(&mut r, "x", &[3, 4], -1.0, 1.0),
                input(&mut r, "y", &[3, 1], -1.0, 1.0),
            ],
            |g, v| g.sub(v[0], v[1]),
        );
    }

    #[test]
    fn mul_div_with_broadcasting() {
        let mut r = rng();
        check(
            vec![
                input(&mut r, "x", &[2, 3, 4], -1.0, 1.0),
                input(&mut r, "y", &[2, 3, 1], -1.0, 1.0),
            ],
            |g, v| g.mul(v[0], v[1]),
        );
        check(
            vec![
                input(&mut r, "x", &[3, 4], -1.0, 1.0),
                input(&mut r, "y", &[4], 0.5, 2.0),
            ],
            |g, v| g.div(v[0], v[1]),
        );
    }

    #[test]
    fn elementwise_unary_ops() {
        let mut r = rng();
        check(vec![input(&mut r, "x", &[3, 5], -2.0, 2.0)], |g, v| {
            g.neg(v[0])
        });
        check(vec![input(&mut r, "x", &[3, 5], -2.0, 2.0)], |g, v| {
            g.exp(v[0])
        });
        check(vec![input(&mut r, "x", &[3, 5], 0.5, 3.0)], |g, v| {
            g.sqrt(v[0])
        });
        check(vec![input(&mut r, "x", &[3, 5], -2.0, 2.0)], |g, v| {
            g.identity(v[0])
        });
        // Relu: values kept away from the kink, where the derivative is undefined.
        let mut x = input(&mut r, "x", &[4, 5], -2.0, 2.0);
        x.data.iter_mut().for_each(|a| *a += a.signum() * 0.1);
        check(vec![x], |g, v| g.relu(v[0]));
    }

    #[test]
    fn matmul_and_transpose() {
        let mut r = rng();
        check(
            vec![
                input(&mut r, "a", &[3, 4], -1.0, 1.0),
                input(&mut r, "b", &[4, 2], -1.0, 1.0),
            ],
            |g, v| g.matmul(v[0], v[1]),
        );
        check(
            vec![
                input(&mut r, "a", &[2, 3, 4], -1.0, 1.0),
                input(&mut r, "b", &[4, 5], -1.0, 1.0),
            ],
            |g, v| g.matmul(v[0], v[1]),
        );
        check(vec![input(&mut r, "x", &[3, 4], -1.0, 1.0)], |g, v| {
            g.transpose2(v[0])
        });
    }

    #[test]
    fn reductions_reshapes_and_expand() {
        let mut r = rng();
        check(vec![input(&mut r, "x", &[2, 3, 4], -1.0, 1.0)], |g, v| {
            g.reduce_sum(v[0], &[1], false)
        });
        check(vec![input(&mut r, "x", &[2, 3, 4], -1.0, 1.0)], |g, v| {
            g.reduce_sum(v[0], &[0, 2], true)
        });
        check(vec![input(&mut r, "x", &[2, 3, 4], -1.0, 1.0)], |g, v| {
            g.sum_all(v[0])
        });
        check(vec![input(&mut r, "x", &[2, 3, 4], -1.0, 1.0)], |g, v| {
            g.reshape(v[0], &[-1, 4], vec![Dim::Fixed(6), Dim::Fixed(4)])
        });
        check(vec![input(&mut r, "x", &[2, 3], -1.0, 1.0)], |g, v| {
            g.unsqueeze_last(v[0])
        });
        check(
            vec![
                input(&mut r, "x", &[3, 1], -1.0, 1.0),
                input(&mut r, "like", &[3, 4], -1.0, 1.0),
            ],
            |g, v| {
                // Expand's gradient flows to x only; `like` only lends its shape, so its gradient is 0.
                let e = g.expand_like(v[0], v[1]);
                let z = g.scale(v[1], 0.0);
                g.add(e, z)
            },
        );
    }

    #[test]
    fn gather_rows_with_repeated_indices() {
        let mut r = rng();
        let data = input(&mut r, "data", &[5, 3], -1.0, 1.0);
        check(vec![data], |g, v| {
            let idx = g.constant(&[2, 4], TensorData::I64(vec![0, 4, 4, 1, 2, 0, 0, 3]));
            g.gather(v[0], idx)
        });
    }

    #[test]
    fn scatter_add_rows_into_data_and_from_updates() {
        let mut r = rng();
        check(
            vec![
                input(&mut r, "data", &[4, 3], -1.0, 1.0),
                input(&mut r, "updates", &[6, 3], -1.0, 1.0),
            ],
            |g, v| {
                let idx = g.constant(&[6, 1], TensorData::I64(vec![0, 3, 3, 1, 0, 3]));
                g.scatter_add_rows(v[0], idx, v[1])
            },
        );
    }

    #[test]
    fn scatter_max_rows_routes_to_the_maximum() {
        let mut r = rng();
        // Distinct values, so no ties sit on the finite-difference step.
        let mut updates = input(&mut r, "updates", &[5, 3], 0.1, 2.0);
        for (i, u) in updates.data.iter_mut().enumerate() {
            *u += i as f64 * 0.01;
        }
        check(vec![updates], |g, v| {
            let zeros = g.constant(&[2, 3], TensorData::F64(vec![0.0; 6]));
            let idx = g.constant(&[5, 1], TensorData::I64(vec![0, 1, 0, 1, 0]));
            g.scatter_max_rows(zeros, idx, v[0])
        });
    }

    #[test]
    fn softmax_and_log_softmax() {
        let mut r = rng();
        check(vec![input(&mut r, "x", &[3, 5], -2.0, 2.0)], |g, v| {
            g.log_softmax(v[0])
        });
        check(vec![input(&mut r, "x", &[2, 3, 4], -2.0, 2.0)], |g, v| {
            g.softmax(v[0])
        });
    }

    #[test]
    fn shared_inputs_accumulate_gradients() {
        let mut r = rng();
        // x is used three times: x·x + x.
        check(vec![input(&mut r, "x", &[4, 3], -1.0, 1.0)], |g, v| {
            let sq = g.mul(v[0], v[0]);
            g.add(sq, v[0])
        });
    }

    #[test]
    fn unsupported_ops_and_bad_losses_are_errors() {
        let mut g = Graph::new();
        let x = g.input("x", DType::F64, vec![Dim::Fixed(3)]);
        let y = g.node("Tanh", &[x], &[], DType::F64, vec![Dim::Fixed(3)]);
        let loss = g.sum_all(y);
        assert_eq!(
            gradients(&mut g, loss, &[x]),
            Err(AutodiffError::NoRule("Tanh".into()))
        );
        assert!(matches!(
            gradients(&mut g, y, &[x]),
            Err(AutodiffError::LossNotScalar(_))
        ));
        let z = g.input("z", DType::F64, vec![Dim::Fixed(3)]);
        let loss2 = g.sum_all(x);
        assert_eq!(
            gradients(&mut g, loss2, &[z]),
            Err(AutodiffError::Unreachable("z".into()))
        );
    }
}
