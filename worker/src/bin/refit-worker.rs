//! `refit-worker`: consumes training jobs from RabbitMQ, trains them, stores the versions in S3.
//!
//! A thin main: parse the arguments, set up tracing, load the config, cancel one root token on
//! SIGINT or SIGTERM, and hand over to [`refit_worker::runner::run`]. Exit code 0 after a
//! graceful stop (running jobs checkpointed and handed back) or after `--max-jobs` jobs, 1 on a
//! startup error, 2 on bad arguments or config (`--check-config` checks it and exits).

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

    /// Take N jobs, finish them and exit 0 (for KEDA's ScaledJob: a finished worker exits, so
    /// scaling down never stops a busy one). Only jobs this worker was granted count.
    /// Overrides worker.max_jobs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_jobs: Option<u32>,

    /// Load and check the settings (and read the secret files they name), print a summary
    /// without secrets, and exit: 0 when they are usable, 2 when not. Connects to nothing.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let config = match WorkerConfig::load(args.config.as_deref()) {
        Ok(mut config) => {
            if args.max_jobs.is_some() {
                config.worker.max_jobs = args.max_jobs;
            }
            config
        }
        Err(err) => {
            error!(%err, "cannot start");
            eprintln!("refit-worker: {err}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return match config.check() {
            Ok(summary) => {
                println!("refit-worker: config ok: {summary}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("refit-worker: {err}");
                ExitCode::from(2)
            }
        };
    }
    telemetry::run_service(
        "refit-worker",
        "shutting down: no new jobs; running jobs checkpoint and go back to the queue",
        |shutdown| refit_worker::runner::run(config, shutdown),
    )
}
