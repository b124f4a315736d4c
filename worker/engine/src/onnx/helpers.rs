//! Constructors for the messages of [`super::proto`] with the conventions refit writes by:
//! tensors as little-endian `raw_data`, attributes with their `type` set, models against
//! [`IR_VERSION`] and [`OPSET_VERSION`].

use super::proto::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto::Dimension, tensor_shape_proto::dimension, type_proto,
};
use super::{IR_VERSION, OPSET_VERSION, PRODUCER_NAME};
use crate::EngineError;
use prost::Message as _;

impl ModelProto {
    /// A model around `graph`, written against [`IR_VERSION`] and the default ONNX domain at
    /// [`OPSET_VERSION`], with refit as the producer.
    pub fn new(graph: GraphProto) -> Self {
        Self {
            ir_version: IR_VERSION,
            producer_name: PRODUCER_NAME.to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            graph: Some(graph),
            opset_import: vec![opset("", OPSET_VERSION)],
            ..Self::default()
        }
    }

    /// The model's protobuf encoding: the bytes of a `.onnx` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes a model from the bytes of a `.onnx` file. Fields refit does not declare are skipped.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EngineError> {
        Ok(Self::decode(bytes)?)
    }

    /// Adds (or replaces) a `metadata_props` entry.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self
            .metadata_props
            .iter_mut()
            .find(|entry| entry.key == key)
        {
            Some(entry) => entry.value = value,
            None => self
                .metadata_props
                .push(StringStringEntryProto { key, value }),
        }
    }

    /// The value of a `metadata_props` entry.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata_props
            .iter()
            .find(|entry| entry.key == key)
            .map(|entry| entry.value.as_str())
    }
}

/// An operator set import: `domain` ("" for the default ONNX operators) at `version`.
pub fn opset(domain: impl Into<String>, version: i64) -> OperatorSetIdProto {
    OperatorSetIdProto {
        domain: domain.into(),
        version,
    }
}

/// A node of the default ONNX domain: `outputs = op_type(inputs; attributes)`, unnamed.
pub fn node(
    op_type: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|name| (*name).to_owned()).collect(),
        output: outputs.iter().map(|name| (*name).to_owned()).collect(),
        op_type: op_type.to_owned(),
        attribute: attributes,
        ..NodeProto::default()
    }
}

/// One axis of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size, e.g. "batch": any size at run time, the same for every axis of that name.
    Param(String),
}

impl From<i64> for Dim {
    fn from(size: i64) -> Self {
        Dim::Fixed(size)
    }
}

impl From<&str> for Dim {
    fn from(name: &str) -> Self {
        Dim::Param(name.to_owned())
    }
}

/// A graph input or output: a dense tensor of `elem_type` with the shape `dims` (empty for a
/// scalar).
pub fn value_info(name: impl Into<String>, elem_type: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(size) => dimension::Value::DimValue(*size),
                Dim::Param(name) => dimension::Value::DimParam(name.clone()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem_type as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// Number of elements of a tensor of shape `dims`; `None` for a negative dimension or overflow.
fn element_count(dims: &[i64]) -> Option<usize> {
    let mut count = 1usize;
    for &d in dims {
        count = count.checked_mul(usize::try_from(d).ok()?)?;
    }
    Some(count)
}

fn raw_tensor(
    name: String,
    dims: &[i64],
    data_type: DataType,
    len: usize,
    raw: Vec<u8>,
) -> TensorProto {
    assert_eq!(
        element_count(dims),
        Some(len),
        "tensor {name:?}: shape {dims:?} does not hold {len} elements"
    );
    TensorProto {
        dims: dims.to_vec(),
        data_type: data_type as i32,
        name,
        raw_data: raw,
        ..TensorProto::default()
    }
}

/// A FLOAT tensor (an initializer when `name` is set) holding `values` row-major in `raw_data`.
///
/// # Panics
/// When `dims` does not describe exactly `values.len()` elements: a bug in the caller.
pub fn tensor_f32(name: impl Into<String>, dims: &[i64], values: &[f32]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name.into(), dims, DataType::Float, values.len(), raw)
}

/// A DOUBLE tensor holding `values` row-major in `raw_data`.
///
/// # Panics
/// When `dims` does not describe exactly `values.len()` elements.
pub fn tensor_f64(name: impl Into<String>, dims: &[i64], values: &[f64]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name.into(), dims, DataType::Double, values.len(), raw)
}

/// An INT64 tensor holding `values` row-major in `raw_data`.
///
/// # Panics
/// When `dims` does not describe exactly `values.len()` elements.
pub fn tensor_i64(name: impl Into<String>, dims: &[i64], values: &[i64]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name.into(), dims, DataType::Int64, values.len(), raw)
}

