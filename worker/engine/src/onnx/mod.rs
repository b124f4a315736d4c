//! ONNX models as data: the `onnx.proto` messages (written by hand from the public spec, encoded
//! with prost, no protoc) and constructors for them. No graph logic lives here: the graph builder
//! and autodiff produce these messages, ONNX Runtime and `onnx.checker` consume their bytes.
//!
//! refit writes every model against ONNX IR version [`IR_VERSION`] (9) and the default ONNX
//! operator set at [`OPSET_VERSION`] (19). Both are understood by ONNX Runtime 1.32 and by the
//! pinned `onnx` Python package of `deploy/python-peers.sh`; opset 19 includes the opset-18
//! change that turned the `axes` of the `Reduce*` ops (other than `ReduceSum`, changed in 13)
//! from an attribute into an input.
//!
//! ```
//! use refit_engine::onnx::{self, DataType, Dim, GraphProto, ModelProto};
//!
//! let graph = GraphProto {
//!     name: "relu".into(),
//!     node: vec![onnx::node("Relu", &["x"], &["y"], vec![])],
//!     input: vec![onnx::value_info("x", DataType::Float, &[Dim::from("batch"), Dim::Fixed(4)])],
//!     output: vec![onnx::value_info("y", DataType::Float, &["batch".into(), 4.into()])],
//!     ..GraphProto::default()
//! };
//! let bytes = ModelProto::new(graph).to_bytes();
//! assert_eq!(ModelProto::from_bytes(&bytes).unwrap().graph.unwrap().name, "relu");
//! ```

mod helpers;
mod proto;

pub use helpers::{
    Dim, attr_float, attr_floats, attr_graph, attr_int, attr_ints, attr_string, attr_strings,
    attr_tensor, node, opset, tensor_bool, tensor_f32, tensor_f64, tensor_i32, tensor_i64,
    value_info,
};
pub use proto::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto, type_proto,
};

/// The ONNX IR version of every model refit writes.
pub const IR_VERSION: i64 = 9;

/// The version of the default ONNX operator set (domain "") refit's graphs use.
pub const OPSET_VERSION: i64 = 19;

