//! [`Broker`]: one AMQP connection per process, kept up by a background task.
//!
//! The task connects, watches the connection, and when it drops reconnects with exponential
//! backoff and jitter (`reconnect_min_ms` doubling up to `reconnect_max_ms`). Channels belong to
//! one connection, so they die with it: [`Publisher`](super::Publisher) reopens its channel and
//! [`Consumer`](super::Consumer) resubscribes on the next connection by themselves. lapin's own
//! automatic recovery is not used: the adapter wants typed errors and explicit waits ("is the
//! broker there within N seconds?") more than transparent replay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use rand::Rng;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::config::QueueConfig;
use super::error::{QueueError, is_refusal};
use super::topology::Topology;

/// How often the background task looks at a connection's state, besides reacting to its events.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A connection that lived this long counts as stable: when it drops, reconnect at once.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How long closing the connection at shutdown may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection manager. Cheap to clone; clones share the connection. The connection closes when
/// [`Broker::close`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: QueueConfig,
    redacted_url: String,
    link: watch::Receiver<Link>,
    wake: Arc<Notify>,
    token: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    _stop_on_drop: DropGuard,
}

/// The state of the managed connection.
#[derive(Clone)]
enum Link {
    /// Not connected; the last attempt's error, if any.
    Down {
        last_error: Option<lapin::Error>,
    },
    Up(Arc<Connection>),
    Closed,
}

impl Broker {
    /// Validates the config and starts connecting in the background; returns at once. Must be
    /// called within a Tokio runtime. See [`Broker::connect`] to wait for the connection.
    pub fn new(config: &QueueConfig) -> Result<Self, QueueError> {
        config.validate()?;
        let redacted_url = config.redacted_url();
        let nodes = config
            .urls()?
            .iter()
            .map(|url| Ok((amqp_uri(config, url)?, super::config::redact_url(url))))
            .collect::<Result<Vec<_>, QueueError>>()?;
        let properties = ConnectionProperties::default().with_connection_name(
            format!(
                "refit {}/{} (pid {})",
                config.prefix,
                config.pool,
                std::process::id()
            )
            .into(),
        );
        let (link_tx, link_rx) = watch::channel(Link::Down { last_error: None });
        let wake = Arc::new(Notify::new());
        let token = CancellationToken::new();
        let supervisor = Supervisor {
            nodes,
            properties,
            connect_timeout: config.connect_timeout(),
            reconnect_min: config.reconnect_min(),
            reconnect_max: config.reconnect_max(),
            link: link_tx,
            wake: wake.clone(),
            token: token.clone(),
        };
        let task = tokio::spawn(supervisor.run());
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                redacted_url,
                link: link_rx,
                wake,
                _stop_on_drop: token.clone().drop_guard(),
                token,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// [`Broker::new`], then waits up to `connect_timeout_ms` for the connection. The error of a
    /// broker that is not there says how to start one.
    pub async fn connect(config: &QueueConfig) -> Result<Self, QueueError> {
        let broker = Self::new(config)?;
        broker.wait_connected(config.connect_timeout()).await?;
        Ok(broker)
    }

    /// The config it was made with.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    /// The topology of its config.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.inner.config)
    }

    /// The broker's URL, password redacted.
    pub fn redacted_url(&self) -> &str {
        &self.inner.redacted_url
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.inner.link.borrow(), Link::Up(conn) if conn.status().connected())
    }

    /// Waits until connected. [`QueueError::Unreachable`] (transient) after `timeout`, with the
    /// last attempt's error and how to start RabbitMQ; [`QueueError::Refused`] (permanent) at once
    /// when the broker refuses the credentials or vhost.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), QueueError> {
        self.wait_for_connection(timeout).await.map(|_| ())
    }

    /// The current connection, waiting up to `connect_timeout_ms` for one. For what the adapter
    /// does not wrap (tests, metrics); prefer [`Broker::channel`].
    pub async fn connection(&self) -> Result<Arc<Connection>, QueueError> {
        self.wait_for_connection(self.inner.config.connect_timeout())
            .await
    }

    /// A new channel on the current connection, waiting up to `connect_timeout_ms` for one.
    pub async fn channel(&self) -> Result<Channel, QueueError> {
        let connection = self.connection().await?;
        match connection.create_channel().await {
            Ok(channel) => Ok(channel),
            Err(error) => {
                // Most likely the connection died since we looked: have it checked now.
                self.inner.wake.notify_one();
                Err(QueueError::amqp("open a channel")(error))
            }
        }
    }

    /// Stops reconnecting and closes the connection (channels on it close too). Waits for the
    /// background task to finish. Later calls fail with [`QueueError::Closed`].
    pub async fn close(&self) {
        self.inner.token.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            warn!(%error, "rabbitmq connection task failed");
        }
    }

    async fn wait_for_connection(&self, timeout: Duration) -> Result<Arc<Connection>, QueueError> {
        let mut link = self.inner.link.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last_error = {
                let current = link.borrow_and_update();
                match &*current {
                    Link::Up(conn) if conn.status().connected() => return Ok(conn.clone()),
                    Link::Up(_) => {
                        self.inner.wake.notify_one();
                        None
                    }
                    Link::Down {
                        last_error: Some(error),
                    } if is_refusal(error) => {
                        return Err(QueueError::Refused {
                            url: self.inner.redacted_url.clone(),
                            source: error.clone(),
                        });
                    }
                    Link::Down { last_error } => last_error.as_ref().map(ToString::to_string),
                    Link::Closed => return Err(QueueError::Closed),
                }
            };
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(QueueError::Closed),
                Err(_) => {
                    return Err(QueueError::Unreachable {
                        url: self.inner.redacted_url.clone(),
                        addr: self.inner.config.address(),
                        waited: timeout,
                        last_error,
                    });
                }
            }
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.inner.redacted_url)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl QueueConfig {
    /// Checks what a connection needs short of connecting (`--check-config`): every URL
    /// (failover hosts included) parses as AMQP, and `password_file` can be read.
    pub fn check_uris(&self) -> Result<(), QueueError> {
        for raw in self.urls()? {
            amqp_uri(self, &raw)?;
        }
        Ok(())
    }
}

