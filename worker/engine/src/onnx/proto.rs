//! The ONNX protobuf messages refit writes and reads, written by hand from the public `onnx.proto`
//! (ONNX IR version 9 and later; the `onnx-ml.proto` the `onnx` Python package compiles).
//!
//! Only the messages and fields a plain (non-training, non-function, non-sparse) model needs are
//! declared. A decoder skips fields that are not declared here, so reading a model that uses them
//! (e.g. `ModelProto.functions`) drops them silently; writing never produces them.
//!
//! Field numbers, wire types and packing follow `onnx.proto` exactly. `onnx.proto` is proto2:
//! repeated scalars are *unpacked* unless the spec says `[packed = true]` (only `TensorProto`'s
//! typed data fields do), and prost is told so field by field. Struct fields are declared in
//! field-number order because prost encodes in declaration order; with both, the bytes refit
//! writes are the bytes the reference protobuf implementation writes for the same message
//! (`tools/onnx_check.py --canonical` checks this in `worker/engine/tests/onnx_checker.rs`).
//!
//! One difference from proto2 remains: a scalar field equal to its default (0, "", empty) is
//! omitted rather than written, as in proto3. Readers cannot tell the two apart, since ONNX gives no
//! meaning to the presence of a default-valued field.

/// An ONNX model: the graph plus the IR version and operator sets it is written against.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// The ONNX IR version the model follows (see [`super::IR_VERSION`]).
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Tool that wrote the model, e.g. "refit".
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Version of that tool.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Reverse-DNS namespace of the model, e.g. "dev.refit".
    #[prost(string, tag = "4")]
    pub domain: String,
    /// Version of the model itself (an integer, unlike `producer_version`).
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// Human-readable documentation (markdown allowed).
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The computation.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// The operator sets the graph's nodes are resolved against: one entry per domain, the default
    /// ONNX domain being the empty string.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Free-form key/value metadata (ONNX Runtime exposes it as the model's custom metadata).
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// A graph: nodes in topological order, its inputs and outputs, and constant initializers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// The nodes, topologically sorted.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Name of the graph.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors; each is referenced by name from node inputs. From IR version 4 on an
    /// initializer need not also be listed in `input` (and then cannot be overridden at run time).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Human-readable documentation.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    /// The graph's inputs (the values callers feed).
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// The graph's outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Optional type and shape information for intermediate values.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// One operator application: `outputs = op_type(inputs; attributes)`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Names of the input values; an empty string marks an omitted optional input.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Names of the output values; an empty string marks an unused optional output.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Name of the node (optional, but unique when set; used in error messages and profiles).
    #[prost(string, tag = "3")]
    pub name: String,
    /// The operator, e.g. "MatMul".
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// The operator's attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Human-readable documentation.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// Operator set domain of `op_type`; empty for the default ONNX domain.
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// A named attribute of a node. Exactly the field that `type` names carries the value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Attribute name, e.g. "axis".
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value of a `FLOAT` attribute.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// Value of an `INT` attribute.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// Value of a `STRING` attribute (UTF-8 in practice, bytes on the wire).
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// Value of a `TENSOR` attribute.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// Value of a `GRAPH` attribute (the bodies of `If`, `Loop`, `Scan`).
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    /// Value of a `FLOATS` attribute (unpacked, as in `onnx.proto`).
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    /// Value of an `INTS` attribute (unpacked, as in `onnx.proto`).
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// Value of a `STRINGS` attribute.
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    /// Value of a `TENSORS` attribute.
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    /// Value of a `GRAPHS` attribute.
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
    /// Human-readable documentation.
    #[prost(string, tag = "13")]
    pub doc_string: String,
    /// Which value field is set ([`AttributeType`]); required since IR version 2.
    #[prost(enumeration = "AttributeType", tag = "20")]
    pub r#type: i32,
}

