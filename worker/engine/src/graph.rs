//! A typed ONNX graph builder.
//!
//! Values carry their element type and shape (fixed or symbolic dims), so the autodiff can undo
//! broadcasts and reshape gradients without running shape inference. Only the operators refit's
//! models use are exposed as methods; each checks its operands and infers its output's shape.
//! [`Graph::to_model`] writes an ONNX `ModelProto`.

use std::collections::{BTreeMap, BTreeSet};

use super::onnx;

/// The ONNX opset the builder targets.
pub const OPSET: i64 = onnx::OPSET_VERSION;

/// Element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float (used by the gradient tests for tight tolerances).
    F64,
    /// 64-bit signed integer (indices, shapes).
    I64,
    /// Boolean.
    Bool,
}

impl DType {
    /// The ONNX element type.
    pub fn onnx_type(self) -> onnx::DataType {
        match self {
            DType::F32 => onnx::DataType::Float,
            DType::I64 => onnx::DataType::Int64,
            DType::Bool => onnx::DataType::Bool,
            DType::F64 => onnx::DataType::Double,
        }
    }

    /// Whether gradients flow through values of this type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A size known when the graph is built.
    Fixed(i64),
    /// A size known only when it runs (e.g. `"batch"`).
    Sym(String),
}

impl Dim {
    /// A symbolic dim.
    pub fn sym(name: &str) -> Self {
        Dim::Sym(name.to_owned())
    }

    fn is_one(&self) -> bool {
        *self == Dim::Fixed(1)
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Self {
        Dim::Fixed(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Self {
        Dim::Sym(s.to_owned())
    }
}

/// A shape.
pub type Shape = Vec<Dim>;

/// Builds a shape from fixed sizes and symbolic names: `shape![Dim::sym("b"), 4]`.
#[macro_export]
macro_rules! shape {
    ($($d:expr),* $(,)?) => { vec![$($crate::graph::Dim::from($d)),*] };
}

/// A handle to a value in a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value(pub(crate) usize);

/// What a value is.
#[derive(Clone, Debug)]
pub struct ValueInfo {
    /// Its name in the ONNX graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Shape,
}

/// A node attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// An integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A float.
    Float(f32),
    /// A string.
    Str(String),
}

/// A node.
#[derive(Clone, Debug)]
pub struct Node {
    /// The ONNX operator.
    pub op: String,
    /// Its inputs.
    pub inputs: Vec<Value>,
    /// Its outputs.
    pub outputs: Vec<Value>,
    /// Its attributes, by name.
    pub attrs: BTreeMap<String, Attr>,
}

impl Node {
    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attrs.get(name) {
            Some(Attr::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// An integer-list attribute.
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attrs.get(name) {
            Some(Attr::Ints(v)) => Some(v),
            _ => None,
        }
    }
}

/// Constant data embedded in the graph.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// f32 values.
    F32(Vec<f32>),
    /// f64 values.
    F64(Vec<f64>),
    /// i64 values.
    I64(Vec<i64>),
}

impl TensorData {
    fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I64(_) => DType::I64,
        }
    }

    fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }
}

