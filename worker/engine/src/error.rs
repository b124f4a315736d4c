//! [`EngineError`], the error type at the training engine's boundary, and its [`EngineErrorKind`].

use std::path::PathBuf;

/// What went wrong in the engine. [`EngineError::kind`] says what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No ONNX Runtime library was found on this machine.
    #[error(
        "ONNX Runtime not found: run deploy/onnxruntime.sh and export ORT_DYLIB_PATH=<the path it prints> ({detail})"
    )]
    RuntimeNotFound {
        /// Where refit looked, or why the configured path was rejected.
        detail: String,
    },
    /// A library was found but could not be loaded (wrong file, too old a version, missing symbols).
    #[error(
        "failed to load ONNX Runtime from {}: {source}; run deploy/onnxruntime.sh and export ORT_DYLIB_PATH=<the path it prints>",
        path.display()
    )]
    RuntimeLoad {
        /// The library refit tried to load.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: ort::LoadDynamicError,
    },
    /// The requested execution provider is not available in this build or on this machine.
    #[error("execution provider unavailable: {0}")]
    DeviceUnavailable(String),
    /// Bytes that should hold an ONNX model do not decode as one.
    #[error("invalid ONNX model bytes")]
    ModelDecode(#[from] prost::DecodeError),
    /// A tensor's stored data does not match its declared type or shape.
    #[error("tensor {name:?}: {reason}")]
    TensorData {
        /// The tensor's name.
        name: String,
        /// What does not match.
        reason: String,
    },
    /// A value handed to or read from a session has the wrong name, type or shape.
    #[error("value {name:?}: {reason}")]
    Value {
        /// The input or output name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// ONNX Runtime reported an error while doing `context`.
    #[error("{context}: {source}")]
    Ort {
        /// What refit asked ONNX Runtime to do, e.g. "failed to create session".
        context: &'static str,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// The training data cannot be used (no examples, an unknown label).
    #[error("unusable training data: {0}")]
    Data(String),
    /// A stored model does not fit what it is asked to do (other labels, architecture or
    /// vocabulary than its checkpoint).
    #[error("incompatible model: {0}")]
    Incompatible(String),
    /// A stored model file is damaged.
    #[error("corrupt model file {file}: {reason}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A graph could not be built.
    #[error("failed to build a graph: {0}")]
    Graph(String),
    /// Training stopped producing finite numbers.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// The run was stopped by its observer.
    #[error("training cancelled")]
    Cancelled,
}

/// What kind of failure an [`EngineError`] is, for callers that choose between retrying
/// elsewhere and failing a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineErrorKind {
    /// This machine cannot run the engine (library missing or unloadable, device absent). Another
    /// worker may succeed with the same job.
    Setup,
    /// The model or the values given to it are wrong. Retrying the same job will fail again.
    Invalid,
    /// ONNX Runtime failed while creating or running a session (an op's kernel failing, a graph
    /// ONNX Runtime rejects).
    Runtime,
    /// ONNX Runtime ran out of memory (host or device) or another resource. Another worker, or
    /// this one later, may succeed with the same job.
    Resource,
}

impl EngineError {
    /// The kind of failure; see [`EngineErrorKind`].
    pub fn kind(&self) -> EngineErrorKind {
        match self {
            Self::RuntimeNotFound { .. }
            | Self::RuntimeLoad { .. }
            | Self::DeviceUnavailable(_) => EngineErrorKind::Setup,
            Self::ModelDecode(_)
            | Self::TensorData { .. }
            | Self::Value { .. }
            | Self::Data(_)
            | Self::Incompatible(_)
            | Self::Corrupt { .. }
            | Self::Graph(_)
            | Self::Diverged(_) => EngineErrorKind::Invalid,
            Self::Ort { source, .. } if is_exhaustion(source.message()) => {
                EngineErrorKind::Resource
            }
            Self::Ort { .. } | Self::Cancelled => EngineErrorKind::Runtime,
        }
    }

    /// Wraps an ONNX Runtime error with what refit was doing.
    pub(crate) fn ort<E: Into<ort::Error>>(context: &'static str) -> impl FnOnce(E) -> Self {
        move |source| Self::Ort {
            context,
            source: source.into(),
        }
    }
}

/// Whether an ONNX Runtime message reports memory (host or CUDA) or another resource running
/// out: its allocators' and CUDA's wordings.
fn is_exhaustion(message: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "failed to allocate",
        "bad_alloc",
        "bad allocation",
        "out of memory",
        "alloc_failed",
        "memoryallocation",
        "cannot allocate memory",
        "resource exhausted",
    ];
    let message = message.to_ascii_lowercase();
    SIGNS.iter().any(|sign| message.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ort(message: &str) -> EngineError {
        EngineError::ort("failed to run the training step")(ort::Error::new(message))
    }

    #[test]
    fn running_out_of_memory_is_a_resource_error_other_failures_are_not() {
        for message in [
            "Failed to allocate memory for requested buffer of size 1073741824",
            "std::bad_alloc",
            "CUDA failure 2: out of memory ; GPU=0",
            "CUDNN failure 4: CUDNN_STATUS_ALLOC_FAILED",
            "cudaErrorMemoryAllocation",
        ] {
            assert_eq!(ort(message).kind(), EngineErrorKind::Resource, "{message}");
        }
        for message in [
            "Non-zero status code returned while running ScatterND node",
            "Invalid input name: x",
        ] {
            assert_eq!(ort(message).kind(), EngineErrorKind::Runtime, "{message}");
        }
    }
}
