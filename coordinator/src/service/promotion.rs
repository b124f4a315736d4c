//! Gated promotion (`refit_proto::promotion`): the gate asked for a version and an alias, a
//! job's `promote_to` carried out once its version is committed, and the manual moves of the API.
//!
//! The gate compares the candidate with the alias's current version on the same eval data: the
//! comparison the candidate's job made (its worker evaluated the alias's version beside the new
//! one), or else one built from both versions' stored evaluations when they share eval data.
//! Whatever cannot be compared fails the gate, with the reason.
//!
//! A job's promotion runs after its commit, from the committer's loop: jobs that succeeded with
//! `promote_to` and no recorded promotion. A coordinator that stops between the commit and the
//! promotion does it when it is active again; a store outage leaves it for the next pass.

use chrono::Utc;
use refit_io::registry::RegistryError;
use refit_proto::evaluation::{Comparison, compare};
use refit_proto::promotion::{AliasMove, GateResult, gate};
use refit_proto::wire::PromotionView;
use refit_proto::{Alias, ModelName, Version};
use tracing::{info, warn};

use super::App;

/// Why the gate could not be asked.
pub type GateError = RegistryError;

impl App {
    /// The gate's decision on pointing `alias` at `candidate` now (nothing moves).
    pub async fn ask_gate(
        &self,
        model: &ModelName,
        alias: &Alias,
        candidate: Version,
    ) -> Result<GateResult, GateError> {
        let policy = self.config.promotion.policy(alias.as_str());
        // The candidate must exist, whatever the alias holds.
        let manifest = self.registry.manifest(model, candidate).await?;
        let current = self.registry.alias(model, alias).await?;
        let comparison = match current {
            Some(current) if current != candidate => self.comparison(&manifest, current).await?,
            _ => Err(String::new()),
        };
        Ok(gate(
            policy,
            candidate,
            current,
            comparison.as_ref().map_err(Clone::clone),
        ))
    }

    /// The candidate (`manifest`) against `current` on the same eval data, or why there is none.
    async fn comparison(
        &self,
        manifest: &refit_proto::Manifest,
        current: Version,
    ) -> Result<Result<Comparison, String>, GateError> {
        let candidate = manifest.version;
        let Some(evaluation) = self.registry.evaluation(manifest).await? else {
            return Ok(Err(format!(
                "{candidate} has no evaluation (train it with eval data)"
            )));
        };
        if let Some(stored) = evaluation.comparison_with(current) {
            return Ok(Ok(stored.clone()));
        }
        let current_manifest = match self.registry.manifest(&manifest.model, current).await {
            Ok(m) => m,
            Err(RegistryError::NotFound { .. }) => {
                return Ok(Err(format!(
                    "the alias's version {current} has no manifest"
                )));
            }
            Err(e) => return Err(e),
        };
        let Some(older) = self.registry.evaluation(&current_manifest).await? else {
            return Ok(Err(format!("{current} has no evaluation to compare with")));
        };
        Ok(compare(&evaluation, &older, Vec::new(), None).map_err(|e| e.to_string()))
    }

    /// Moves `alias` to `entry.to`, recording `entry` in its history; one move at a time.
    pub async fn move_alias(
        &self,
        model: &ModelName,
        alias: &Alias,
        entry: AliasMove,
    ) -> Result<AliasMove, GateError> {
        let _one_at_a_time = self.alias_moves.lock().await;
        self.registry.move_alias(model, alias, entry).await
    }

    /// Carries out the `promote_to` of succeeded jobs whose promotion is not recorded yet.
    pub(super) async fn promote_pending(&self) {
        let pending = match self.store.pending_promotions().await {
            Ok(pending) => pending,
            Err(error) => {
                warn!(%error, "cannot read the promotions to make");
                return;
            }
        };
        for job in pending {
            let Some(view) = self
                .promote(&job.job_id, &job.model, &job.alias, job.version)
                .await
            else {
                continue;
            };
            self.metrics
                .promotions
                .with_label_values(&[job.alias.as_str(), view.outcome.as_str()])
                .inc();
            if let Err(error) = self.store.record_promotion(job.job_id.clone(), view).await {
                warn!(%error, job_id = %job.job_id, "cannot record a promotion; retrying");
            }
        }
    }

    /// One job's promotion; `None` when the object store is unreachable (tried again later).
    async fn promote(
        &self,
        job_id: &str,
        model: &ModelName,
        alias: &Alias,
        version: Version,
    ) -> Option<PromotionView> {
        let view = |outcome: &str, summary: String, gate: Option<GateResult>| PromotionView {
            alias: alias.to_string(),
            outcome: outcome.to_owned(),
            summary,
            gate,
            at: Utc::now(),
        };
        let result = match self.ask_gate(model, alias, version).await {
            Err(e) if e.is_transient() => {
                warn!(error = %e, %job_id, "cannot ask the promotion gate now; retrying");
                return None;
            }
            Err(e) => {
                warn!(error = %e, %job_id, %alias, "cannot ask the promotion gate");
                return Some(view(
                    "error",
                    format!("the gate could not be asked: {e}"),
                    None,
                ));
            }
            Ok(result) => result,
        };
        if !result.passed {
            let summary = format!("{alias} stays: {}", result.summary());
            info!(%job_id, %model, %alias, %version, reasons = ?result.reasons(), "promotion refused");
            return Some(view("refused", summary, Some(result)));
        }
        let entry = AliasMove {
            at: Utc::now(),
            from: None,
            to: version,
            by: format!("job {job_id}"),
            reason: format!("promote_to {alias} of job {job_id}"),
            forced: false,
            gate: Some(result.clone()),
        };
        match self.move_alias(model, alias, entry).await {
            Ok(moved) => {
                info!(%job_id, %model, %alias, %version, from = ?moved.from, "alias promoted");
                let from = moved
                    .from
                    .map_or_else(|| "nowhere".to_owned(), |v| v.to_string());
                let summary = format!(
                    "{alias} moved from {from} to {version}: {}",
                    result.summary()
                );
                Some(view("promoted", summary, Some(result)))
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, %job_id, "cannot move the alias now; retrying");
                None
            }
            Err(e) => Some(view(
                "error",
                format!("the alias could not be moved: {e}"),
                Some(result),
            )),
        }
    }
}
