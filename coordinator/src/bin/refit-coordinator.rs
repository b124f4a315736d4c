//! `refit-coordinator`: the HTTP API, job store, publisher, event consumer and scheduler.
//!
//! A thin main: parse the arguments, set up tracing, load the config, cancel one root token on
//! SIGINT or SIGTERM, and hand over to [`refit_coordinator::service::run`]. Exit code 0 after a
//! graceful stop, 1 on a runtime error, 2 on bad arguments or config (`--check-config` checks it
//! and exits).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use refit_coordinator::config::CoordinatorConfig;
use refit_io::telemetry::{self, LogFormat};
use tracing::error;

/// Serves refit's API and dashboard, publishes training jobs and records what workers report.
#[derive(Debug, Parser)]
#[command(
    name = "refit-coordinator",
    version,
    after_help = "Settings come from built-in defaults, then --config, then REFIT__<SECTION>__<KEY> \
environment variables (e.g. REFIT__COORDINATOR__TOKEN, REFIT__S3__SECRET_ACCESS_KEY, \
REFIT__QUEUE__URL). See deploy/coordinator.example.toml and deploy/README.md (\"Coordinator\")."
)]
struct Args {
    /// TOML config file.
    #[arg(long, value_name = "PATH", env = "REFIT_COORDINATOR_CONFIG")]
    config: Option<PathBuf>,

    /// Log line format (the filter comes from RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Load and check the settings (and read the token and secret files they name), print a
    /// summary without secrets, and exit: 0 when they are usable, 2 when not. Connects to
    /// nothing and opens no database.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let config = match CoordinatorConfig::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            error!(%err, "cannot start");
            eprintln!("refit-coordinator: {err}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return match config.check() {
            Ok(summary) => {
                println!("refit-coordinator: config ok: {summary}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("refit-coordinator: {err}");
                ExitCode::from(2)
            }
        };
    }
    telemetry::run_service(
        "refit-coordinator",
        "shutting down: finishing requests and the current publish or event",
        |shutdown| refit_coordinator::service::run(config, shutdown),
    )
}
