//! [`QueueConfig`]: where the broker is and how refit uses it, plus URL redaction.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::QueueError;

/// The URL of the local broker that `deploy/rabbitmq.sh` starts.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// What replaces a password in logs and errors.
const REDACTED: &str = "***";

/// How refit talks to RabbitMQ. Shared by the coordinator and the workers; every field has a
/// default, so an empty `[queue]` table is a working local setup.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// The broker's AMQP URL, `amqp[s]://user:password@host:port/vhost` (the default vhost `/` is
    /// written `%2f`). Default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    ///
    /// The password is a secret: refit never logs it, and `Debug` and every error show
    /// [`QueueConfig::redacted_url`] instead. Deployed configs should leave it out of the file and
    /// set it through the environment or `password_file`.
    pub url: String,
    /// A file whose content (without its trailing newline) replaces the password in `url`, e.g. a
    /// mounted Kubernetes secret. Default: none.
    pub password_file: Option<PathBuf>,
    /// The other nodes of the broker's cluster, as `host:port` (in TOML a list; in the
    /// environment one string, comma-separated): when the node of `url` does not answer or goes
    /// away, refit connects to the next one, with `url`'s scheme, user, password and vhost.
    /// Default: none.
    #[serde(deserialize_with = "list_or_commas")]
    pub failover_hosts: Vec<String>,
    /// The worker pool: workers consume `<prefix>.jobs.<pool>`, and jobs are routed to it by this
    /// name. Letters, digits, `-`, `_` and `.`; not `dead`. Default `default`.
    pub pool: String,
    /// The first segment of every exchange and queue name. Tests give each run its own prefix so
    /// they can share one broker. Same characters as `pool`. Default `refit`.
    pub prefix: String,
    /// How many times a job may be handed back (nack with requeue, or a worker that died holding
    /// it) before the broker dead-letters it into `<prefix>.jobs.dead`: the job queue's
    /// `x-delivery-limit`. A message is delivered at most `delivery_limit + 1` times. Changing it
    /// for an existing queue makes declaring the queue fail (see `deploy/README.md`). Default 5.
    pub delivery_limit: u32,
    /// Kept for configs that set it; read by no consumer any more: a worker takes one job per
    /// free slot (`worker.concurrency`, see `Consumer::jobs`) and the coordinator's consumers
    /// set their own. At least 1. Default 1.
    pub prefetch: u16,
    /// AMQP heartbeat interval asked of the broker, in seconds; 0 disables heartbeats. A dead peer
    /// is noticed after about two intervals. Default 30.
    pub heartbeat_secs: u16,
    /// How long one connection attempt may take, and how long [`Broker::connect`] and
    /// [`Broker::channel`] wait for a connection, in milliseconds. Default 10 000.
    ///
    /// [`Broker::connect`]: super::Broker::connect
    /// [`Broker::channel`]: super::Broker::channel
    pub connect_timeout_ms: u64,
    /// The first delay before reconnecting after a failed attempt, in milliseconds; it doubles per
    /// failure up to `reconnect_max_ms`, with random jitter. Default 200.
    pub reconnect_min_ms: u64,
    /// The longest delay between reconnection attempts, in milliseconds. Default 30 000.
    pub reconnect_max_ms: u64,
    /// How long a publish waits for the broker's confirm, in milliseconds. Default 30 000.
    pub confirm_timeout_ms: u64,
    /// Per-queue consumer (ack) timeout for the job queue, in milliseconds, set as the queue
    /// argument `x-consumer-timeout`. Default: none, so the broker-wide `consumer_timeout` of
    /// `rabbitmq.conf` applies (30 minutes by default): a job that runs longer than it without
    /// acking gets its channel closed by the broker and is redelivered.
    ///
    /// RabbitMQ honours the argument from 3.11.15 on. Older brokers, such as the 3.10.8 refit is
    /// tested against, accept it and ignore it: there, raise `consumer_timeout` in
    /// `rabbitmq.conf` instead (see `deploy/README.md`). It is read when the queue is first
    /// declared; on a live queue, change it with a `consumer-timeout` policy.
    pub consumer_timeout_ms: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            password_file: None,
            failover_hosts: Vec::new(),
            pool: "default".to_owned(),
            prefix: "refit".to_owned(),
            delivery_limit: 5,
            prefetch: 1,
            heartbeat_secs: 30,
            connect_timeout_ms: 10_000,
            reconnect_min_ms: 200,
            reconnect_max_ms: 30_000,
            confirm_timeout_ms: 30_000,
            consumer_timeout_ms: None,
        }
    }
}