/// An INT32 tensor holding `values` row-major in `raw_data`.
///
/// # Panics
/// When `dims` does not describe exactly `values.len()` elements.
pub fn tensor_i32(name: impl Into<String>, dims: &[i64], values: &[i32]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name.into(), dims, DataType::Int32, values.len(), raw)
}

/// A BOOL tensor holding `values` row-major in `raw_data` (one byte each).
///
/// # Panics
/// When `dims` does not describe exactly `values.len()` elements.
pub fn tensor_bool(name: impl Into<String>, dims: &[i64], values: &[bool]) -> TensorProto {
    let raw = values.iter().map(|&v| u8::from(v)).collect();
    raw_tensor(name.into(), dims, DataType::Bool, values.len(), raw)
}

impl TensorProto {
    /// The element type, or `None` for a number ONNX does not define.
    pub fn elem_type(&self) -> Option<DataType> {
        DataType::try_from(self.data_type).ok()
    }

    /// The elements of a FLOAT tensor, from `raw_data` or `float_data`.
    pub fn to_f32(&self) -> Result<Vec<f32>, EngineError> {
        self.read(DataType::Float, &self.float_data, |b| {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }

    /// The elements of an INT64 tensor, from `raw_data` or `int64_data`.
    pub fn to_i64(&self) -> Result<Vec<i64>, EngineError> {
        self.read(DataType::Int64, &self.int64_data, |b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        })
    }

    /// The elements of an INT32 tensor, from `raw_data` or `int32_data`.
    pub fn to_i32(&self) -> Result<Vec<i32>, EngineError> {
        self.read(DataType::Int32, &self.int32_data, |b| {
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }

    /// Reads `T`s of `want` type: from `raw_data` when it is set, else from `typed`.
    fn read<T: Copy>(
        &self,
        want: DataType,
        typed: &[T],
        from_le: impl Fn(&[u8]) -> T,
    ) -> Result<Vec<T>, EngineError> {
        let fail = |reason: String| EngineError::TensorData {
            name: self.name.clone(),
            reason,
        };
        if self.data_type != want as i32 {
            return Err(fail(format!(
                "holds data type {}, not {want:?}",
                self.data_type
            )));
        }
        if self.data_location != 0 {
            return Err(fail("data is stored externally".to_owned()));
        }
        let count = element_count(&self.dims)
            .ok_or_else(|| fail(format!("invalid shape {:?}", self.dims)))?;
        let width = std::mem::size_of::<T>();
        let values: Vec<T> = if self.raw_data.is_empty() {
            typed.to_vec()
        } else {
            if self.raw_data.len() != count * width {
                return Err(fail(format!(
                    "raw_data has {} bytes, shape {:?} needs {}",
                    self.raw_data.len(),
                    self.dims,
                    count * width
                )));
            }
            self.raw_data.chunks_exact(width).map(from_le).collect()
        };
        if values.len() != count {
            return Err(fail(format!(
                "holds {} elements, shape {:?} needs {count}",
                values.len(),
                self.dims
            )));
        }
        Ok(values)
    }
}

fn attribute(name: &str, r#type: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: r#type as i32,
        ..AttributeProto::default()
    }
}

/// An INT attribute.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        i: value,
        ..attribute(name, AttributeType::Int)
    }
}

/// An INTS attribute.
pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: values.to_vec(),
        ..attribute(name, AttributeType::Ints)
    }
}

/// A FLOAT attribute.
pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        f: value,
        ..attribute(name, AttributeType::Float)
    }
}

/// A FLOATS attribute.
pub fn attr_floats(name: &str, values: &[f32]) -> AttributeProto {
    AttributeProto {
        floats: values.to_vec(),
        ..attribute(name, AttributeType::Floats)
    }
}

/// A STRING attribute.
pub fn attr_string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        s: value.as_bytes().to_vec(),
        ..attribute(name, AttributeType::String)
    }
}

/// A STRINGS attribute.
pub fn attr_strings(name: &str, values: &[&str]) -> AttributeProto {
    AttributeProto {
        strings: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        ..attribute(name, AttributeType::Strings)
    }
}

/// A TENSOR attribute (e.g. `Constant`'s `value`). The tensor's own name may stay empty.
pub fn attr_tensor(name: &str, value: TensorProto) -> AttributeProto {
    AttributeProto {
        t: Some(value),
        ..attribute(name, AttributeType::Tensor)
    }
}

/// A GRAPH attribute (e.g. `If`'s `then_branch`).
pub fn attr_graph(name: &str, value: GraphProto) -> AttributeProto {
    AttributeProto {
        g: Some(value),
        ..attribute(name, AttributeType::Graph)
    }
}