/// The URI lapin connects to for one of the config's URLs (see `QueueConfig::urls`), with the
/// password from `password_file` and the configured heartbeat.
fn amqp_uri(config: &QueueConfig, raw: &str) -> Result<AMQPUri, QueueError> {
    // Parse errors are not shown: lapin's messages can quote the whole URL, password included.
    let mut uri: AMQPUri = raw.parse().map_err(|_| QueueError::InvalidConfig {
        field: "url",
        reason: format!("{} is not a valid AMQP URL", super::config::redact_url(raw)),
    })?;
    // lapin takes the host from `Url::domain`, which is empty for IP literals in some URL forms;
    // use the host as written.
    if let Ok(url) = url::Url::parse(raw) {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => uri.authority.host = ip.to_string(),
            Some(url::Host::Ipv6(ip)) => uri.authority.host = ip.to_string(),
            _ => {}
        }
    }
    if let Some(path) = &config.password_file {
        let password =
            std::fs::read_to_string(path).map_err(|error| QueueError::InvalidConfig {
                field: "password_file",
                reason: format!("cannot read {}: {error}", path.display()),
            })?;
        uri.authority.userinfo.password = password.trim_end_matches(['\r', '\n']).to_owned();
    }
    uri.query.heartbeat = Some(config.heartbeat_secs);
    Ok(uri)
}

/// The delay before reconnection attempt `failures + 1`: `min · 2^(failures-1)` capped at `max`,
/// of which a random half is taken off ("equal jitter"), so that workers cut off together do not
/// reconnect in lockstep.
pub(crate) fn backoff_delay(min: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let capped = min.saturating_mul(1 << exponent).min(max);
    let ms = u64::try_from(capped.as_millis()).unwrap_or(u64::MAX);
    let fixed = ms / 2;
    Duration::from_millis(fixed + rand::rng().random_range(0..=ms - fixed))
}

/// The background task behind a [`Broker`].
struct Supervisor {
    /// The nodes to connect to, in order (`url`, then the failover hosts), with their redacted
    /// URLs.
    nodes: Vec<(AMQPUri, String)>,
    properties: ConnectionProperties,
    connect_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    link: watch::Sender<Link>,
    wake: Arc<Notify>,
    token: CancellationToken,
}

/// How a watched connection ended.
enum Ended {
    /// The broker was closed; the connection is closed too.
    Closed,
    /// The connection is gone; the last error event, if any.
    Lost(Option<lapin::Error>),
}

