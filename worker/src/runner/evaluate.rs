//! The `evaluate` phase: the new model scored on the job's eval data, and — on the same data, in
//! the same job — the version it was fine-tuned from and the version the job's `promote_to`
//! alias points at, compared with it (`refit_proto::evaluation::compare`). The result is the
//! version's `evaluation.json`; the coordinator's promotion gate reads it.
//!
//! An older version that cannot be read or scored leaves its comparison out (logged): the job
//! still succeeds, and a gate that needed that comparison refuses the promotion, saying why.

use std::collections::BTreeMap;
use std::sync::Arc;

use refit_engine::featurizer::{FeatureLimits, Featurizer};
use refit_engine::pipeline;
use refit_engine::predict::{Predictor, Scored, score};
use refit_engine::trainer::NluModel;
use refit_proto::data::TrainingData;
use refit_proto::evaluation::{Evaluation, compare};
use refit_proto::{DatasetRef, Manifest, Version, keys};
use tracing::{info, warn};

use super::job::{Job, blocking};
use super::retry::JobError;

impl Job<'_> {
    /// Scores `model` on `eval` (the job's `eval_dataset`) and compares it with its parent
    /// (`base`) and the `promote_to` alias's version. Gives the model back with the evaluation.
    pub(super) async fn evaluate(
        &self,
        model: NluModel,
        eval: TrainingData,
        eval_ref: &DatasetRef,
        base: Option<&Manifest>,
    ) -> Result<(NluModel, Evaluation), JobError> {
        let job = self.job;
        let eval = Arc::new(eval);
        let runtime = self.shared.runtime.clone();
        let data = eval.clone();
        let (model, scored) = blocking(move || {
            let scored = pipeline::evaluate(&model, &data, &runtime);
            (model, scored)
        })
        .await?;
        let scored = scored.map_err(JobError::engine("evaluation failed"))?;
        let mut evaluation =
            scored.into_evaluation(job.model.clone(), job.output_version, eval_ref.clone());

        for (version, roles) in self.older_versions(base).await {
            let older = match self.score_stored(version, &eval).await {
                Ok(scored) => scored.into_evaluation(job.model.clone(), version, eval_ref.clone()),
                Err(error) => {
                    warn!(%version, %error, "cannot evaluate an older version; no comparison with it");
                    continue;
                }
            };
            match compare(&evaluation, &older, roles, Some(&eval.examples)) {
                Ok(comparison) => {
                    info!(
                        against = %version,
                        intent_f1_delta = comparison.deltas.intent_weighted_f1,
                        entity_f1_delta = comparison.deltas.entity_f1,
                        negative_flips = comparison.negative_flips.examples,
                        "compared with an older version"
                    );
                    evaluation.comparisons.push(comparison);
                }
                Err(error) => warn!(%version, %error, "cannot compare with an older version"),
            }
        }
        Ok((model, evaluation))
    }

    /// The versions to compare with, each with what it is to the new one (`parent`,
    /// `alias <name>`), in version order.
    async fn older_versions(&self, base: Option<&Manifest>) -> BTreeMap<Version, Vec<String>> {
        let job = self.job;
        let mut out: BTreeMap<Version, Vec<String>> = BTreeMap::new();
        if let Some(base) = base {
            out.entry(base.version).or_default().push("parent".into());
        }
        if let Some(alias) = &job.promote_to {
            let registry = &self.shared.registry;
            let found = self
                .shared
                .retry
                .run("read the target alias", || {
                    registry.alias(&job.model, alias)
                })
                .await;
            match found {
                Ok(Some(version)) if version != job.output_version => {
                    out.entry(version)
                        .or_default()
                        .push(format!("alias {alias}"));
                }
                Ok(_) => {}
                Err(error) => warn!(%alias, %error, "cannot read the target alias"),
            }
        }
        out
    }

    /// Scores a stored version's inference model on `eval`.
    async fn score_stored(
        &self,
        version: Version,
        eval: &Arc<TrainingData>,
    ) -> Result<Scored, JobError> {
        let job = self.job;
        let registry = &self.shared.registry;
        let retry = &self.shared.retry;
        let what = format!("version {version}");
        let manifest = retry
            .run("read an older version's manifest", || {
                registry.manifest(&job.model, version)
            })
            .await
            .map_err(JobError::registry(what.clone()))?;
        let vocab = retry
            .run("read an older version's vocabulary", || {
                registry.vocabulary(&manifest)
            })
            .await
            .map_err(JobError::registry(what.clone()))?;
        let onnx = retry
            .run("read an older version's model", || {
                registry.file(&manifest, keys::MODEL_ONNX)
            })
            .await
            .map_err(JobError::registry(what.clone()))?;
        let runtime = self.shared.runtime.clone();
        let eval = eval.clone();
        blocking(move || {
            let featurizer = Featurizer::new(vocab, FeatureLimits::default());
            let mut predictor = Predictor::new(&onnx, featurizer, &runtime)?;
            score(&mut predictor, &eval)
        })
        .await?
        .map_err(JobError::engine(what))
    }
}