/// `AttributeProto.AttributeType`: which value field of an attribute is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    Undefined = 0,
    Float = 1,
    Int = 2,
    String = 3,
    Tensor = 4,
    Graph = 5,
    Floats = 6,
    Ints = 7,
    Strings = 8,
    Tensors = 9,
    Graphs = 10,
    SparseTensor = 11,
    SparseTensors = 12,
    TypeProto = 13,
    TypeProtos = 14,
}

/// A tensor value: an initializer or a tensor attribute.
///
/// The elements live in exactly one place: `raw_data` (little-endian, what refit writes) or the
/// typed field for `data_type` (`float_data` for FLOAT, `int32_data` for INT32/INT16/INT8/UINT8/
/// UINT16/BOOL/FLOAT16/BFLOAT16, `int64_data` for INT64, `double_data` for DOUBLE,
/// `uint64_data` for UINT32/UINT64, `string_data` for STRING).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// The shape; empty for a scalar.
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// Element type ([`DataType`]).
    #[prost(enumeration = "DataType", tag = "2")]
    pub data_type: i32,
    /// FLOAT elements.
    #[prost(float, repeated, packed = "true", tag = "4")]
    pub float_data: Vec<f32>,
    /// INT32 elements, and the small integer, BOOL and 16-bit float types widened to int32.
    #[prost(int32, repeated, packed = "true", tag = "5")]
    pub int32_data: Vec<i32>,
    /// STRING elements.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    /// INT64 elements.
    #[prost(int64, repeated, packed = "true", tag = "7")]
    pub int64_data: Vec<i64>,
    /// Name; an initializer's name is the value name nodes refer to.
    #[prost(string, tag = "8")]
    pub name: String,
    /// The elements as fixed-width little-endian bytes, row-major (not for STRING).
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// DOUBLE elements.
    #[prost(double, repeated, packed = "true", tag = "10")]
    pub double_data: Vec<f64>,
    /// UINT32 and UINT64 elements.
    #[prost(uint64, repeated, packed = "true", tag = "11")]
    pub uint64_data: Vec<u64>,
    /// Human-readable documentation.
    #[prost(string, tag = "12")]
    pub doc_string: String,
    /// Where the data lives when `data_location` is EXTERNAL ("location", "offset", "length").
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// `DEFAULT` (0, data in this message) or `EXTERNAL` (1, see `external_data`).
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `TensorProto.DataType`: element types. The numbers are fixed by the ONNX spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    Undefined = 0,
    Float = 1,
    Uint8 = 2,
    Int8 = 3,
    Uint16 = 4,
    Int16 = 5,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Float16 = 10,
    Double = 11,
    Uint32 = 12,
    Uint64 = 13,
    Complex64 = 14,
    Complex128 = 15,
    Bfloat16 = 16,
}

/// A named value with its type: a graph input, output or annotated intermediate.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// The value's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type (and, for tensors, shape). Required for graph inputs and outputs.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// Human-readable documentation.
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// The type of a value. Only dense tensors are declared here (the `value` oneof's
/// `tensor_type`); sequence, map, optional and sparse types are skipped when read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// The type itself.
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    /// Optional denotation, e.g. "TENSOR", "IMAGE".
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    /// `TypeProto.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// A dense tensor.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }

    /// `TypeProto.Tensor`: element type and (optional) shape of a dense tensor.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// Element type ([`super::DataType`]).
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        /// The shape; absent means rank unknown.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }
}

/// A tensor shape: one [`tensor_shape_proto::Dimension`] per axis (none for a scalar).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// The axes, outermost first.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One axis: a fixed size, a symbolic name (e.g. "batch"), or neither (unknown).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// `dim_value` or `dim_param`.
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        /// Optional denotation, e.g. "DATA_BATCH".
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// Nested types of [`Dimension`].
    pub mod dimension {
        /// `Dimension.value`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// A fixed size.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// A symbolic size; axes with the same name have the same size.
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

/// An operator set a model imports: a domain ("" is the default ONNX domain) and its version.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// The domain; "" (or "ai.onnx") for the default ONNX operators.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// The operator set version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A key/value string pair (metadata, external data locations).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(string, tag = "2")]
    pub value: String,
}
