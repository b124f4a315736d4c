//! The models `refit serve` answers for: each [`Slot`] (one `--model` reference) holds the
//! [`Loaded`] version it serves now, swapped atomically ([`ArcSwap`]) when its alias moves.
//!
//! - **Loading** a version reads its manifest, then `model.onnx`, `vocab.json` and
//!   `synonyms.json`, each checked against the manifest's sha256 by the registry, and builds a
//!   pool of predictors ([`Pool`]). A version without `synonyms.json` (written before refit
//!   stored synonyms) serves with none, and says so once when it loads.
//! - **Requests** take the slot's current `Arc<Loaded>` (a lock-free load) and keep it until
//!   they are answered: a swap never disturbs a request in flight, which finishes on the
//!   version it started on; the old version is dropped with its last request.
//! - **Following aliases** ([`follow`]): every poll interval, each alias is read again; when it
//!   names another version, that version is loaded in the background and swapped in. One that
//!   fails to load is logged and counted, the old version keeps serving, and the next poll
//!   tries again.
//! - **Predictors**: an ONNX Runtime session needs `&mut` to run, so each loaded version has a
//!   pool of `--threads` predictors, each on one intra-op thread. A request waits (async, on a
//!   semaphore) for a free one, then runs, on the async thread for a short text (bounded well
//!   under 0.5 ms: see [`INLINE_MAX_CHARS`]) or on Tokio's blocking threads for a longer one;
//!   no lock is held while a model runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use refit_engine::featurizer::{FeatureLimits, Featurizer};
use refit_engine::onnx::ModelProto;
use refit_engine::predict::{META_ENTITY_TYPES, Predictor};
use refit_engine::runtime::RuntimeOptions;
use refit_engine::tags::TagSet;
use refit_io::registry::Registry;
use refit_proto::data::SynonymFile;
use refit_proto::{Version, keys};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::ServeMetrics;
use super::rasa::{FoundEntity, IntentLayout, ParseResponse};
use super::store::{ModelRef, Target};

/// Texts up to this many characters are parsed on the async worker thread that received them;
/// longer ones on Tokio's blocking threads. A parse is bounded (at most 64 tokens of at most 64
/// features), and a text this short takes well under the 0.5 ms an async thread may block
/// (STYLE §2.5; measured with ONNX Runtime 1.32 on one EPYC core: median 68 µs for
/// financial-demo's test texts, about 370 µs at the 64-token cap, which needs a longer text).
/// Skipping the two thread hand-offs of `spawn_blocking` cut the median HTTP latency from 0.28
/// to 0.23 ms and raised throughput at 16 connections by 40-65% on two CPUs (BENCHMARKS.md,
/// "Serving").
const INLINE_MAX_CHARS: usize = 200;

/// A stored version, loaded and ready to parse.
pub(crate) struct Loaded {
    /// The version.
    pub version: Version,
    /// When it was loaded here.
    pub loaded_at: DateTime<Utc>,
    /// `name@vN`, the `x-refit-model-version` header's value.
    pub label: String,
    /// The model's name (the metrics' `model` label).
    name: String,
    featurizer: Featurizer,
    tags: TagSet,
    layout: IntentLayout,
    synonyms: SynonymFile,
    pool: Pool,
}

/// The predictors of one loaded version: `permits` counts the free ones in `free`.
struct Pool {
    free: Mutex<Vec<Predictor>>,
    permits: Arc<Semaphore>,
}

/// A predictor taken from the pool; it goes back when this drops (even after a panic).
struct Lease<'a> {
    pool: &'a Pool,
    predictor: Option<Predictor>,
}

impl Pool {
    fn new(predictors: Vec<Predictor>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(predictors.len())),
            free: Mutex::new(predictors),
        }
    }

    /// A free predictor. Only call while holding one of `permits`.
    fn take(&self) -> Lease<'_> {
        // The lock guards a Vec push/pop, never a model run, so poisoning leaves it consistent.
        let predictor = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .expect("a permit guarantees a free predictor");
        Lease {
            pool: self,
            predictor: Some(predictor),
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(predictor) = self.predictor.take() {
            self.pool
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(predictor);
        }
    }
}