/// `ModelProto.producer_name` of the models refit writes.
pub const PRODUCER_NAME: &str = "refit";

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// A model that sets every field the messages declare at least once.
    fn everything_model() -> ModelProto {
        let then_branch = GraphProto {
            name: "then".into(),
            node: vec![node(
                "Constant",
                &[],
                &["t_out"],
                vec![attr_tensor("value", tensor_f32("", &[1], &[1.0]))],
            )],
            output: vec![value_info("t_out", DataType::Float, &[Dim::Fixed(1)])],
            ..GraphProto::default()
        };
        let mut with_attrs = node(
            "Custom",
            &["x", ""],
            &["y"],
            vec![
                attr_int("i", -3),
                attr_ints("ints", &[1, -2, 300_000_000_000]),
                attr_float("f", 0.5),
                attr_floats("floats", &[-1.5, 2.25]),
                attr_string("s", "mode"),
                attr_strings("strings", &["a", "bc"]),
                attr_tensor("t", tensor_i64("", &[2], &[7, -8])),
                attr_graph("g", then_branch.clone()),
            ],
        );
        with_attrs.name = "custom_0".into();
        with_attrs.domain = "dev.refit".into();
        with_attrs.doc_string = "a node".into();
        let mut typed_tensor = TensorProto {
            name: "typed".into(),
            dims: vec![2],
            data_type: DataType::Float as i32,
            float_data: vec![1.0, 2.0],
            doc_string: "typed data".into(),
            ..TensorProto::default()
        };
        typed_tensor.external_data.push(StringStringEntryProto {
            key: "k".into(),
            value: "v".into(),
        });
        let mut extra = AttributeProto {
            tensors: vec![tensor_i32("", &[1], &[5])],
            graphs: vec![then_branch],
            doc_string: "several".into(),
            ..attr_int("multi", 0)
        };
        extra.r#type = AttributeType::Tensors as i32;
        with_attrs.attribute.push(extra);
        let graph = GraphProto {
            name: "everything".into(),
            doc_string: "all fields".into(),
            node: vec![with_attrs],
            initializer: vec![
                tensor_f32(
                    "w",
                    &[2, 3],
                    &[0.0, -1.0, 2.5, f32::MAX, f32::MIN_POSITIVE, -0.0],
                ),
                tensor_bool("mask", &[3], &[true, false, true]),
                typed_tensor,
            ],
            input: vec![value_info(
                "x",
                DataType::Float,
                &["batch".into(), Dim::Fixed(0), Dim::Fixed(3)],
            )],
            output: vec![value_info("y", DataType::Int64, &[])],
            value_info: vec![ValueInfoProto {
                name: "unknown".into(),
                doc_string: "no type".into(),
                ..ValueInfoProto::default()
            }],
        };
        let mut model = ModelProto::new(graph);
        model.domain = "dev.refit".into();
        model.model_version = 42;
        model.doc_string = "doc".into();
        model.opset_import.push(opset("dev.refit", 1));
        model.set_metadata("labels", "[\"greet\"]");
        model
    }

    #[test]
    fn model_round_trips_through_bytes() {
        let model = everything_model();
        let bytes = model.to_bytes();
        let decoded = ModelProto::from_bytes(&bytes).expect("decodes");
        assert_eq!(decoded, model);
        assert_eq!(decoded.to_bytes(), bytes);
        assert_eq!(decoded.metadata("labels"), Some("[\"greet\"]"));
        assert_eq!(decoded.ir_version, IR_VERSION);
        assert_eq!(decoded.opset_import[0], opset("", OPSET_VERSION));
    }

    #[test]
    fn garbage_does_not_decode() {
        let err = ModelProto::from_bytes(&[0x0a, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.kind(), crate::EngineErrorKind::Invalid);
    }

    #[test]
    fn tensors_round_trip_their_values() {
        let values = [0.0, -1.0, 2.5, f32::MAX, f32::MIN_POSITIVE, -0.0];
        let t = tensor_f32("w", &[2, 3], &values);
        assert_eq!(t.raw_data.len(), 24);
        assert_eq!(&t.raw_data[8..12], &2.5f32.to_le_bytes());
        let back = t.to_f32().expect("float tensor");
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.map(f32::to_bits)
        );
        assert_eq!(
            tensor_i64("i", &[2], &[i64::MIN, 9]).to_i64().unwrap(),
            [i64::MIN, 9]
        );
        assert_eq!(tensor_i32("i", &[], &[-4]).to_i32().unwrap(), [-4]);
        assert_eq!(tensor_bool("b", &[2], &[true, false]).raw_data, [1, 0]);
        // Typed fields are read when raw_data is empty.
        let typed = TensorProto {
            dims: vec![2],
            data_type: DataType::Float as i32,
            float_data: vec![3.0, 4.0],
            ..TensorProto::default()
        };
        assert_eq!(typed.to_f32().unwrap(), [3.0, 4.0]);
        assert!(t.to_i64().is_err(), "wrong type is an error");
        let mut short = t.clone();
        short.raw_data.pop();
        assert!(short.to_f32().is_err(), "truncated raw_data is an error");
    }

    #[test]
    #[should_panic(expected = "does not hold 3 elements")]
    fn tensor_with_wrong_shape_panics() {
        tensor_f32("w", &[2, 2], &[1.0, 2.0, 3.0]);
    }

    /// Pins wire details that a round trip through prost alone cannot see: the field numbers and
    /// onnx.proto's (proto2) packing, against bytes worked out by hand from the spec.
    #[test]
    fn wire_format_matches_onnx_proto() {
        // OperatorSetIdProto { domain = 1: "", version = 2: 19 } -> only the version is written.
        assert_eq!(opset("", 19).encode_to_vec(), [0x10, 19]);
        // TensorProto: dims = 1 is unpacked (one key per element); raw_data = 9 is bytes.
        let t = tensor_i64("", &[2, 1], &[5, 6]);
        let mut want = vec![0x08, 2, 0x08, 1, 0x10, 7, 0x4a, 16];
        want.extend(5i64.to_le_bytes());
        want.extend(6i64.to_le_bytes());
        assert_eq!(t.encode_to_vec(), want);
        // float_data = 4 is packed (one length-delimited run).
        let typed = TensorProto {
            data_type: DataType::Float as i32,
            float_data: vec![1.0],
            ..TensorProto::default()
        };
        let mut want = vec![0x10, 1, 0x22, 4];
        want.extend(1.0f32.to_le_bytes());
        assert_eq!(typed.encode_to_vec(), want);
        // AttributeProto: ints = 8 unpacked, type = 20 (two-byte key 0xa0 0x01), INTS = 7.
        assert_eq!(
            attr_ints("p", &[1, 2]).encode_to_vec(),
            [0x0a, 1, b'p', 0x40, 1, 0x40, 2, 0xa0, 0x01, 7]
        );
        // Dimension: dim_value = 1 is written even when 0 (it is a oneof member).
        let vi = value_info("x", DataType::Bool, &[Dim::Fixed(0)]);
        // ValueInfoProto { name = 1, type = 2 { tensor_type = 1 { elem_type = 1: 9,
        //   shape = 2 { dim = 1 { dim_value = 1: 0 } } } } }
        assert_eq!(
            vi.encode_to_vec(),
            [
                0x0a, 1, b'x', 0x12, 10, 0x0a, 8, 0x08, 9, 0x12, 4, 0x0a, 2, 0x08, 0
            ]
        );
    }
}