/// An ONNX graph under construction.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    values: Vec<ValueInfo>,
    nodes: Vec<Node>,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
    initializers: Vec<(Value, Vec<i64>, TensorData)>,
    names: BTreeMap<String, Value>,
    /// Values named by the builder, not by the caller.
    anonymous: BTreeSet<Value>,
    counter: usize,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a value is.
    pub fn info(&self, v: Value) -> &ValueInfo {
        &self.values[v.0]
    }

    /// A value's shape.
    pub fn shape(&self, v: Value) -> &Shape {
        &self.values[v.0].shape
    }

    /// A value's element type.
    pub fn dtype(&self, v: Value) -> DType {
        self.values[v.0].dtype
    }

    /// A value's name.
    pub fn name(&self, v: Value) -> &str {
        &self.values[v.0].name
    }

    /// The value named `name`, if any.
    pub fn by_name(&self, name: &str) -> Option<Value> {
        self.names.get(name).copied()
    }

    /// The nodes, in topological (insertion) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The data of an i64 constant, if `v` is one.
    pub fn constant_i64(&self, v: Value) -> Option<Vec<i64>> {
        self.initializers
            .iter()
            .find(|(c, _, _)| *c == v)
            .and_then(|(_, _, data)| match data {
                TensorData::I64(x) => Some(x.clone()),
                _ => None,
            })
    }

    /// The graph inputs.
    pub fn inputs(&self) -> &[Value] {
        &self.inputs
    }

    /// The graph outputs.
    pub fn outputs(&self) -> &[Value] {
        &self.outputs
    }

    fn new_value(&mut self, name: Option<&str>, dtype: DType, shape: Shape) -> Value {
        let generated = name.is_none();
        let name = match name {
            Some(n) => n.to_owned(),
            None => {
                self.counter += 1;
                format!("t{}", self.counter)
            }
        };
        assert!(
            !self.names.contains_key(&name),
            "value name {name:?} used twice"
        );
        let v = Value(self.values.len());
        self.names.insert(name.clone(), v);
        if generated {
            self.anonymous.insert(v);
        }
        self.values.push(ValueInfo { name, dtype, shape });
        v
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> Value {
        let v = self.new_value(Some(name), dtype, shape);
        self.inputs.push(v);
        v
    }

    /// Marks a value as a graph output under a new name. A node's unnamed output is renamed in
    /// place; anything else (an input, an initializer, a named or already exported value) gets
    /// an Identity node, which copies it.
    pub fn output(&mut self, v: Value, name: &str) -> Value {
        let produced = self.nodes.iter().any(|n| n.outputs.contains(&v));
        if produced && self.anonymous.contains(&v) && !self.outputs.contains(&v) {
            assert!(
                !self.names.contains_key(name),
                "value name {name:?} used twice"
            );
            self.anonymous.remove(&v);
            let old = std::mem::replace(&mut self.values[v.0].name, name.to_owned());
            self.names.remove(&old);
            self.names.insert(name.to_owned(), v);
            self.outputs.push(v);
            return v;
        }
        let out = self.new_value(Some(name), self.dtype(v), self.shape(v).clone());
        self.push("Identity", &[v], vec![out], BTreeMap::new());
        self.outputs.push(out);
        out
    }

    /// A constant baked into the graph as an initializer.
    pub fn constant(&mut self, dims: &[i64], data: TensorData) -> Value {
        let expected: i64 = dims.iter().product();
        assert_eq!(
            expected as usize,
            data.len(),
            "constant's data does not fit its dims"
        );
        let shape = dims.iter().map(|&d| Dim::Fixed(d)).collect();
        let v = self.new_value(None, data.dtype(), shape);
        self.initializers.push((v, dims.to_vec(), data));
        v
    }

    /// A named initializer (a model parameter in an exported inference graph).
    pub fn initializer(&mut self, name: &str, dims: &[i64], data: TensorData) -> Value {
        let expected: i64 = dims.iter().product();
        assert_eq!(
            expected as usize,
            data.len(),
            "initializer's data does not fit its dims"
        );
        let shape = dims.iter().map(|&d| Dim::Fixed(d)).collect();
        let v = self.new_value(Some(name), data.dtype(), shape);
        self.initializers.push((v, dims.to_vec(), data));
        v
    }

    /// A scalar constant of the given float type.
    pub fn scalar(&mut self, dtype: DType, x: f64) -> Value {
        match dtype {
            DType::F32 => self.constant(&[], TensorData::F32(vec![x as f32])),
            DType::F64 => self.constant(&[], TensorData::F64(vec![x])),
            DType::I64 => self.constant(&[], TensorData::I64(vec![x as i64])),
            DType::Bool => panic!("no bool scalars"),
        }
    }

    /// A 1-D i64 constant.
    pub fn ints(&mut self, values: &[i64]) -> Value {
        self.constant(&[values.len() as i64], TensorData::I64(values.to_vec()))
    }

    fn push(
        &mut self,
        op: &str,
        inputs: &[Value],
        outputs: Vec<Value>,
        attrs: BTreeMap<String, Attr>,
    ) {
        self.nodes.push(Node {
            op: op.to_owned(),
            inputs: inputs.to_vec(),
            outputs,
            attrs,
        });
    }

    /// Adds a node with one output of the given type and shape.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[Value],
        attrs: &[(&str, Attr)],
        dtype: DType,
        shape: Shape,
    ) -> Value {
        let out = self.new_value(None, dtype, shape);
        let attrs = attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.push(op, inputs, vec![out], attrs);
        out
    }

    fn broadcast_shape(&self, a: Value, b: Value) -> Shape {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let rank = sa.len().max(sb.len());
        let mut out = Vec::with_capacity(rank);
        for i in 0..rank {
            let da = (i + sa.len()).checked_sub(rank).map(|j| &sa[j]);
            let db = (i + sb.len()).checked_sub(rank).map(|j| &sb[j]);
            let d = match (da, db) {
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (Some(x), Some(y)) if x.is_one() => y.clone(),
                (Some(x), Some(y)) if y.is_one() || x == y => x.clone(),
                (Some(x), Some(y)) => {
                    // Two different symbolic dims (or a symbol and a size): trust the caller,
                    // ORT checks at run time.
                    if matches!(x, Dim::Sym(_)) {
                        y.clone()
                    } else {
                        x.clone()
                    }
                }
                (None, None) => unreachable!("i < rank"),
            };
            out.push(d);
        }
        out
    }

    fn binary(&mut self, op: &str, a: Value, b: Value) -> Value {
        assert_eq!(self.dtype(a), self.dtype(b), "{op}: operand types differ");
        let shape = self.broadcast_shape(a, b);
        let dtype = self.dtype(a);
        self.node(op, &[a, b], &[], dtype, shape)
    }

    /// `a + b` with broadcasting.
    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.binary("Add", a, b)
    }

    /// `a - b` with broadcasting.
    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.binary("Sub", a, b)
    }

    /// `a * b` with broadcasting.
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.binary("Mul", a, b)
    }

    /// `a / b` with broadcasting.
    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.binary("Div", a, b)
    }

    /// `a * c` for a scalar constant `c`.
    pub fn scale(&mut self, a: Value, c: f64) -> Value {
        let s = self.scalar(self.dtype(a), c);
        self.mul(a, s)
    }

    fn unary(&mut self, op: &str, x: Value) -> Value {
        let (dtype, shape) = (self.dtype(x), self.shape(x).clone());
        self.node(op, &[x], &[], dtype, shape)
    }

    /// `max(x, 0)`.
    pub fn relu(&mut self, x: Value) -> Value {
        self.unary("Relu", x)
    }

    /// `-x`.
    pub fn neg(&mut self, x: Value) -> Value {
        self.unary("Neg", x)
    }

    /// `e^x`.
    pub fn exp(&mut self, x: Value) -> Value {
        self.unary("Exp", x)
    }

    /// `sqrt(x)`.
    pub fn sqrt(&mut self, x: Value) -> Value {
        self.unary("Sqrt", x)
    }

    /// The sign of `x` (-1, 0, 1).
    pub fn sign(&mut self, x: Value) -> Value {
        self.unary("Sign", x)
    }

    /// `x` unchanged (renames it).
    pub fn identity(&mut self, x: Value) -> Value {
        self.unary("Identity", x)
    }

    /// Matrix product of `a` (`[.., M, K]`) and a 2-D `b` (`[K, N]`).
    pub fn matmul(&mut self, a: Value, b: Value) -> Value {
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        assert!(
            sa.len() >= 2 && sb.len() == 2,
            "matmul: expected [.., M, K] x [K, N]"
        );
        assert_eq!(self.dtype(a), self.dtype(b), "matmul: operand types differ");
        let mut shape = sa[..sa.len() - 1].to_vec();
        shape.push(sb[1].clone());
        let dtype = self.dtype(a);
        self.node("MatMul", &[a, b], &[], dtype, shape)
    }

    /// Swaps the two dims of a 2-D value.
    pub fn transpose2(&mut self, x: Value) -> Value {
        let s = self.shape(x).clone();
        assert_eq!(s.len(), 2, "transpose2: expected a 2-D value");
        let dtype = self.dtype(x);
        self.node(
            "Transpose",
            &[x],
            &[("perm", Attr::Ints(vec![1, 0]))],
            dtype,
            vec![s[1].clone(), s[0].clone()],
        )
    }

    /// Sums over `axes` (non-negative).
    pub fn reduce_sum(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Value {
        let s = self.shape(x).clone();
        let mut shape = Vec::new();
        for (i, d) in s.iter().enumerate() {
            if axes.contains(&(i as i64)) {
                if keepdims {
                    shape.push(Dim::Fixed(1));
                }
            } else {
                shape.push(d.clone());
            }
        }
        let axes_v = self.ints(axes);
        let dtype = self.dtype(x);
        self.node(
            "ReduceSum",
            &[x, axes_v],
            &[("keepdims", Attr::Int(keepdims as i64))],
            dtype,
            shape,
        )
    }

    /// Sums everything into a scalar.
    pub fn sum_all(&mut self, x: Value) -> Value {
        let axes: Vec<i64> = (0..self.shape(x).len() as i64).collect();
        self.reduce_sum(x, &axes, false)
    }

    /// Rows of `data` (axis 0) picked by integer `indices`: shape `indices.shape + data.shape[1..]`.
    pub fn gather(&mut self, data: Value, indices: Value) -> Value {
        assert_eq!(
            self.dtype(indices),
            DType::I64,
            "gather: indices must be i64"
        );
        let mut shape = self.shape(indices).clone();
        shape.extend(self.shape(data)[1..].iter().cloned());
        let dtype = self.dtype(data);
        self.node(
            "Gather",
            &[data, indices],
            &[("axis", Attr::Int(0))],
            dtype,
            shape,
        )
    }

    /// Reshapes to `dims` (at most one -1, written in `shape` as the symbolic dim `inferred`).
    pub fn reshape(&mut self, x: Value, dims: &[i64], shape: Shape) -> Value {
        let target = self.ints(dims);
        let dtype = self.dtype(x);
        self.node("Reshape", &[x, target], &[], dtype, shape)
    }

    /// Reshapes `x` to the runtime shape of `like`.
    pub fn reshape_like(&mut self, x: Value, like: Value) -> Value {
        let s = self.shape_of(like);
        let (dtype, shape) = (self.dtype(x), self.shape(like).clone());
        self.node("Reshape", &[x, s], &[], dtype, shape)
    }

    /// The runtime shape of `x`, as a 1-D i64 value.
    pub fn shape_of(&mut self, x: Value) -> Value {
        let rank = self.shape(x).len() as i64;
        self.node("Shape", &[x], &[], DType::I64, vec![Dim::Fixed(rank)])
    }

    /// Broadcasts `x` to the runtime shape of `like`.
    pub fn expand_like(&mut self, x: Value, like: Value) -> Value {
        let s = self.shape_of(like);
        let (dtype, shape) = (self.dtype(x), self.shape(like).clone());
        self.node("Expand", &[x, s], &[], dtype, shape)
    }

    /// Broadcasts `x` to the runtime shape held in the 1-D i64 value `dims` (declared `shape`).
    pub fn expand_to(&mut self, x: Value, dims: Value, shape: Shape) -> Value {
        let dtype = self.dtype(x);
        self.node("Expand", &[x, dims], &[], dtype, shape)
    }

    /// Zeros shaped (at run time) like `like`.
    pub fn zeros_like(&mut self, like: Value) -> Value {
        let z = self.scalar(self.dtype(like), 0.0);
        self.expand_like(z, like)
    }

    /// `log(softmax(x))` over the last axis.
    pub fn log_softmax(&mut self, x: Value) -> Value {
        let (dtype, shape) = (self.dtype(x), self.shape(x).clone());
        self.node("LogSoftmax", &[x], &[("axis", Attr::Int(-1))], dtype, shape)
    }

    /// `softmax(x)` over the last axis.
    pub fn softmax(&mut self, x: Value) -> Value {
        let (dtype, shape) = (self.dtype(x), self.shape(x).clone());
        self.node("Softmax", &[x], &[("axis", Attr::Int(-1))], dtype, shape)
    }

    /// `data` with `updates` added at the rows `indices` (ScatterND with `reduction = "add"`);
    /// `indices` is `[.., 1]` and `updates` is `indices.shape[..-1] + data.shape[1..]`.
    pub fn scatter_add_rows(&mut self, data: Value, indices: Value, updates: Value) -> Value {
        self.scatter_rows(data, indices, updates, "add")
    }

    /// `data` with each row `indices[i]` replaced by the elementwise max of itself and
    /// `updates[i]` (ScatterND with `reduction = "max"`).
    pub fn scatter_max_rows(&mut self, data: Value, indices: Value, updates: Value) -> Value {
        self.scatter_rows(data, indices, updates, "max")
    }

    fn scatter_rows(
        &mut self,
        data: Value,
        indices: Value,
        updates: Value,
        reduction: &str,
    ) -> Value {
        let (dtype, shape) = (self.dtype(data), self.shape(data).clone());
        self.node(
            "ScatterND",
            &[data, indices, updates],
            &[("reduction", Attr::Str(reduction.to_owned()))],
            dtype,
            shape,
        )
    }

    /// `1.0` where `a == b`, else `0.0`, in `a`'s float type (Equal, then Cast).
    pub fn equal_mask(&mut self, a: Value, b: Value) -> Value {
        let shape = self.broadcast_shape(a, b);
        let dtype = self.dtype(a);
        let eq = self.node("Equal", &[a, b], &[], DType::Bool, shape.clone());
        self.node(
            "Cast",
            &[eq],
            &[("to", Attr::Int(dtype.onnx_type() as i64))],
            dtype,
            shape,
        )
    }

    /// Splits `x` along axis 0 into pieces of the lengths in the 1-D i64 `sizes` (Split with
    /// its `split` input), one output per entry of `shapes` (the pieces' shapes).
    pub fn split0(&mut self, x: Value, sizes: Value, shapes: Vec<Shape>) -> Vec<Value> {
        let dtype = self.dtype(x);
        let outs: Vec<Value> = shapes
            .into_iter()
            .map(|shape| self.new_value(None, dtype, shape))
            .collect();
        let attrs = BTreeMap::from([("axis".to_owned(), Attr::Int(0))]);
        self.push("Split", &[x, sizes], outs.clone(), attrs);
        outs
    }

    /// Joins values along `axis` (Concat); `shape` is the result's.
    pub fn concat(&mut self, parts: &[Value], axis: i64, shape: Shape) -> Value {
        let dtype = self.dtype(parts[0]);
        self.node("Concat", parts, &[("axis", Attr::Int(axis))], dtype, shape)
    }

    /// Appends a trailing dim of 1.
    pub fn unsqueeze_last(&mut self, x: Value) -> Value {
        let rank = self.shape(x).len() as i64;
        let axes = self.ints(&[rank]);
        let mut shape = self.shape(x).clone();
        shape.push(Dim::Fixed(1));
        let dtype = self.dtype(x);
        self.node("Unsqueeze", &[x, axes], &[], dtype, shape)
    }

    /// Writes the graph as an ONNX model.
    pub fn to_model(&self, graph_name: &str) -> onnx::ModelProto {
        let value_info = |v: Value| {
            let info = self.info(v);
            let dims: Vec<onnx::Dim> = info
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => onnx::Dim::Fixed(*n),
                    Dim::Sym(s) => onnx::Dim::Param(s.clone()),
                })
                .collect();
            onnx::value_info(info.name.clone(), info.dtype.onnx_type(), &dims)
        };
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| onnx::NodeProto {
                input: n.inputs.iter().map(|&v| self.name(v).to_owned()).collect(),
                output: n.outputs.iter().map(|&v| self.name(v).to_owned()).collect(),
                name: format!("n{i}_{}", n.op),
                op_type: n.op.clone(),
                attribute: n
                    .attrs
                    .iter()
                    .map(|(k, a)| match a {
                        Attr::Int(i) => onnx::attr_int(k, *i),
                        Attr::Ints(v) => onnx::attr_ints(k, v),
                        Attr::Float(f) => onnx::attr_float(k, *f),
                        Attr::Str(s) => onnx::attr_string(k, s),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let initializer = self
            .initializers
            .iter()
            .map(|(v, dims, data)| {
                let name = self.name(*v);
                match data {
                    TensorData::F32(x) => onnx::tensor_f32(name, dims, x),
                    TensorData::F64(x) => onnx::tensor_f64(name, dims, x),
                    TensorData::I64(x) => onnx::tensor_i64(name, dims, x),
                }
            })
            .collect();
        let graph = onnx::GraphProto {
            node: nodes,
            name: graph_name.to_owned(),
            initializer,
            input: self.inputs.iter().map(|&v| value_info(v)).collect(),
            output: self.outputs.iter().map(|&v| value_info(v)).collect(),
            ..Default::default()
        };
        onnx::ModelProto::new(graph)
    }
}
