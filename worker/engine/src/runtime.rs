//! ONNX Runtime, loaded at run time: finding and loading the shared library once per process,
//! creating sessions from model bytes, and [`run_f32`], a small host-tensor run helper.
//!
//! refit uses `ort` with `load-dynamic` and never links or downloads ONNX Runtime at build time
//! (DESIGN §5). [`init`] finds the library, in this order:
//!
//! 1. `ORT_DYLIB_PATH`, when set and non-empty (what `deploy/onnxruntime.sh` prints);
//! 2. `$REFIT_ORT_DIR/onnxruntime-*/libonnxruntime.so`, when `REFIT_ORT_DIR` is set (the script's
//!    own override of its install folder);
//! 3. `.ort/onnxruntime-*/libonnxruntime.so` in the current directory or one of its parents, then
//!    in the executable's directory or one of its parents: where the script installs it, so
//!    `refit demo` and `cargo test` work in a checkout without exporting anything.
//!
//! In a `.ort` folder holding several installs, the highest version wins, and among equal
//! versions the `onnxruntime-gpu-*` one when refit-worker is built with its `cuda` feature (else
//! the CPU one).
//!
//! ONNX Runtime allows one environment per process; [`environment`] holds it for the process's
//! lifetime and every session refit creates uses it. Call [`init`] (or create a session) before
//! any other `ort` API: `ort` on its own would load whatever `ORT_DYLIB_PATH` or the system's
//! library search path gives, and panic when that fails.

use std::{
    env,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock, PoisonError},
};

use ort::{
    environment::Environment,
    session::{
        OutputSelector, RunOptions, Session, SessionInputValue,
        builder::{GraphOptimizationLevel, SessionBuilder},
    },
    value::TensorRef,
};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::EngineError;

/// The environment variable naming the ONNX Runtime shared library (the same one `ort` reads).
pub const ORT_DYLIB_PATH_VAR: &str = "ORT_DYLIB_PATH";

/// The environment variable `deploy/onnxruntime.sh` installs into instead of `<repo>/.ort`.
pub const ORT_DIR_VAR: &str = "REFIT_ORT_DIR";

struct Loaded {
    environment: Environment,
    library: PathBuf,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
/// Serialises first-time loading, so two threads never both try to create the environment (ONNX
/// Runtime allows one per process). `OnceLock::get_or_try_init` would do, but is unstable.
static LOADING: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime and creates the process's environment, once; later calls return at once.
/// A failed attempt is not remembered: the next call tries again.
pub fn init() -> Result<(), EngineError> {
    loaded().map(|_| ())
}

/// The process's ONNX Runtime environment, loading the library first if needed (see [`init`]).
pub fn environment() -> Result<&'static Environment, EngineError> {
    loaded().map(|loaded| &loaded.environment)
}

/// The library [`init`] loaded, once it has.
pub fn library_path() -> Option<&'static Path> {
    LOADED.get().map(|loaded| loaded.library.as_path())
}

fn loaded() -> Result<&'static Loaded, EngineError> {
    if let Some(loaded) = LOADED.get() {
        return Ok(loaded);
    }
    // The guard protects no data, so a panic while it was held leaves nothing inconsistent.
    let _guard = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(loaded) = LOADED.get() {
        return Ok(loaded);
    }
    let library = find_library()?;
    let environment = ort::init_from(&library)
        .map_err(|source| EngineError::RuntimeLoad {
            path: library.clone(),
            source,
        })?
        .with_name("refit")
        .with_telemetry(false)
        .build()
        .map_err(EngineError::ort(
            "failed to create the ONNX Runtime environment",
        ))?;
    info!(library = %library.display(), "loaded onnx runtime");
    Ok(LOADED.get_or_init(|| Loaded {
        environment,
        library,
    }))
}

