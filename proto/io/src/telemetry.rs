//! Tracing setup for every refit service, in one place: an `EnvFilter` from `RUST_LOG` (default
//! [`DEFAULT_FILTER`]) and text or JSON lines on stderr (JSON in `deploy/`).

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str =
    "info,lapin=warn,aws=warn,aws_config=warn,aws_smithy_runtime=warn,ort=warn";

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // Already installed (a test calling it twice) is fine: the first one stays.
    let _ = result;
}

/// Runs a service's main loop: a multi-threaded Tokio runtime, one root token cancelled on the
/// first SIGINT or SIGTERM (logging `on_signal`, what the service does next), then
/// `service(token)`. Returns exit code 0 when it ends with `Ok`, 1 otherwise (the error is logged
/// and printed after `name: `). Both services' mains end with it.
pub fn run_service<F, Fut>(
    name: &str,
    on_signal: &'static str,
    service: F,
) -> std::process::ExitCode
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: failed to start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone(), on_signal));
        service(shutdown).await
    });
    // Blocking threads (training steps) that outlived the service's deadline must not keep the
    // process up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "{name} failed");
            eprintln!("{name}: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM, logging which with `what`.
async fn cancel_on_signal(token: tokio_util::sync::CancellationToken, what: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "{what}");
    token.cancel();
}
