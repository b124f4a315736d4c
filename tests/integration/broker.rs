//! refit against a broker that goes away: RabbitMQ nodes of the test's own, started with
//! `deploy/rabbitmq-cluster.sh` (own node names, ports, data and Erlang cookie; the shared broker
//! on 5672, which the other tests use, is never touched).
//!
//! - **Restarts**: `rabbitmqctl stop_app` / `start_app` five times during jobs, with random
//!   5–30 s pauses: the coordinator takes submits throughout (its outbox holds them, `/readyz`
//!   and `/metrics` say the broker is away), the workers stay up, every job succeeds, and a
//!   cancel works afterwards.
//! - **Node loss**: a three-node cluster, refit pointed at it with `queue.failover_hosts`; the
//!   node that leads the job queue is stopped mid-run: nothing is lost and every job finishes.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::api::{metric, random_hex};
use crate::common::cluster::ClusterOptions;
use crate::common::jobs::events;
use crate::common::proc::run_script;
use crate::common::stack::{Options, Stack};
use crate::common::wait::{done_if, wait_until};
use crate::common::{examples, repo};

/// A RabbitMQ cluster of this test's own (`deploy/rabbitmq-cluster.sh`), stopped and removed on
/// drop.
pub struct PrivateRabbit {
    dir: tempfile::TempDir,
    name: String,
    base: u16,
    nodes: usize,
}

impl PrivateRabbit {
    /// Starts `nodes` clustered nodes on a free port range.
    pub async fn start(nodes: usize) -> Result<Self> {
        let rabbit = Self {
            dir: tempfile::Builder::new().prefix("refit-rabbit-").tempdir()?,
            name: format!("refit-t{}", random_hex(4)),
            base: free_base(nodes)?,
            nodes,
        };
        rabbit.script(&["start", &nodes.to_string()]).await?;
        Ok(rabbit)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo().join("deploy/rabbitmq-cluster.sh"));
        command
            .args(args)
            .env("REFIT_RMQ_CLUSTER_DIR", self.dir.path())
            .env("REFIT_RMQ_CLUSTER_NAME", &self.name)
            .env("REFIT_RMQ_CLUSTER_PORT", self.base.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `deploy/rabbitmq-cluster.sh ARGS` for this cluster (off the async threads).
    pub async fn script(&self, args: &[&str]) -> Result<String> {
        let what = format!("deploy/rabbitmq-cluster.sh {}", args.join(" "));
        run_script(self.command(args), &what).await
    }

    /// `rabbitmqctl ARGS` against node `i` (from 1).
    pub async fn ctl(&self, i: usize, args: &[&str]) -> Result<String> {
        let node = i.to_string();
        let mut all = vec!["ctl", node.as_str()];
        all.extend_from_slice(args);
        self.script(&all).await
    }

    /// Node `i`'s AMQP URL.
    pub fn url(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.base + u16::try_from(i).unwrap_or(0)
        )
    }

    /// Node `i`'s management API.
    pub fn management_url(&self, i: usize) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.base + 100 + u16::try_from(i).unwrap_or(0)
        )
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = self.command(&["stop"]).output();
        let _ = self.nodes;
    }
}

/// A base port whose node ports (base+i, base+100+i, base+200+i for i in 1..=nodes) are free
/// now.
fn free_base(nodes: usize) -> Result<u16> {
    let mut rng = rand::rng();
    for _ in 0..50 {
        let base: u16 = rng.random_range(20_000..40_000);
        let ports: Vec<u16> = (1..=nodes as u16)
            .flat_map(|i| [base + i, base + 100 + i, base + 200 + i])
            .collect();
        let free = ports
            .iter()
            .all(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok());
        if free {
            return Ok(base);
        }
    }
    anyhow::bail!("no free port range for a private RabbitMQ")
}

/// A stack on `rabbit` (the coordinator reading queue depths from node `management_node`, every
/// service given `failover_hosts`), two workers whose steps take 100 ms (2 an epoch, a resume
/// checkpoint every 5 s), and `jobs` jobs of `epochs` epochs submitted: the stack, the dataset
/// and the job ids.
async fn busy_stack(
    name: &str,
    rabbit: &PrivateRabbit,
    management_node: usize,
    failover_hosts: Vec<String>,
    jobs: usize,
    epochs: u32,
) -> Result<(Stack, Value, Vec<String>)> {
    let mut stack = Stack::with(
        name,
        Options {
            cluster: ClusterOptions {
                amqp_url: Some(rabbit.url(1)),
                failover_hosts,
                ..ClusterOptions::default()
            },
            lease_secs: Some(10),
            ..Options::default()
        },
    )
    .await?;
    let management = rabbit.management_url(management_node);
    stack
        .start_coordinator(&[("REFIT__COORDINATOR__MANAGEMENT_URL", &management)])
        .await?;
    let env = [
        ("REFIT_FAULT", "slow-step=100"),
        ("REFIT__WORKER__RESUME_EVERY_EPOCHS", "0"),
        ("REFIT__WORKER__RESUME_EVERY_SECS", "5"),
    ];
    stack.start_worker(&env)?;
    stack.start_worker(&env)?;
    let mut data = examples(8)?;
    data.truncate(64);
    let data = stack.upload_examples(&data).await?;
    let mut ids = Vec::new();
    for _ in 0..jobs {
        ids.push(stack.submit_scratch(&data, epochs, json!({})).await?);
    }
    Ok((stack, data, ids))
}

/// A random whole number of seconds in `5..=30`.
fn pause() -> Duration {
    Duration::from_secs(rand::rng().random_range(5..=30))
}