/// Finds the ONNX Runtime shared library as described in the [module docs](self), without
/// loading it.
pub fn find_library() -> Result<PathBuf, EngineError> {
    if let Some(value) = env::var_os(ORT_DYLIB_PATH_VAR).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if path.is_file() {
            return Ok(path);
        }
        return Err(EngineError::RuntimeNotFound {
            detail: format!("{ORT_DYLIB_PATH_VAR}={} is not a file", path.display()),
        });
    }

    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env::var_os(ORT_DIR_VAR).filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(dir));
    }
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = env::current_dir() {
        bases.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Some(exe_dir) = env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        bases.extend(exe_dir.ancestors().map(Path::to_path_buf));
    }
    for base in bases {
        let root = base.join(".ort");
        if !roots.contains(&root) {
            roots.push(root);
        }
    }

    for root in &roots {
        if let Some(path) = best_install(root) {
            return Ok(path);
        }
    }
    Err(EngineError::RuntimeNotFound {
        detail: format!(
            "{ORT_DYLIB_PATH_VAR} is not set and no onnxruntime-*/{} exists under {}",
            library_file_name(),
            roots
                .iter()
                .map(|root| root.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// `libonnxruntime.so` (Linux), `libonnxruntime.dylib` (macOS), `onnxruntime.dll` (Windows).
fn library_file_name() -> String {
    format!(
        "{}onnxruntime{}",
        env::consts::DLL_PREFIX,
        env::consts::DLL_SUFFIX
    )
}

/// The best library among `<root>/onnxruntime-<version>/` and `<root>/onnxruntime-gpu-<version>/`.
fn best_install(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    let file_name = library_file_name();
    let mut best: Option<((Vec<u64>, bool), PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((gpu, version)) = parse_install_dir(name) else {
            continue;
        };
        let library = entry.path().join(&file_name);
        if !library.is_file() {
            continue;
        }
        let rank = (version, gpu == cfg!(feature = "cuda"));
        if best.as_ref().is_none_or(|(best_rank, _)| rank > *best_rank) {
            best = Some((rank, library));
        }
    }
    best.map(|(_, library)| library)
}

/// Parses `onnxruntime-1.32.0` / `onnxruntime-gpu-1.32.0` into (is GPU build, version numbers).
fn parse_install_dir(name: &str) -> Option<(bool, Vec<u64>)> {
    let (gpu, version) = if let Some(version) = name.strip_prefix("onnxruntime-gpu-") {
        (true, version)
    } else {
        (false, name.strip_prefix("onnxruntime-")?)
    };
    let numbers = version
        .split('.')
        .map(|part| part.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some((gpu, numbers))
}

/// Where a session runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on the GPU with this ordinal. Needs refit-worker's `cuda`
    /// feature and the `onnxruntime-gpu` library (`REFIT_ORT_PACKAGE=onnxruntime-gpu
    /// deploy/onnxruntime.sh`); session creation fails rather than falling back to the CPU.
    Cuda(u32),
}

/// How much ONNX Runtime rewrites a graph before running it (ONNX Runtime's
/// `GraphOptimizationLevel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizationLevel {
    /// No rewrites: the graph runs as written.
    Disable,
    /// Constant folding, redundant-node removal, simple fusions.
    Basic,
    /// Basic plus complex fusions (e.g. MatMul + Add into Gemm, GELU).
    Extended,
    /// Everything, including memory-layout rewrites (ONNX Runtime's default).
    #[default]
    All,
}

impl From<OptimizationLevel> for GraphOptimizationLevel {
    fn from(level: OptimizationLevel) -> Self {
        match level {
            OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        }
    }
}

/// How sessions are created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeOptions {
    /// Where sessions run. Default: the CPU.
    pub device: Device,
    /// CPU threads one session (one training run or predictor) may use. Default:
    /// `std::thread::available_parallelism`.
    ///
    /// On the CPU, ONNX Runtime runs refit's graphs on **one** intra-op thread whatever this says:
    /// its `ScatterND` kernel with a reduction — the embedding bag's sums and their gradients —
    /// splits the updates over the threads without synchronising them, so with more than one
    /// thread updates to the same row are lost (measured with ONNX Runtime 1.32: wrong sums, and
    /// a different result on every run). A training run uses a second thread, when this allows
    /// it, to prepare the next batch while ONNX Runtime runs the current step. On CUDA the value
    /// is ONNX Runtime's intra-op thread count (0 lets it choose).
    pub intra_threads: usize,
    /// Graph optimisation level. Default: [`OptimizationLevel::All`].
    pub optimization: OptimizationLevel,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            intra_threads: std::thread::available_parallelism().map_or(1, usize::from),
            optimization: OptimizationLevel::All,
        }
    }
}

