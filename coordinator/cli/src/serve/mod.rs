//! `refit serve`: answers Rasa's NLU HTTP API (`POST /model/parse`) with stored versions, so a
//! Rasa assistant points `endpoints.yml` at it (DESIGN §7), and follows aliases as they move.
//!
//! ## Layout
//! - `store`: `--store` / S3 flags ([`store::StoreArgs`], shared with `refit pull`) and
//!   `NAME@ALIAS` / `NAME@vN` references ([`store::ModelRef`])
//! - `models`: loaded versions, their predictor pools, hot swaps when an alias moves
//! - `rasa`: the parse answer in Rasa's shape (retrieval intents, synonyms, rankings)
//! - `http`: routes, auth, errors
//! - `metrics`: Prometheus metrics at `/metrics`
//!
//! Start-up loads every `--model` (a model that cannot be loaded is an error, and nothing is
//! served); then it listens, and prints `refit serve: listening on http://ADDR ...` on stderr
//! (with `--listen 127.0.0.1:0`, the port the system chose). SIGTERM or Ctrl-C stops accepting
//! connections, lets requests in flight finish, and exits 0.

mod http;
mod metrics;
mod models;
mod rasa;
pub(crate) mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use refit_engine::runtime;
use refit_io::Secret;
use refit_io::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::exit;
use store::{ModelRef, StoreArgs};

/// How long requests in flight get to finish after SIGTERM.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Arguments of `refit serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # serve what `refit demo` trained (its local store), on Rasa's port 5005
  refit serve --store .refit-local/demo --model demo@v3

  # serve the prod alias from the bucket, following it as it moves; a second model too
  set -a; . .refit-local/garage/credentials.env; set +a   # REFIT_S3_* for the local Garage
  refit serve --model financial@prod --model support@staging --log info,ort=warn

  # with a token, on all interfaces, 4 predictors
  refit serve --model financial@prod --listen 0.0.0.0:5005 --threads 4 --token-file /run/secrets/nlu

  curl -s localhost:5005/model/parse -d '{\"text\": \"send 50 dollars to Bob\"}'
  curl -s localhost:5005/models/support/model/parse -d '{\"text\": \"where is my order\"}'

Point a Rasa assistant at it in endpoints.yml:
  nlu:
    url: \"http://localhost:5005\"
    # token: \"...\"     # with --token-file

Routes: POST /model/parse (the first --model), POST /models/NAME/model/parse, GET /status,
GET /healthz, GET /metrics, GET /. Answers are Rasa's parse format; retrieval intents (faq/ask_x)
are reported as Rasa does: intent `faq` with the summed probability of its faq/* classes, and a
response_selector block with the faq/* class given faq. The header x-refit-model-version names
the version that answered.

Store: --store DIR (a local folder laid out like the bucket), else S3: --s3-config FILE (an [s3]
section, e.g. the worker's config), REFIT_S3_ENDPOINT/REGION/BUCKET and REFIT_S3_ACCESS_KEY_ID +
REFIT_S3_SECRET_ACCESS_KEY (or REFIT_S3_SECRET_ACCESS_KEY_FILE) from the environment, then the
--s3-* flags; without keys, the AWS default credential chain.")]
pub struct ServeArgs {
    /// A model to serve: NAME@ALIAS (followed as the alias moves) or NAME@vN (fixed). Repeat
    /// for more models; the first answers /model/parse, the others
    /// /models/NAME/model/parse.
    #[arg(long = "model", value_name = "NAME@ALIAS|NAME@vN", required = true)]
    models: Vec<ModelRef>,

    #[command(flatten)]
    store: StoreArgs,

    /// The address to listen on (Rasa's port is 5005; port 0 lets the system choose).
    #[arg(long, default_value = "127.0.0.1:5005", value_name = "ADDR")]
    listen: SocketAddr,

    /// Predictors (ONNX Runtime sessions, one thread each) per model: how many texts are
    /// parsed at once [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,

    /// Seconds between checks of where each alias points.
    #[arg(long, default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    poll_secs: u64,

    /// A file holding the token requests must carry (`?token=...` as Rasa sends it, or
    /// `Authorization: Bearer ...`). Without it, no token is needed.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

pub(super) fn run(args: ServeArgs) -> Result<ExitCode> {
    let mut seen = std::collections::BTreeSet::new();
    for reference in &args.models {
        if !seen.insert(reference.to_string()) {
            bail!("--model {reference} is given twice");
        }
    }
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --token-file {}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                bail!("--token-file {} is empty", path.display());
            }
            Some(Secret::new(token))
        }
        None => None,
    };
    // Fail on a missing ONNX Runtime before anything is downloaded.
    runtime::init()?;
    let (store, store_name) = args.store.open()?;
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let stop = CancellationToken::new();
    tokio.spawn(cancel_on_signal(stop.clone()));
    let result = tokio.block_on(serve(
        args,
        Registry::new(store),
        store_name,
        threads,
        token,
        stop,
    ));
    // Parses still running on blocking threads past the deadline must not keep the process up.
    tokio.shutdown_timeout(Duration::from_secs(1));
    result.map(|()| ExitCode::from(exit::OK))
}

async fn serve(
    args: ServeArgs,
    registry: Registry,
    store_name: String,
    threads: usize,
    token: Option<Secret>,
    stop: CancellationToken,
) -> Result<()> {
    let metrics = Arc::new(metrics::ServeMetrics::new());
    let loader = models::Loader {
        registry,
        threads,
        metrics: Arc::clone(&metrics),
    };
    let slots = tokio::select! {
        slots = loader.load_all(&args.models) => slots?,
        () = stop.cancelled() => return Ok(()),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let local = listener.local_addr()?;
    let served: Vec<String> = slots
        .iter()
        .map(|s| format!("{} = {}", s.reference, s.current().version))
        .collect();
    info!(%local, store = %store_name, threads, "serving");
    eprintln!(
        "refit serve: listening on http://{local} (Rasa NLU API); from {store_name}: {}; \
         {threads} predictor(s) per model{}",
        served.join(", "),
        if token.is_some() {
            "; token required"
        } else {
            ""
        }
    );

    let follower = tokio::spawn(models::follow(
        loader,
        slots.clone(),
        Duration::from_secs(args.poll_secs),
        stop.clone(),
    ));
    let app = http::router(http::AppState::new(slots, token, metrics));
    let drained = stop.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        drained.cancelled().await;
    });
    let server = tokio::spawn(async move { server.await });
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => {
            result.context("the HTTP server task failed")?.context("the HTTP server failed")?;
        }
        () = stop.cancelled() => {
            eprintln!("refit serve: shutting down: no new connections; requests in flight finish");
            match tokio::time::timeout(DRAIN_DEADLINE, &mut server).await {
                Ok(result) => {
                    result.context("the HTTP server task failed")?.context("the HTTP server failed")?;
                }
                Err(_) => eprintln!(
                    "refit serve: requests still running after {DRAIN_DEADLINE:?}; stopping anyway"
                ),
            }
        }
    }
    stop.cancel();
    let _ = follower.await;
    eprintln!("refit serve: stopped");
    Ok(())
}

/// Cancels `stop` on the first SIGINT or SIGTERM.
async fn cancel_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    stop.cancel();
}