impl Supervisor {
    /// The delay after the `failures`th failed attempt in a row: a moment when another node is
    /// still to be tried in this round, else the backoff of the rounds that failed.
    fn delay(&self, failures: u32) -> Duration {
        let nodes = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX).max(1);
        if !failures.is_multiple_of(nodes) {
            return self.reconnect_min;
        }
        backoff_delay(self.reconnect_min, self.reconnect_max, failures / nodes)
    }

    async fn run(self) {
        let mut failures: u32 = 0;
        // The node to try next; a lost or failed node moves it on.
        let mut node = 0;
        loop {
            let (uri, url) = &self.nodes[node % self.nodes.len()];
            let url = url.as_str();
            let attempt = tokio::select! {
                biased;
                () = self.token.cancelled() => break,
                attempt = tokio::time::timeout(
                    self.connect_timeout,
                    Connection::connect_uri(uri.clone(), self.properties.clone()),
                ) => attempt,
            };
            let error = match attempt {
                Ok(Ok(connection)) => {
                    if failures > 0 {
                        info!(url, failures, "reconnected to rabbitmq");
                    } else {
                        info!(url, "connected to rabbitmq");
                    }
                    let connected_at = tokio::time::Instant::now();
                    let connection = Arc::new(connection);
                    self.link.send_replace(Link::Up(connection.clone()));
                    let ended = self.watch(&connection).await;
                    drop(connection);
                    let Ended::Lost(error) = ended else {
                        break;
                    };
                    let reason = error.as_ref().map(ToString::to_string);
                    warn!(
                        url,
                        error = reason.as_deref().unwrap_or("closed"),
                        "lost the rabbitmq connection; reconnecting"
                    );
                    // The last event error may be any channel's: do not report it as the reason
                    // the broker is unreachable.
                    self.link.send_replace(Link::Down { last_error: None });
                    if connected_at.elapsed() >= STABLE_AFTER {
                        // Reconnect at once after a long-lived connection; back off if that fails.
                        failures = 0;
                        continue;
                    }
                    // A connection that keeps dropping right away: back off as for failures, and
                    // try another node.
                    failures = failures.saturating_add(1);
                    node += 1;
                    let delay = self.delay(failures);
                    tokio::select! {
                        biased;
                        () = self.token.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
                Ok(Err(error)) => error,
                Err(_) => lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting timed out after {:?}", self.connect_timeout),
                )),
            };
            failures = failures.saturating_add(1);
            node += 1;
            let delay = self.delay(failures);
            let next = self.nodes[node % self.nodes.len()].1.as_str();
            warn!(
                url, %error, failures, retry_in = ?delay, next,
                "cannot connect to rabbitmq (start it with deploy/rabbitmq.sh)"
            );
            self.link.send_replace(Link::Down {
                last_error: Some(error),
            });
            tokio::select! {
                biased;
                () = self.token.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.link.send_replace(Link::Closed);
        debug!("rabbitmq connection task stopped");
    }

    /// Returns when the connection is no longer usable or the broker is closed.
    async fn watch(&self, connection: &Connection) -> Ended {
        let mut events = Box::pin(connection.events_listener());
        let mut last_error = None;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.token.cancelled() => {
                    close(connection).await;
                    return Ended::Closed;
                }
                event = events.next() => match event {
                    // Channel errors are reported here too; the state check below tells.
                    Some(lapin::Event::Error(error)) => {
                        debug!(%error, "rabbitmq connection event: error");
                        last_error = Some(error);
                    }
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        warn!(
                            %reason,
                            "rabbitmq blocked publishing on this connection (resource alarm)"
                        );
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        info!("rabbitmq unblocked publishing on this connection");
                    }
                    Some(_) => {}
                    None => return Ended::Lost(last_error),
                },
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            if !connection.status().connected() {
                return Ended::Lost(last_error);
            }
        }
    }
}

/// Closes a channel and waits for the broker's answer (up to `CLOSE_TIMEOUT`); failures are
/// only logged, at debug level. Close what is done with rather than dropping it: a dropped channel
/// closes in the background, and at shutdown that close can cross the connection's own (lapin then
/// logs a connection error).
pub async fn close_channel(channel: &Channel, what: &str) {
    if !channel.status().connected() {
        return;
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "refit: done".into())).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(%error, what, "closing a rabbitmq channel failed"),
        Err(_) => debug!(what, "closing a rabbitmq channel timed out"),
    }
}

async fn close(connection: &Connection) {
    if !connection.status().connected() {
        return;
    }
    match tokio::time::timeout(
        CLOSE_TIMEOUT,
        connection.close(200, "refit shutting down".into()),
    )
    .await
    {
        Ok(Ok(())) => debug!("closed the rabbitmq connection"),
        Ok(Err(error)) => debug!(%error, "closing the rabbitmq connection failed"),
        Err(_) => warn!("closing the rabbitmq connection timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stays_bounded() {
        let min = Duration::from_millis(200);
        let max = Duration::from_secs(30);
        for _ in 0..100 {
            let first = backoff_delay(min, max, 1);
            assert!(first >= min / 2 && first <= min, "{first:?}");
            let fourth = backoff_delay(min, max, 4);
            assert!(
                fourth >= Duration::from_millis(800) && fourth <= Duration::from_millis(1600),
                "{fourth:?}"
            );
            let late = backoff_delay(min, max, u32::MAX);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }

    #[test]
    fn uri_keeps_ip_hosts_and_sets_the_heartbeat() {
        let config = QueueConfig {
            url: "amqp://refit:pw@127.0.0.1:5673/jobs".into(),
            heartbeat_secs: 7,
            ..QueueConfig::default()
        };
        let uri = amqp_uri(&config, &config.url).unwrap();
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.authority.userinfo.username, "refit");
        assert_eq!(uri.authority.userinfo.password, "pw");
        assert_eq!(uri.vhost, "jobs");
        assert_eq!(uri.query.heartbeat, Some(7));
    }

    #[test]
    fn password_file_replaces_the_urls_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amqp-password");
        std::fs::write(&path, "from-file\n").unwrap();
        let config = QueueConfig {
            url: "amqp://refit@mq.example.com/%2f".into(),
            password_file: Some(path),
            ..QueueConfig::default()
        };
        let uri = amqp_uri(&config, &config.url).unwrap();
        assert_eq!(uri.authority.userinfo.password, "from-file");
        assert_eq!(uri.authority.host, "mq.example.com");
        assert_eq!(uri.vhost, "/");
    }
}
