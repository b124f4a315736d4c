//! Queue depths for `/metrics` and the dashboard, read from RabbitMQ.
//!
//! Ready messages and consumers come from a passive `queue.declare` over AMQP (exact and
//! immediate). Unacknowledged messages are only known to the management API
//! (`coordinator.management_url`), which refreshes its numbers every few seconds; without it they
//! are reported as unknown.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use refit_io::queue::QueueConfig;
use serde::Deserialize;

use super::App;
use crate::config::CoordinatorConfig;
use refit_proto::wire::QueueView;

/// How long one look at the broker may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Reads queue depths.
pub struct QueueStats {
    management: Option<Management>,
}

struct Management {
    base: url::Url,
    vhost: String,
    user: String,
    password: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ManagementQueue {
    #[serde(default)]
    messages_unacknowledged: Option<u64>,
}

fn management(config: &CoordinatorConfig) -> Option<Management> {
    let raw = config.coordinator.management_url.trim();
    if raw.is_empty() {
        return None;
    }
    let base = url::Url::parse(raw).ok()?;
    let QueueConfig {
        url, password_file, ..
    } = &config.queue;
    let amqp = url::Url::parse(url).ok()?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let password = match password_file {
        Some(path) => std::fs::read_to_string(path)
            .ok()?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        None => decode(amqp.password().unwrap_or("")),
    };
    let vhost = match amqp.path().trim_start_matches('/') {
        "" => "%2F".to_owned(),
        v => v.to_owned(),
    };
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().ok()?;
    Some(Management {
        base,
        vhost,
        user: decode(amqp.username()),
        password,
        http,
    })
}

impl QueueStats {
    /// Reads the settings; nothing is contacted yet.
    pub fn new(config: &CoordinatorConfig) -> Self {
        Self {
            management: management(config),
        }
    }

    async fn unacked(&self, queue: &str) -> Option<u64> {
        let m = self.management.as_ref()?;
        let url = m
            .base
            .join(&format!("api/queues/{}/{queue}", m.vhost))
            .ok()?;
        let response = m
            .http
            .get(url)
            .basic_auth(&m.user, Some(&m.password))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response
            .json::<ManagementQueue>()
            .await
            .ok()?
            .messages_unacknowledged
    }

    /// The depths of the job queues of `pools`, the dead-letter queue and the coordinator's
    /// events queue. Queues that do not exist yet are left out. An error says why the broker
    /// could not be asked (no credentials in it).
    pub async fn snapshot(&self, app: &App, pools: &[String]) -> Result<Vec<QueueView>, String> {
        let topology = app.broker.topology();
        let mut names: Vec<String> = pools
            .iter()
            .flat_map(|p| {
                let [high, normal] = topology.job_queues_for(p);
                [normal, high]
            })
            .collect();
        names.push(topology.dead_letter_queue());
        names.push(topology.coordinator_events_queue());
        names.dedup();
        let channel = tokio::time::timeout(TIMEOUT, app.broker.channel())
            .await
            .map_err(|_| "the broker did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut channel = Some(channel);
        let mut out = Vec::new();
        for name in names {
            let ch = match channel.take() {
                Some(ch) => ch,
                None => app.broker.channel().await.map_err(|e| e.to_string())?,
            };
            let declared = tokio::time::timeout(
                TIMEOUT,
                ch.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await;
            match declared {
                Ok(Ok(queue)) => {
                    out.push(QueueView {
                        unacked: self.unacked(&name).await,
                        name,
                        ready: u64::from(queue.message_count()),
                        consumers: u64::from(queue.consumer_count()),
                    });
                    channel = Some(ch);
                }
                // A missing queue closes the channel (404); the next one opens a new channel.
                Ok(Err(_)) => {}
                Err(_) => return Err("the broker did not answer in time".to_owned()),
            }
        }
        if let Some(ch) = channel {
            let _ = ch.close(200, "done".into()).await;
        }
        Ok(out)
    }
}
