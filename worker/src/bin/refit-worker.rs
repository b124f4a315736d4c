//! `refit-worker`: consumes training jobs from RabbitMQ, trains them, stores the versions in S3.
//!
//! A thin main: parse the arguments, set up tracing, load the config, cancel one root token on
//! SIGINT or SIGTERM, and hand over to [`refit_worker::runner::run`]. Exit code 0 after a
//! graceful stop (running jobs checkpointed and handed back), 1 on a startup error, 2 on bad
//! arguments or config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use refit_io::telemetry::{self, LogFormat};
use refit_worker::config::WorkerConfig;
use tracing::error;

/// Runs refit training jobs from RabbitMQ.
#[derive(Debug, Parser)]
#[command(
    name = "refit-worker",
    version,
    after_help = "Settings come from built-in defaults, then --config, then REFIT__<SECTION>__<KEY> \
environment variables (e.g. REFIT__S3__SECRET_ACCESS_KEY, REFIT__QUEUE__POOL, \
REFIT__WORKER__DEVICE). See deploy/worker.example.toml and deploy/README.md (\"Worker\")."
)]
struct Args {
    /// TOML config file.
    #[arg(long, value_name = "PATH", env = "REFIT_WORKER_CONFIG")]
    config: Option<PathBuf>,

    /// Log line format (the filter comes from RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let config = match WorkerConfig::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            error!(%err, "cannot start");
            eprintln!("refit-worker: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::run_service(
        "refit-worker",
        "shutting down: no new jobs; running jobs checkpoint and go back to the queue",
        |shutdown| refit_worker::runner::run(config, shutdown),
    )
}