impl RuntimeOptions {
    /// ONNX Runtime's intra-op thread count for a session (see [`RuntimeOptions::intra_threads`]).
    pub fn session_threads(&self) -> usize {
        match self.device {
            Device::Cpu => 1,
            Device::Cuda(_) => self.intra_threads,
        }
    }

    /// Whether a training run may prepare batches on a thread of its own.
    pub fn prepare_in_parallel(&self) -> bool {
        self.device == Device::Cpu && self.intra_threads != 1
    }
}

/// Creates a session for the ONNX model `model` (the bytes of a `.onnx` file), loading ONNX
/// Runtime first if needed.
pub fn session_from_bytes(model: &[u8], opts: &RuntimeOptions) -> Result<Session, EngineError> {
    let builder = Session::builder(environment()?)
        .map_err(EngineError::ort("failed to create session options"))?
        .with_optimization_level(opts.optimization.into())
        .map_err(EngineError::ort(
            "failed to set the graph optimization level",
        ))?
        .with_intra_threads(opts.session_threads())
        .map_err(EngineError::ort("failed to set the intra-op thread count"))?;
    // Diagnostics: `REFIT_ORT_PROFILE=PREFIX` writes ONNX Runtime's per-node profile of every
    // session to `PREFIX_<date>.json` when the session ends (see BENCHMARKS.md).
    let builder = match std::env::var_os("REFIT_ORT_PROFILE") {
        Some(prefix) => builder
            .with_profiling(prefix)
            .map_err(EngineError::ort("failed to enable profiling"))?,
        None => builder,
    };
    let mut builder = match opts.device {
        Device::Cpu => builder,
        Device::Cuda(device_id) => with_cuda(builder, device_id)?,
    };
    builder
        .commit_from_memory(model)
        .map_err(EngineError::ort("failed to create session"))
}

#[cfg(feature = "cuda")]
fn with_cuda(builder: SessionBuilder, device_id: u32) -> Result<SessionBuilder, EngineError> {
    let id = i32::try_from(device_id).map_err(|_| {
        EngineError::DeviceUnavailable(format!("CUDA device {device_id} is out of range"))
    })?;
    let cuda = ort::ep::CUDA::default()
        .with_device_id(id)
        .build()
        .error_on_failure();
    builder
        .with_execution_providers([cuda])
        .map_err(|err| EngineError::DeviceUnavailable(format!("CUDA device {device_id}: {err}")))
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(_builder: SessionBuilder, device_id: u32) -> Result<SessionBuilder, EngineError> {
    Err(EngineError::DeviceUnavailable(format!(
        "CUDA device {device_id} requested, but refit-worker was built without its `cuda` feature"
    )))
}

/// A dense row-major tensor in host memory, as handed to [`run_f32`].
#[derive(Clone, Debug, PartialEq)]
pub enum HostTensor {
    /// FLOAT elements.
    F32 { shape: Vec<i64>, data: Vec<f32> },
    /// DOUBLE elements (gradient checks).
    F64 { shape: Vec<i64>, data: Vec<f64> },
    /// INT64 elements.
    I64 { shape: Vec<i64>, data: Vec<i64> },
    /// BOOL elements.
    Bool { shape: Vec<i64>, data: Vec<bool> },
}

impl HostTensor {
    /// A FLOAT tensor.
    pub fn f32(shape: &[i64], data: Vec<f32>) -> Self {
        Self::F32 {
            shape: shape.to_vec(),
            data,
        }
    }

    /// A DOUBLE tensor.
    pub fn f64(shape: &[i64], data: Vec<f64>) -> Self {
        Self::F64 {
            shape: shape.to_vec(),
            data,
        }
    }

    /// An INT64 tensor.
    pub fn i64(shape: &[i64], data: Vec<i64>) -> Self {
        Self::I64 {
            shape: shape.to_vec(),
            data,
        }
    }

    /// A BOOL tensor.
    pub fn bool(shape: &[i64], data: Vec<bool>) -> Self {
        Self::Bool {
            shape: shape.to_vec(),
            data,
        }
    }

    /// A borrowed ONNX Runtime value over this tensor's data (no copy).
    fn view(&self) -> ort::Result<SessionInputValue<'_>> {
        Ok(match self {
            Self::F32 { shape, data } => {
                TensorRef::from_array_view((shape.as_slice(), data.as_slice()))?.into()
            }
            Self::F64 { shape, data } => {
                TensorRef::from_array_view((shape.as_slice(), data.as_slice()))?.into()
            }
            Self::I64 { shape, data } => {
                TensorRef::from_array_view((shape.as_slice(), data.as_slice()))?.into()
            }
            Self::Bool { shape, data } => {
                TensorRef::from_array_view((shape.as_slice(), data.as_slice()))?.into()
            }
        })
    }
}