/// Why a parse failed (the HTTP layer turns it into a 500; the cause is logged).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("the model failed: {0}")]
    Model(#[from] refit_engine::EngineError),
    #[error("the model's output does not fit its classes")]
    Shape,
    #[error("the parse task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Loaded {
    /// Parses `text` on a free predictor (waiting for one without blocking the runtime).
    pub async fn parse(
        self: Arc<Self>,
        text: String,
        metrics: &ServeMetrics,
    ) -> Result<ParseResponse, ParseError> {
        let waited = Instant::now();
        let permit = Arc::clone(&self.pool.permits)
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let model = self.name.clone();
        metrics
            .wait_seconds
            .with_label_values(&[&model])
            .observe(waited.elapsed().as_secs_f64());
        let inference = metrics.inference_seconds.with_label_values(&[&model]);
        if text.chars().count() <= INLINE_MAX_CHARS {
            // Bounded and short: on this thread (see `INLINE_MAX_CHARS`).
            let _permit = permit;
            let started = Instant::now();
            let result = self.parse_blocking(&text);
            inference.observe(started.elapsed().as_secs_f64());
            return result;
        }
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let result = self.parse_blocking(&text);
            inference.observe(started.elapsed().as_secs_f64());
            result
        })
        .await?
    }

    /// Featurize, run, decode: one text on one predictor.
    fn parse_blocking(&self, text: &str) -> Result<ParseResponse, ParseError> {
        let featurized = self.featurizer.featurize(text);
        let raw = {
            let mut lease = self.pool.take();
            let predictor = lease.predictor.as_mut().expect("set until dropped");
            predictor.run(std::slice::from_ref(&featurized))?
        };
        let classes = self.layout.classes();
        let n = featurized.tokens.len();
        let k = self.tags.len();
        let first = raw.offsets.first().copied().unwrap_or(0) * k;
        let (Some(probs), Some(tag_probs)) = (
            raw.intent_probs.get(..classes),
            raw.tag_probs.get(first..first + n * k),
        ) else {
            return Err(ParseError::Shape);
        };
        let tags = self.tags.best_sequence(tag_probs, n);
        let entities: Vec<FoundEntity> = self
            .tags
            .decode(&tags, &featurized.tokens, text)
            .into_iter()
            .map(|e| {
                // Rasa's entity confidence: the lowest of its tokens' tag probabilities.
                let confidence = featurized
                    .tokens
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.start >= e.start && t.end <= e.end)
                    .map(|(i, _)| tag_probs[i * k + tags[i] as usize])
                    .fold(1.0f32, f32::min);
                FoundEntity {
                    entity: e.entity,
                    start: e.start,
                    end: e.end,
                    confidence,
                }
            })
            .collect();
        let spans: Vec<(usize, usize)> =
            featurized.tokens.iter().map(|t| (t.start, t.end)).collect();
        Ok(ParseResponse::new(
            &self.layout,
            &self.synonyms,
            text,
            probs,
            &entities,
            &spans,
        ))
    }
}

/// One `--model` reference and the version it serves now.
pub(crate) struct Slot {
    pub reference: ModelRef,
    current: ArcSwap<Loaded>,
}

impl Slot {
    /// The version serving now; requests keep it until they are answered.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }
}

/// How models are loaded.
#[derive(Clone)]
pub(crate) struct Loader {
    pub registry: Registry,
    /// Predictors per loaded version.
    pub threads: usize,
    pub metrics: Arc<ServeMetrics>,
}

impl Loader {
    /// Resolves and loads each reference, in order; the first failure is the error.
    pub async fn load_all(&self, references: &[ModelRef]) -> Result<Vec<Arc<Slot>>> {
        let mut slots = Vec::new();
        for reference in references {
            let version = self.resolve(reference).await?;
            let loaded = self
                .load(reference, version)
                .await
                .with_context(|| format!("cannot load {reference} ({version})"))?;
            self.published(reference, None, &loaded);
            slots.push(Arc::new(Slot {
                reference: reference.clone(),
                current: ArcSwap::from_pointee(loaded),
            }));
        }
        Ok(slots)
    }

    /// The version a reference names now.
    async fn resolve(&self, reference: &ModelRef) -> Result<Version> {
        match &reference.target {
            Target::Version(v) => Ok(*v),
            Target::Alias(alias) => self
                .registry
                .alias(&reference.model, alias)
                .await
                .with_context(|| format!("cannot read alias {reference}"))?
                .with_context(|| {
                    format!(
                        "{reference}: model {} has no alias {alias} (point it at a version \
                         with `refit alias {} {alias} vN`, or serve NAME@vN)",
                        reference.model, reference.model
                    )
                }),
        }
    }

