//! One optimiser step on ONNX Runtime: the batch's embedding rows and the dense parameters go
//! in as one flat vector with their AdamW moments, the updated ones come back and are written
//! back; then progress and the epoch's bookkeeping.

use std::time::Instant;

use super::batches::Prepared;
use super::{NluModel, Progress, TrainObserver, TrainOptions};
use crate::EngineError;
use crate::model::AdamW;
use crate::runtime::{HostTensor, run_f32_visit};

/// A training run in progress: what a step needs besides its batch.
pub(super) struct Run<'a> {
    pub(super) model: &'a mut NluModel,
    pub(super) session: ort::session::Session,
    /// Reused buffers for the flat parameter vector and its moments.
    pub(super) buffers: [Vec<f32>; 3],
    pub(super) adam: AdamW,
    pub(super) opts: &'a TrainOptions,
    pub(super) observer: &'a mut dyn TrainObserver,
    pub(super) started: Instant,
    pub(super) start_epoch: u32,
    pub(super) epochs: u32,
    pub(super) seen: u64,
    pub(super) steps: u64,
    pub(super) loss_sum: f64,
    pub(super) final_loss: f64,
}

impl Run<'_> {
    /// One optimiser step on a prepared batch, then progress and, after an epoch's last batch,
    /// the epoch's bookkeeping.
    pub(super) fn step(&mut self, batch: Prepared) -> Result<(), EngineError> {
        if self.observer.should_stop() {
            return Err(EngineError::Cancelled);
        }
        let loss = self.optimise(&batch)?;
        let step = self.model.checkpoint.state.step;
        if !loss.is_finite() {
            return Err(EngineError::Diverged(format!(
                "loss became {loss} at epoch {}, step {step}",
                batch.epoch
            )));
        }
        if batch.index == 0 {
            self.loss_sum = 0.0;
        }
        self.loss_sum += loss;
        self.seen += batch.examples as u64;
        self.steps += 1;
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let in_epoch = (batch.index + 1) as f64 / batch.steps_in_epoch.max(1) as f64;
        let done = (batch.epoch - self.start_epoch) as f64 + in_epoch;
        let left = (self.epochs - self.start_epoch) as f64 - done;
        self.observer.progress(&Progress {
            epoch: batch.epoch as f64 + in_epoch,
            total_epochs: self.epochs,
            step,
            loss: self.loss_sum / (batch.index + 1) as f64,
            examples_per_sec: self.seen as f64 / elapsed,
            eta_secs: elapsed / done * left,
        });
        if let Some(rng) = batch.rng_after_epoch {
            self.final_loss = self.loss_sum / batch.steps_in_epoch.max(1) as f64;
            let state = &mut self.model.checkpoint.state;
            state.epochs_done = batch.epoch as u64 + 1;
            state.lineage_epochs += 1.0;
            state.rng = rng;
            if self.observer.epoch_end(self.model).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        Ok(())
    }

    /// Runs the step graph: the batch's embedding rows and every dense parameter go in as one
    /// flat vector (with its moments), the updated vectors come back and are written back. The
    /// three input buffers are reused from step to step, the outputs are read where ONNX Runtime
    /// put them, and with a second thread both copies are split between the two threads: the
    /// rows are ascending, so each thread owns a range of the embedding.
    fn optimise(&mut self, batch: &Prepared) -> Result<f64, EngineError> {
        let ckpt = &mut self.model.checkpoint;
        let width = ckpt.meta.embed as usize;
        let rows = &batch.rows[..];
        let rows_len = rows.len() * width;
        // The dense parameters follow the rows, in `Checkpoint::dense` order (the step graph's).
        let dense_len: usize = ckpt.dense.iter().map(|(_, p)| p.value.data.len()).sum();
        let total = rows_len + dense_len;
        // The first `half` rows go to one thread; the rest and the dense part to the other.
        let half = if self.opts.runtime.prepare_in_parallel() {
            rows.len() / 2
        } else {
            0
        };
        let mut buffers: Vec<Vec<f32>> = self.buffers.iter_mut().map(std::mem::take).collect();
        for buf in &mut buffers {
            buf.resize(total, 0.0);
        }
        {
            let emb = [
                &ckpt.embedding.value.data[..],
                &ckpt.embedding.m.data[..],
                &ckpt.embedding.v.data[..],
            ];
            let dense: Vec<[&[f32]; 3]> = ckpt
                .dense
                .iter()
                .map(|(_, p)| [&p.value.data[..], &p.m.data[..], &p.v.data[..]])
                .collect();
            let (mut low, mut high): (Vec<&mut [f32]>, Vec<&mut [f32]>) = buffers
                .iter_mut()
                .map(|b| b.split_at_mut(half * width))
                .unzip();
            let (low_rows, high_rows) = rows.split_at(half);
            let pack_high = move || {
                for (k, out) in high.iter_mut().enumerate() {
                    gather_rows(out, high_rows, emb[k], width);
                    let mut at = high_rows.len() * width;
                    for piece in &dense {
                        out[at..at + piece[k].len()].copy_from_slice(piece[k]);
                        at += piece[k].len();
                    }
                }
            };
            let pack_low = move || {
                for (k, out) in low.iter_mut().enumerate() {
                    gather_rows(out, low_rows, emb[k], width);
                }
            };
            both(half > 0, pack_low, pack_high);
        }
        let packed: Vec<HostTensor> = buffers
            .into_iter()
            .map(|data| HostTensor::f32(&[total as i64], data))
            .collect();
        let mut sizes = vec![rows_len as i64];
        sizes.extend(ckpt.dense.iter().map(|(_, p)| p.value.data.len() as i64));
        let sizes = HostTensor::i64(&[sizes.len() as i64], sizes);
        ckpt.state.step += 1;
        let step = ckpt.state.step as i32;
        let bias1 = 1.0 - self.adam.beta1.powi(step);
        let bias2 = 1.0 - self.adam.beta2.powi(step);
        let lr_t = self.opts.learning_rate as f64 * bias2.sqrt() / bias1;
        let lr_t = HostTensor::f32(&[], vec![lr_t as f32]);
        let keep = 1.0 - self.opts.learning_rate * self.opts.weight_decay;
        let keep = HostTensor::f32(&[], vec![keep]);

        let mut inputs: Vec<(&str, &HostTensor)> = vec![
            ("params", &packed[0]),
            ("params_m", &packed[1]),
            ("params_v", &packed[2]),
            ("sizes", &sizes),
            ("lr_t", &lr_t),
            ("keep", &keep),
        ];
        inputs.extend(batch.inputs.iter().map(|(n, t)| (*n, t)));
        let wanted = ["loss", "new_params", "new_params_m", "new_params_v"];
        let mut loss = f64::NAN;
        run_f32_visit(&mut self.session, &inputs, &wanted, |out| {
            loss = out[0][0] as f64;
            let values = [out[1], out[2], out[3]];
            // Ascending rows: the first `half` rows all lie below `split` in the embedding.
            let split = rows.get(half).map_or(0, |&r| r as usize * width);
            let emb = &mut ckpt.embedding;
            let (mut low, mut high): (Vec<&mut [f32]>, Vec<&mut [f32]>) =
                [&mut emb.value.data, &mut emb.m.data, &mut emb.v.data]
                    .into_iter()
                    .map(|t| t.split_at_mut(split))
                    .unzip();
            let (low_rows, high_rows) = rows.split_at(half);
            let dense = &mut ckpt.dense;
            let unpack_high = move || {
                for (k, target) in high.iter_mut().enumerate() {
                    let from = &values[k][half * width..];
                    scatter_rows(target, high_rows, split / width, from, width);
                    let mut at = rows_len;
                    for (_, p) in dense.iter_mut() {
                        let t = match k {
                            0 => &mut p.value,
                            1 => &mut p.m,
                            _ => &mut p.v,
                        };
                        let len = t.data.len();
                        t.data.copy_from_slice(&values[k][at..at + len]);
                        at += len;
                    }
                }
            };
            let unpack_low = move || {
                for (k, target) in low.iter_mut().enumerate() {
                    scatter_rows(target, low_rows, 0, values[k], width);
                }
            };
            both(half > 0, unpack_low, unpack_high);
        })?;
        for (buf, tensor) in self.buffers.iter_mut().zip(packed) {
            if let HostTensor::F32 { data, .. } = tensor {
                *buf = data;
            }
        }
        Ok(loss)
    }
}

/// Runs `a` on a second thread and `b` on this one when `parallel`, else one after the other.
fn both(parallel: bool, a: impl FnOnce() + Send, b: impl FnOnce()) {
    if parallel {
        std::thread::scope(|scope| {
            scope.spawn(a);
            b();
        });
    } else {
        a();
        b();
    }
}

/// Copies the embedding rows `rows` (of width `width`) from `emb` into `out`, one after another.
fn gather_rows(out: &mut [f32], rows: &[u32], emb: &[f32], width: usize) {
    for (chunk, &r) in out.chunks_exact_mut(width).zip(rows) {
        let r = r as usize * width;
        chunk.copy_from_slice(&emb[r..r + width]);
    }
}

/// Writes consecutive rows of `from` to rows `rows` of `target`, whose first row is row `first`.
fn scatter_rows(target: &mut [f32], rows: &[u32], first: usize, from: &[f32], width: usize) {
    for (chunk, &r) in from.chunks_exact(width).zip(rows) {
        let r = (r as usize - first) * width;
        target[r..r + width].copy_from_slice(chunk);
    }
}