impl QueueConfig {
    /// A config for tests: the given broker and a name prefix of the test's own, with short
    /// timeouts so a missing broker fails fast.
    pub fn for_test(url: &str, prefix: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            connect_timeout_ms: 5_000,
            reconnect_min_ms: 50,
            reconnect_max_ms: 1_000,
            confirm_timeout_ms: 10_000,
            ..Self::default()
        }
    }

    /// The URL with its password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks what serde cannot: names, ranges and the URL's shape.
    pub fn validate(&self) -> Result<(), QueueError> {
        validate_name("prefix", &self.prefix)?;
        check_pool(&self.pool).map_err(|reason| invalid("pool", reason))?;
        if self.prefetch == 0 {
            return Err(invalid(
                "prefetch",
                "must be at least 1 (0 would mean unlimited)",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(invalid("connect_timeout_ms", "must be at least 1"));
        }
        if self.confirm_timeout_ms == 0 {
            return Err(invalid("confirm_timeout_ms", "must be at least 1"));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(invalid(
                "reconnect_min_ms",
                "must be at least 1 and at most reconnect_max_ms",
            ));
        }
        if matches!(self.consumer_timeout_ms, Some(0)) {
            return Err(invalid("consumer_timeout_ms", "must be at least 1"));
        }
        let url = url::Url::parse(&self.url)
            .map_err(|e| invalid("url", format!("{} is not a URL: {e}", self.redacted_url())))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(invalid(
                "url",
                format!(
                    "{} must start with amqp:// or amqps://",
                    self.redacted_url()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(
                "url",
                format!("{} has no host", self.redacted_url()),
            ));
        }
        self.urls()?;
        Ok(())
    }

    /// `url`, then `url` on each of `failover_hosts`: the nodes to connect to, in order.
    pub(crate) fn urls(&self) -> Result<Vec<String>, QueueError> {
        let mut urls = vec![self.url.clone()];
        for host in &self.failover_hosts {
            let bad = |why: &str| invalid("failover_hosts", format!("{host:?}: {why}"));
            let (name, port) = host.rsplit_once(':').ok_or_else(|| bad("not host:port"))?;
            let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() || name.contains(['/', '@', '?', '#', ' ']) {
                return Err(bad("not a host name or address"));
            }
            let mut url = url::Url::parse(&self.url)
                .map_err(|_| invalid("url", format!("{} is not a URL", self.redacted_url())))?;
            url.set_host(Some(name))
                .map_err(|e| bad(&format!("not a host: {e}")))?;
            url.set_port(Some(port))
                .map_err(|()| bad("cannot set the port"))?;
            urls.push(url.to_string());
        }
        Ok(urls)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn reconnect_min(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_ms)
    }

    pub(crate) fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    pub(crate) fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    /// `host:port` of the broker, for "is RabbitMQ running on …?" messages.
    pub(crate) fn address(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(url) => {
                let port = url.port().unwrap_or(match url.scheme() {
                    "amqps" => 5671,
                    _ => 5672,
                });
                format!("{}:{port}", url.host_str().unwrap_or("?"))
            }
            Err(_) => "the configured address".to_owned(),
        }
    }
}

impl fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConfig")
            .field("url", &self.redacted_url())
            .field("password_file", &self.password_file)
            .field("failover_hosts", &self.failover_hosts)
            .field("pool", &self.pool)
            .field("prefix", &self.prefix)
            .field("delivery_limit", &self.delivery_limit)
            .field("prefetch", &self.prefetch)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("reconnect_min_ms", &self.reconnect_min_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("confirm_timeout_ms", &self.confirm_timeout_ms)
            .field("consumer_timeout_ms", &self.consumer_timeout_ms)
            .finish()
    }
}

/// A list, or a string of comma-separated items (what an environment variable can hold).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Items {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match Items::deserialize(d)? {
        Items::List(items) => items,
        Items::Commas(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// An AMQP URL with its password (if any) replaced by `***`.
///
/// Text that does not parse as a URL is redacted by hand: everything between `://` and the last
/// `@` of the authority is hidden, so a malformed URL cannot leak its password either.
pub fn redact_url(raw: &str) -> String {
    if let Ok(mut url) = url::Url::parse(raw)
        && url.has_host()
    {
        if url.password().is_none() {
            return url.to_string();
        }
        if url.set_password(Some(REDACTED)).is_ok() {
            return url.to_string();
        }
    }
    // Unparseable, or parsed without an authority (`user:pw@host` alone parses as scheme `user`
    // and an opaque path): hide the whole user-info part.
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => ("", raw),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) if scheme.is_empty() => format!("{REDACTED}@{}{tail}", &authority[at + 1..]),
        Some(at) => format!("{scheme}://{REDACTED}@{}{tail}", &authority[at + 1..]),
        None => raw.to_owned(),
    }
}

fn validate_name(field: &'static str, value: &str) -> Result<(), QueueError> {
    if value.is_empty() || value.len() > 100 {
        return Err(invalid(field, "must be 1 to 100 characters long"));
    }
    let ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok || value.starts_with('.') || value.ends_with('.') {
        return Err(invalid(
            field,
            format!(
                "{value:?} may hold only letters, digits, '-', '_' and '.', and may not start or end with '.'"
            ),
        ));
    }
    Ok(())
}