/// `/readyz?require=store` (no token needed; the stack's is sent anyway), which answers 200
/// while the job store does, naming the broker's state too.
async fn readyz(stack: &Stack) -> Result<Value> {
    stack
        .expect(Method::GET, "/readyz?require=store", None, StatusCode::OK)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_broker_restarts_during_jobs_lose_nothing_and_cancels_work_after() -> Result<()> {
    const RESTARTS: usize = 5;
    const JOBS: usize = 10;
    let rabbit = PrivateRabbit::start(1).await?;
    // Jobs of about 30 s each.
    let (stack, data, mut ids) = busy_stack("brestart", &rabbit, 1, Vec::new(), JOBS, 150).await?;
    stack
        .wait_event(&ids[0], "the first job training", |e| {
            e["type"] == "progress"
        })
        .await?;

    for restart in 1..=RESTARTS {
        let down = pause();
        rabbit.ctl(1, &["stop_app"]).await?;
        // Submits go on while the broker is away: the outbox holds them.
        wait_until(
            "/readyz to see the broker away",
            Duration::from_secs(30),
            async || {
                let ready = readyz(&stack).await?;
                Ok(done_if(ready["broker"] != "ok", (), || ready.to_string()))
            },
        )
        .await?;
        if restart == 1 {
            ids.push(stack.submit_scratch(&data, 150, json!({})).await?);
            let ready = readyz(&stack).await?;
            ensure!(
                ready["ready"] == true && ready["outbox_jobs"].as_u64() >= Some(1),
                "/readyz while the broker is away: {ready}"
            );
            let metrics = stack.metrics().await?;
            ensure!(
                metric(&metrics, "refit_broker_up", &[]) == Some(0.0)
                    && metric(&metrics, "refit_outbox_jobs", &[]) >= Some(1.0),
                "metrics while the broker is away:\n{metrics}"
            );
        }
        tokio::time::sleep(down).await;
        rabbit.ctl(1, &["start_app"]).await?;
        let up = pause();
        eprintln!("broker restart {restart}: away {down:?}, then up for {up:?}");
        tokio::time::sleep(up).await;
        stack.check_workers_running(&format!("after restart {restart}"))?;
    }

    let failures: u64 = stack
        .all_succeeded(&ids)
        .await?
        .iter()
        .map(|job| job["failures"].as_u64().unwrap_or(0))
        .sum();

    // Cancels still reach the workers.
    let long = stack.submit_scratch(&data, 3000, json!({})).await?;
    stack
        .wait_event(&long, "the long job training", |e| e["type"] == "progress")
        .await?;
    let (status, _) = stack
        .call(Method::POST, &format!("/v1/jobs/{long}/cancel"), None)
        .await?;
    ensure!(status.is_success(), "cancel: {status}");
    let job = stack.wait_final(&long).await?;
    ensure!(
        job["state"] == "cancelled" && events(&job).iter().any(|e| e["type"] == "cancelled"),
        "the cancel did not reach the worker: {} {:?}",
        job["state"],
        crate::common::api::event_types(&job)
    );
    eprintln!(
        "{RESTARTS} broker restarts: {} jobs succeeded, {failures} failures counted",
        ids.len()
    );
    stack.finish().await?;
    drop(rabbit);
    Ok(())
}

/// The node (its number, from 1) that leads `queue`, as node `ask` sees it.
async fn leader_of(rabbit: &PrivateRabbit, ask: usize, queue: &str) -> Result<usize> {
    let listing = rabbit
        .ctl(
            ask,
            &["list_queues", "-q", "--no-table-headers", "name", "leader"],
        )
        .await?;
    let leader = listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .map(|(_, leader)| leader.trim().to_owned())
        .with_context(|| format!("{queue} is not listed:\n{listing}"))?;
    let number = leader
        .split_once('@')
        .and_then(|(name, _)| name.rsplit_once('-'))
        .and_then(|(_, n)| n.parse().ok())
        .with_context(|| format!("cannot tell the node number of {leader:?}"))?;
    Ok(number)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_that_leads_the_job_queue_loses_no_job() -> Result<()> {
    const JOBS: usize = 10;
    let rabbit = PrivateRabbit::start(3).await?;
    let hosts: Vec<String> = (2..=3)
        .map(|i| {
            let url = url::Url::parse(&rabbit.url(i)).expect("a URL");
            format!("127.0.0.1:{}", url.port().expect("a port"))
        })
        .collect();
    // Jobs of about 10 s each.
    let (stack, _, ids) = busy_stack("bnodeloss", &rabbit, 2, hosts, JOBS, 50).await?;
    stack.wait_succeeded(&ids[1]).await?;
    let queue = stack.job_queue();
    let leader = leader_of(&rabbit, 2, &queue).await?;
    rabbit.script(&["stop-node", &leader.to_string()]).await?;
    let survivor = if leader == 1 { 2 } else { 1 };
    let new_leader = wait_until(
        "a new leader of the job queue",
        Duration::from_secs(60),
        async || {
            let now = leader_of(&rabbit, survivor, &queue).await?;
            Ok(done_if(now != leader, now, || format!("still node {now}")))
        },
    )
    .await?;

    stack.all_succeeded(&ids).await?;
    stack.check_workers_running("after the node loss")?;
    eprintln!(
        "node loss: stopped node {leader} (the leader of {queue}); the new leader is node \
         {new_leader}; {JOBS} jobs succeeded"
    );
    stack.finish().await?;
    drop(rabbit);
    Ok(())
}
