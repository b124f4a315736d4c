//! Unit tests of the run's batches and options.

use refit_proto::Hyperparams;

use super::batches::{BatchSchedule, intent_targets};
use super::*;

#[test]
fn intent_targets_are_smoothed_distributions_over_the_batch() {
    let example = |intent| Encoded {
        tokens: vec![vec![1]],
        intent,
        tags: vec![0],
    };
    let (a, b) = (example(2), example(0));
    let batch = [&a, &b];
    let hard = intent_targets(&batch, 4, 0.0);
    assert_eq!(hard, [0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0, 0.0]);
    let soft = intent_targets(&batch, 4, 0.1);
    for row in soft.chunks(4) {
        assert!((row.iter().sum::<f32>() - 0.5).abs() < 1e-6, "{row:?}");
    }
    // The true intent gets 1 − ε + ε/C, the others ε/C (each halved: two examples).
    assert!((soft[2] - (0.9 + 0.025) / 2.0).abs() < 1e-6);
    assert!((soft[0] - 0.025 / 2.0).abs() < 1e-6);
    assert!((soft[4] - (0.9 + 0.025) / 2.0).abs() < 1e-6);
}

#[test]
fn a_job_with_default_hyperparameters_trains_with_the_engine_defaults() {
    // What the coordinator publishes by default is what the demo and BENCHMARKS.md measure.
    assert_eq!(
        TrainOptions::for_job(&Hyperparams::default()),
        TrainOptions::default()
    );
    let constant = Hyperparams {
        batch_size: 32,
        final_batch_size: None,
        ..Hyperparams::default()
    };
    let opts = TrainOptions::for_job(&constant);
    assert_eq!((opts.batch_size, opts.final_batch_size), (32, 32));
}

#[test]
fn batch_size_grows_linearly_from_first_to_final_epoch() {
    let opts = |first, last| TrainOptions {
        batch_size: first,
        final_batch_size: last,
        ..TrainOptions::default()
    };
    let growing = BatchSchedule::new(&opts(64, 256), 5);
    let sizes: Vec<usize> = (0..5).map(|e| growing.size(e)).collect();
    assert_eq!(sizes, [64, 112, 160, 208, 256]);
    // Whole steps toward the first size; past the end stays at the last.
    let uneven = BatchSchedule::new(&opts(64, 256), 130);
    assert_eq!(uneven.size(1), 65);
    assert_eq!(uneven.size(129), 256);
    assert_eq!(uneven.size(500), 256);
    // Equal ends, a one-epoch run, zeroes: constant and at least 1.
    assert_eq!(BatchSchedule::new(&opts(32, 32), 10).size(9), 32);
    assert_eq!(BatchSchedule::new(&opts(64, 256), 1).size(0), 64);
    assert_eq!(BatchSchedule::new(&opts(0, 0), 3).size(2), 1);
    // Shrinking works the same way.
    assert_eq!(BatchSchedule::new(&opts(256, 64), 5).size(4), 64);
}