/// Whether `pool` may name a worker pool (its job queue is `<prefix>.jobs.<pool>`): 1 to 64
/// letters, digits, `-` and `_`. No dots, so that no pool's queue is one of the coordinator's
/// (`<prefix>.jobs.dead`, `<prefix>.jobs.dead.coordinator`) and the worker user's read
/// permission (`deploy/rabbitmq.sh users`) covers exactly the job queues; not `dead`.
/// The reason when not.
pub fn check_pool(pool: &str) -> Result<(), String> {
    let ok = !pool.is_empty()
        && pool.len() <= 64
        && pool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        return Err(format!(
            "pool {:?}: use 1 to 64 letters, digits, '-' and '_'",
            pool.chars().take(70).collect::<String>()
        ));
    }
    if pool == "dead" {
        return Err(
            "pool \"dead\": taken by the dead-letter queue `<prefix>.jobs.dead`".to_owned(),
        );
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> QueueError {
    QueueError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://refit:s3cr%40t@mq.example.com/prod?heartbeat=10"),
            "amqps://refit:***@mq.example.com/prod?heartbeat=10"
        );
        assert_eq!(
            redact_url("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
    }

    #[test]
    fn redacts_unparseable_urls_by_hand() {
        for raw in [
            "amqp://guest:hunter2@bad host:5672/%2f",
            "guest:hunter2@host:99999/x",
            "amqp://guest:hun@ter2@[::1/",
        ] {
            let redacted = redact_url(raw);
            assert!(!redacted.contains("hunter2"), "{raw} -> {redacted}");
            assert!(!redacted.contains("hun@ter2"), "{raw} -> {redacted}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config = QueueConfig {
            url: "amqp://refit:topsecret@mq:5672/%2f".to_owned(),
            ..QueueConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("topsecret"), "{debug}");
        assert!(debug.contains("amqp://refit:***@mq:5672/%2f"), "{debug}");
    }

    #[test]
    fn defaults_validate() {
        let config = QueueConfig::default();
        config.validate().unwrap();
        assert_eq!(config.url, DEFAULT_URL);
        assert_eq!(config.pool, "default");
        assert_eq!(config.prefix, "refit");
        assert_eq!(config.delivery_limit, 5);
        assert_eq!(config.prefetch, 1);
        assert_eq!(config.consumer_timeout_ms, None);
        assert_eq!(config.address(), "127.0.0.1:5672");
    }

    #[test]
    fn rejects_bad_values_with_the_field_name() {
        type Mutation = fn(&mut QueueConfig);
        let cases: [(&str, Mutation); 8] = [
            ("pool", |c| c.pool = "dead".into()),
            ("pool", |c| c.pool = "a b".into()),
            ("pool", |c| c.pool = "dead.coordinator".into()),
            ("prefix", |c| c.prefix = String::new()),
            ("prefetch", |c| c.prefetch = 0),
            ("reconnect_min_ms", |c| {
                c.reconnect_min_ms = c.reconnect_max_ms + 1
            }),
            ("url", |c| c.url = "http://guest:pw@host/".into()),
            ("url", |c| c.url = "not a url with pw:hunter2@x".into()),
        ];
        for (field, mutate) in cases {
            let mut config = QueueConfig::default();
            mutate(&mut config);
            match config.validate() {
                Err(QueueError::InvalidConfig { field: f, reason }) => {
                    assert_eq!(f, field, "{reason}");
                    assert!(!reason.contains("hunter2"), "{reason}");
                    assert!(!reason.contains(":pw@"), "{reason}");
                }
                other => panic!("{field}: expected an invalid config, got {other:?}"),
            }
        }
    }

    #[test]
    fn deserialises_with_defaults_and_refuses_unknown_fields() {
        let config: QueueConfig =
            serde_json::from_str(r#"{"pool": "gpu", "delivery_limit": 2}"#).unwrap();
        assert_eq!(config.pool, "gpu");
        assert_eq!(config.delivery_limit, 2);
        assert_eq!(config.prefix, "refit");
        assert!(serde_json::from_str::<QueueConfig>(r#"{"poool": "gpu"}"#).is_err());
    }

    #[test]
    fn failover_hosts_take_the_urls_credentials_and_vhost() {
        let config: QueueConfig = serde_json::from_str(
            r#"{"url": "amqp://refit:pw@rmq-0:5672/jobs", "failover_hosts": "rmq-1:5673, 10.0.0.3:5672"}"#,
        )
        .unwrap();
        assert_eq!(
            config.urls().unwrap(),
            [
                "amqp://refit:pw@rmq-0:5672/jobs",
                "amqp://refit:pw@rmq-1:5673/jobs",
                "amqp://refit:pw@10.0.0.3:5672/jobs"
            ]
        );
        config.validate().unwrap();
        let list: QueueConfig =
            serde_json::from_str(r#"{"failover_hosts": ["rmq-1:5672"]}"#).unwrap();
        assert_eq!(list.urls().unwrap().len(), 2);
        for bad in ["rmq-1", "rmq-1:x", ":5672", "u@h:5672"] {
            let config = QueueConfig {
                failover_hosts: vec![bad.to_owned()],
                ..QueueConfig::default()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("failover_hosts"), "{bad}: {err}");
        }
    }
}