    /// Downloads and checks a version's files, and builds its predictors.
    async fn load(&self, reference: &ModelRef, version: Version) -> Result<Loaded> {
        let started = Instant::now();
        let manifest = self.registry.manifest(&reference.model, version).await?;
        let model_onnx = self.registry.file(&manifest, keys::MODEL_ONNX).await?;
        let vocab = self.registry.vocabulary(&manifest).await?;
        let synonyms = if manifest.files.contains_key(keys::SYNONYMS) {
            let bytes = self.registry.file(&manifest, keys::SYNONYMS).await?;
            serde_json::from_slice::<SynonymFile>(&bytes)
                .with_context(|| format!("{} is not a synonym file", keys::SYNONYMS))?
        } else {
            info!(
                model = %reference.model, %version,
                "the version has no synonyms.json (stored before refit kept synonyms): entity \
                 values are reported as written"
            );
            SynonymFile::default()
        };
        let threads = self.threads;
        let label = format!("{}@{version}", reference.model);
        let (featurizer, tags, layout, predictors) = tokio::task::spawn_blocking(move || {
            let proto = ModelProto::from_bytes(&model_onnx)?;
            let entity_types: Vec<String> = proto
                .metadata(META_ENTITY_TYPES)
                .and_then(|s| serde_json::from_str(s).ok())
                .context("model.onnx has no entity types in its metadata")?;
            let featurizer = Featurizer::new(vocab, FeatureLimits::default());
            // One intra-op thread per session: the pool, not ONNX Runtime, spreads the load.
            let runtime = RuntimeOptions {
                intra_threads: 1,
                ..RuntimeOptions::default()
            };
            let mut predictors = Vec::with_capacity(threads);
            for _ in 0..threads {
                predictors.push(Predictor::new(&model_onnx, featurizer.clone(), &runtime)?);
            }
            let layout = IntentLayout::new(predictors[0].intents());
            anyhow::Ok((featurizer, TagSet::new(entity_types), layout, predictors))
        })
        .await??;
        if layout.classes() == 0 {
            bail!("model.onnx predicts no intents");
        }
        debug!(model = %label, seconds = started.elapsed().as_secs_f64(), "loaded");
        Ok(Loaded {
            version,
            loaded_at: Utc::now(),
            label,
            name: reference.model.to_string(),
            featurizer,
            tags,
            layout,
            synonyms,
            pool: Pool::new(predictors),
        })
    }

    /// Updates the info and pool metrics for a newly served version.
    fn published(&self, reference: &ModelRef, old: Option<Version>, new: &Loaded) {
        let name = reference.model.as_str();
        let r = reference.to_string();
        if let Some(old) = old {
            let _ = self.metrics.model_info.remove_label_values(&[
                name,
                old.to_string().as_str(),
                r.as_str(),
            ]);
        }
        self.metrics
            .model_info
            .with_label_values(&[name, new.version.to_string().as_str(), r.as_str()])
            .set(1);
        self.metrics
            .predictors
            .with_label_values(&[name])
            .set(self.threads as i64);
    }

    /// Re-reads the slot's alias; loads and swaps in the version it names if that changed.
    async fn check(&self, slot: &Slot, failed: &mut HashMap<String, Version>) {
        let reference = &slot.reference;
        let Target::Alias(alias) = &reference.target else {
            return;
        };
        let key = reference.to_string();
        let version = match self.registry.alias(&reference.model, alias).await {
            Ok(Some(version)) => version,
            Ok(None) => {
                debug!(reference = %key, "the alias is gone: the current version keeps serving");
                return;
            }
            Err(error) => {
                debug!(reference = %key, %error, "cannot read the alias: the current version keeps serving");
                return;
            }
        };
        let current = slot.current();
        if version == current.version {
            failed.remove(&key);
            return;
        }
        match self.load(reference, version).await {
            Ok(loaded) => {
                let old = current.version;
                self.published(reference, Some(old), &loaded);
                slot.current.store(Arc::new(loaded));
                failed.remove(&key);
                self.metrics
                    .swaps
                    .with_label_values(&[reference.model.as_str(), "ok"])
                    .inc();
                info!(reference = %key, from = %old, to = %version, "swapped in the version the alias names");
                eprintln!(
                    "refit serve: {key} moved from {old} to {version}; now serving {version}"
                );
            }
            Err(error) => {
                self.metrics
                    .swaps
                    .with_label_values(&[reference.model.as_str(), "failed"])
                    .inc();
                // Once per version, not once per poll.
                if failed.insert(key.clone(), version) != Some(version) {
                    warn!(
                        reference = %key, %version, serving = %current.version,
                        error = %format!("{error:#}"),
                        "cannot load the version the alias names; the current version keeps \
                         serving, retrying every poll"
                    );
                }
            }
        }
    }
}

/// Re-reads every alias every `interval` until `stop`, swapping in new versions.
pub(crate) async fn follow(
    loader: Loader,
    slots: Vec<Arc<Slot>>,
    interval: Duration,
    stop: CancellationToken,
) {
    if !slots
        .iter()
        .any(|s| matches!(s.reference.target, Target::Alias(_)))
    {
        return;
    }
    let mut failed = HashMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the models were just loaded.
    ticker.tick().await;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for slot in &slots {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = loader.check(slot, &mut failed) => {}
            }
        }
    }
}