/// An output of [`run_f32`] / [`run_f64`]: its shape and its elements, row-major.
pub type Output<T> = (Vec<i64>, Vec<T>);

/// A FLOAT output of [`run_f32`].
pub type F32Output = Output<f32>;

/// Runs `session` on named inputs and returns the named FLOAT outputs as `(shape, values)`, in the
/// order of `outputs`. Only the requested outputs are computed (ONNX Runtime prunes the rest).
///
/// It copies the outputs out of ONNX Runtime's buffers.
pub fn run_f32(
    session: &mut Session,
    inputs: &[(&str, HostTensor)],
    outputs: &[&str],
) -> Result<Vec<F32Output>, EngineError> {
    let inputs: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    run_typed(session, &inputs, outputs)
}

/// Runs `session` on borrowed inputs and hands the requested FLOAT outputs' values, in the
/// order of `outputs`, to `visit` while ONNX Runtime still owns them: nothing is copied out
/// unless `visit` copies it (the training loop writes the values straight back into its
/// parameters).
pub fn run_f32_visit(
    session: &mut Session,
    inputs: &[(&str, &HostTensor)],
    outputs: &[&str],
    visit: impl FnOnce(&[&[f32]]),
) -> Result<(), EngineError> {
    run_visit::<f32, _>(session, inputs, outputs, |values| {
        let slices: Vec<&[f32]> = values.iter().map(|(_, data)| *data).collect();
        visit(&slices);
    })
}

/// [`run_f32`] for DOUBLE outputs (the gradient checks run in f64).
pub fn run_f64(
    session: &mut Session,
    inputs: &[(&str, HostTensor)],
    outputs: &[&str],
) -> Result<Vec<Output<f64>>, EngineError> {
    let inputs: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    run_typed(session, &inputs, outputs)
}

fn run_typed<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug>(
    session: &mut Session,
    inputs: &[(&str, &HostTensor)],
    outputs: &[&str],
) -> Result<Vec<Output<T>>, EngineError> {
    run_visit::<T, _>(session, inputs, outputs, |values| {
        values
            .iter()
            .map(|(shape, data)| (shape.to_vec(), data.to_vec()))
            .collect()
    })
}

/// Runs the session and hands the requested outputs, as `(shape, values)` of element type `T`
/// borrowed from ONNX Runtime, to `visit`.
fn run_visit<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug, R>(
    session: &mut Session,
    inputs: &[(&str, &HostTensor)],
    outputs: &[&str],
    visit: impl FnOnce(&[(&[i64], &[T])]) -> R,
) -> Result<R, EngineError> {
    run_with(session, inputs, outputs, |values| {
        let mut typed = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let (shape, data) =
                value
                    .try_extract_tensor::<T>()
                    .map_err(|err| EngineError::Value {
                        name: outputs[i].to_owned(),
                        reason: err.to_string(),
                    })?;
            typed.push((&shape[..], data));
        }
        Ok(visit(&typed))
    })
}

