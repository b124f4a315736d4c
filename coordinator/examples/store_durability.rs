//! What `synchronous = FULL` costs the job store (issue 13): the latency of storing a submitted
//! job (`Store::insert_job`, the transaction `POST /v1/jobs` waits for) with
//! [`Durability::Full`], what the coordinator runs with, against [`Durability::Normal`], what it
//! ran with before. Both stores live in one folder on the disk to measure, and the two modes
//! take turns in blocks so that both see the same background noise.
//!
//! ```sh
//! cargo run --release -p refit-coordinator --example store_durability -- [DIR] [JOBS]
//! ```
//!
//! `DIR` (default `.refit-local/bench-store`) must be on the disk the coordinator's database will
//! use: on a tmpfs every sync is free and the comparison says nothing. `JOBS` per mode (default
//! 1000). The folder's two databases are deleted first and left behind for a look.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use refit_coordinator::store::{Durability, NewJob, Store};
use refit_proto::{DatasetRef, Hyperparams, JobId, JobSpec, Mode, ModelName, Version};

/// Jobs stored in one mode before the other mode's turn.
const BLOCK: usize = 50;

fn job(model: &str, n: usize) -> NewJob {
    let sha = format!("{n:064x}");
    NewJob {
        spec: JobSpec {
            id: JobId::new(),
            model: ModelName::new(model).expect("a valid model name"),
            mode: Mode::Scratch,
            base_version: None,
            output_version: Version::first(),
            dataset: DatasetRef {
                key: format!("datasets/sha256/{sha}.yml"),
                sha256: sha,
            },
            eval_dataset: None,
            hyperparams: Hyperparams::default(),
            priority: 0,
            submitted_at: Utc::now(),
            deadline: None,
            promote_to: None,
        },
        requested_mode: Mode::Auto,
        pool: "default".into(),
        decision: None,
        schedule: None,
    }
}

struct Summary {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarise(mut samples: Vec<Duration>) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let total: Duration = samples.iter().sum();
    Summary {
        median: at(0.5),
        p99: at(0.99),
        mean: total / samples.len() as u32,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| ".refit-local/bench-store".into()),
    );
    let jobs: usize = match args.next() {
        Some(n) => n.parse().map_err(|e| anyhow::anyhow!("JOBS {n:?}: {e}"))?,
        None => 1000,
    };
    anyhow::ensure!(jobs >= BLOCK, "JOBS must be at least {BLOCK}");
    std::fs::create_dir_all(&dir)?;
    let modes = [("FULL", Durability::Full), ("NORMAL", Durability::Normal)];
    let mut stores = Vec::new();
    for (name, durability) in modes {
        let path = dir.join(format!("{}.db", name.to_lowercase()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        stores.push((name, Store::open_with(&path, durability)?));
    }
    // Warm up both (page cache, prepared statements), unmeasured.
    for (_, store) in &stores {
        for n in 0..10 {
            store.insert_job(job("warmup", n), None).await?;
        }
    }
    let mut samples = vec![Vec::with_capacity(jobs); stores.len()];
    let mut done = 0;
    while done < jobs {
        let block = BLOCK.min(jobs - done);
        for ((_, store), samples) in stores.iter().zip(samples.iter_mut()) {
            for n in done..done + block {
                let started = Instant::now();
                store.insert_job(job("bench", n), None).await?;
                samples.push(started.elapsed());
            }
        }
        done += block;
    }
    println!(
        "store_durability: {jobs} jobs per mode in {}",
        dir.display()
    );
    println!("| synchronous | median | p99 | mean | jobs/s |");
    println!("| --- | --- | --- | --- | --- |");
    let mut means = Vec::new();
    for ((name, _), samples) in stores.iter().zip(samples) {
        let s = summarise(samples);
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {:.0} |",
            s.median.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.mean.as_secs_f64() * 1e3,
            1.0 / s.mean.as_secs_f64(),
        );
        means.push(s.mean);
    }
    println!(
        "FULL / NORMAL mean latency: {:.2}x",
        means[0].as_secs_f64() / means[1].as_secs_f64()
    );
    Ok(())
}
