//! What a run reports while and after it trains.

use std::ops::ControlFlow;

use serde::Serialize;

use super::NluModel;

/// Training progress, reported after every step.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Epochs this run trains.
    pub total_epochs: u32,
    /// Optimiser steps over the model's life.
    pub step: u64,
    /// Mean loss over the current epoch so far.
    pub loss: f64,
    /// Training throughput of this run.
    pub examples_per_sec: f64,
    /// Estimated seconds to the end of the run.
    pub eta_secs: f64,
}

/// Callbacks of a training run.
pub trait TrainObserver {
    /// After each step.
    fn progress(&mut self, _progress: &Progress) {}
    /// Checked before each step: `true` stops the run (it returns [`EngineError::Cancelled`](crate::EngineError::Cancelled)).
    fn should_stop(&mut self) -> bool {
        false
    }
    /// After each epoch, with the model as it is then (a consistent checkpoint).
    fn epoch_end(&mut self, _model: &NluModel) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// An observer that does nothing.
pub struct Quiet;

impl TrainObserver for Quiet {}

/// What a training run did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainReport {
    /// Epochs trained in this call.
    pub epochs: u32,
    /// Steps taken in this call.
    pub steps: u64,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Seconds spent in the loop.
    pub seconds: f64,
    /// Examples per second.
    pub examples_per_sec: f64,
}