/// Checks the names, runs the session and hands the requested outputs, in order, to `each`.
fn run_with<R>(
    session: &mut Session,
    inputs: &[(&str, &HostTensor)],
    outputs: &[&str],
    each: impl FnOnce(&[&ort::value::DynValue]) -> Result<R, EngineError>,
) -> Result<R, EngineError> {
    for (name, _) in inputs {
        if !session.inputs().iter().any(|input| input.name() == *name) {
            return Err(EngineError::Value {
                name: (*name).to_owned(),
                reason: "is not an input of the model".to_owned(),
            });
        }
    }
    let mut selector = OutputSelector::no_default();
    for name in outputs {
        if !session
            .outputs()
            .iter()
            .any(|output| output.name() == *name)
        {
            return Err(EngineError::Value {
                name: (*name).to_owned(),
                reason: "is not an output of the model".to_owned(),
            });
        }
        selector = selector.with(*name);
    }
    let run_options = RunOptions::new()
        .map_err(EngineError::ort("failed to create run options"))?
        .with_outputs(selector);

    let mut values = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        let value = tensor.view().map_err(|err| EngineError::Value {
            name: (*name).to_owned(),
            reason: err.to_string(),
        })?;
        values.push((*name, value));
    }
    let results = session
        .run_with_options(values, &run_options)
        .map_err(EngineError::ort("failed to run session"))?;

    let mut values = Vec::with_capacity(outputs.len());
    for name in outputs {
        values.push(results.get(*name).ok_or_else(|| EngineError::Value {
            name: (*name).to_owned(),
            reason: "missing from the session's results".to_owned(),
        })?);
    }
    each(&values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_dirs_parse() {
        assert_eq!(
            parse_install_dir("onnxruntime-1.32.0"),
            Some((false, vec![1, 32, 0]))
        );
        assert_eq!(
            parse_install_dir("onnxruntime-gpu-1.32.1"),
            Some((true, vec![1, 32, 1]))
        );
        assert_eq!(parse_install_dir("onnxruntime-1.32.0.partial"), None);
        assert_eq!(parse_install_dir("env"), None);
    }

    #[test]
    fn best_install_prefers_highest_version() {
        let root = tempfile::tempdir().expect("temp dir");
        for dir in [
            "onnxruntime-1.9.0",
            "onnxruntime-1.32.0",
            "onnxruntime-1.40.0.partial",
            "other",
        ] {
            std::fs::create_dir(root.path().join(dir)).expect("mkdir");
            std::fs::write(root.path().join(dir).join(library_file_name()), b"").expect("write");
        }
        // A version folder without the library does not count.
        std::fs::create_dir(root.path().join("onnxruntime-2.0.0")).expect("mkdir");
        assert_eq!(
            best_install(root.path()),
            Some(
                root.path()
                    .join("onnxruntime-1.32.0")
                    .join(library_file_name())
            )
        );
        assert_eq!(best_install(&root.path().join("missing")), None);
    }

    #[test]
    fn cpu_sessions_run_on_one_thread_and_training_prepares_on_another() {
        let cpu = |n| RuntimeOptions {
            intra_threads: n,
            ..RuntimeOptions::default()
        };
        assert_eq!(cpu(4).session_threads(), 1);
        assert!(cpu(2).prepare_in_parallel());
        assert!(!cpu(1).prepare_in_parallel());
        let cuda = RuntimeOptions {
            device: Device::Cuda(0),
            intra_threads: 4,
            ..RuntimeOptions::default()
        };
        assert_eq!(cuda.session_threads(), 4);
        assert!(!cuda.prepare_in_parallel());
    }

    #[test]
    fn options_deserialize_with_defaults() {
        let opts: RuntimeOptions =
            serde_json::from_str(r#"{"device": {"cuda": 1}, "optimization": "basic"}"#)
                .expect("parses");
        assert_eq!(opts.device, Device::Cuda(1));
        assert_eq!(opts.optimization, OptimizationLevel::Basic);
        assert!(opts.intra_threads >= 1);
        let cpu: RuntimeOptions = serde_json::from_str(r#"{"device": "cpu"}"#).expect("parses");
        assert_eq!(cpu.device, Device::Cpu);
        assert!(serde_json::from_str::<RuntimeOptions>(r#"{"threads": 2}"#).is_err());
    }
}
