//! The coordinator's HTTP API as the `refit` commands use it: a blocking [`Client`] for a
//! [`Connection`] (see `connect`) whose methods return the API's typed bodies
//! ([`refit_proto::wire`]) or a [`ClientError`] that says what to do. The token never appears
//! in an error, a log line or a `Debug` print; requests are logged (at `debug`) by method, path,
//! status and time only.

use std::time::{Duration, Instant};

use refit_io::Secret;
use refit_proto::evaluation::{Comparison, Evaluation};
use refit_proto::promotion::{AliasHistory, GateResult};
use refit_proto::wire::{
    AliasRequest, AliasView, DatasetBody, ErrorBody, JobList, JobState, JobView, ModelList,
    SubmitRequest, SubmitResponse, VersionList,
};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use url::Url;

use super::connect::{ConnectArgs, Connection};
use super::exit;

/// How long to wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one API call may take in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a dataset upload may take (it carries up to 64 MiB).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a call to the coordinator failed, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The flags, environment or config file are wrong.
    #[error("{0}")]
    Config(String),
    /// No connection (refused, DNS, TLS, connect timeout, connection lost).
    #[error(
        "cannot reach the coordinator at {url} ({cause}). Is it running? deploy/local/up.sh \
         starts a local stack; or set REFIT_URL"
    )]
    Unreachable {
        /// The coordinator's URL.
        url: String,
        /// What the connection attempt ran into.
        cause: String,
    },
    /// Connected, but no answer in time.
    #[error(
        "the coordinator at {url} did not answer within {secs} s; it may be overloaded or \
         stuck (its log says more), or REFIT_URL points at something else"
    )]
    Timeout {
        /// The coordinator's URL.
        url: String,
        /// The timeout that ran out.
        secs: u64,
    },
    /// 401: no token, or the wrong one.
    #[error("{}", unauthorized_message(.url, .token_source.as_deref()))]
    Unauthorized {
        /// The coordinator's URL.
        url: String,
        /// Where the token that was refused came from; `None` when none was sent.
        token_source: Option<String>,
    },
    /// The API answered with an error body.
    #[error("{message} (the coordinator answered {status} {code})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable error code, e.g. `not_found`.
        code: String,
        /// For people.
        message: String,
        /// The whole error body, as sent.
        body: serde_json::Value,
    },
    /// Something answered that does not speak the API.
    #[error("unexpected answer from {url}: {what}. Is REFIT_URL a refit coordinator?")]
    Protocol {
        /// The coordinator's URL.
        url: String,
        /// What was wrong with the answer.
        what: String,
    },
}

fn unauthorized_message(url: &str, token_source: Option<&str>) -> String {
    match token_source {
        Some(source) => format!(
            "the coordinator at {url} refused the token (from {source}): set REFIT_TOKEN to the \
             token deploy/local/up.sh printed, or to the coordinator's coordinator.token"
        ),
        None => format!(
            "the coordinator at {url} needs a token and none was given: set REFIT_TOKEN to the \
             token deploy/local/up.sh printed (or pass --token, or put token_file in \
             ~/.config/refit/cli.toml)"
        ),
    }
}

impl ClientError {
    /// The process exit code this error ends `refit` with ([`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => exit::UNREACHABLE,
            ClientError::Unauthorized { .. } => exit::TOKEN_REFUSED,
            ClientError::Api { code, .. } if code == "rejected" => exit::REJECTED,
            ClientError::Api { code, .. } if code == "gate_failed" => exit::GATE_FAILED,
            ClientError::Config(_) | ClientError::Api { .. } | ClientError::Protocol { .. } => {
                exit::ERROR
            }
        }
    }
}

/// An API answer: the typed body and the JSON exactly as sent (what `--output json` prints, so
/// that fields this CLI does not know yet are kept).
#[derive(Clone, Debug)]
pub struct Answer<T> {
    /// The body, typed.
    pub value: T,
    /// The body as sent.
    pub json: serde_json::Value,
}

/// A request body.
enum Body {
    None,
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

/// Filters for `GET /v1/jobs`.
#[derive(Clone, Debug, Default)]
pub struct JobQuery {
    /// Only this model's jobs.
    pub model: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// At most this many (the API caps a page at 500).
    pub limit: u32,
    /// Continue after this job (a previous page's `next_cursor`).
    pub cursor: Option<String>,
}

/// A blocking client for the coordinator's `/v1` API.
pub struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    base: Url,
    token: Option<Secret>,
    token_source: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `connection`.
    pub fn new(connection: Connection) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("refit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the async runtime: {e}")))?;
        Ok(Self {
            http,
            runtime,
            base: connection.url,
            token: connection.token,
            token_source: connection.token_source,
        })
    }

    /// Resolves `args` and builds a client.
    pub fn from_args(args: &ConnectArgs) -> Result<Self, ClientError> {
        Self::new(args.resolve()?)
    }

    /// The coordinator's base URL, for messages.
    pub fn url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `POST /v1/datasets?ext=…`: stores a dataset content-addressed.
    pub fn upload_dataset(&self, bytes: Vec<u8>, ext: &str) -> Result<DatasetBody, ClientError> {
        self.call(
            Method::POST,
            &["datasets"],
            &[("ext", ext.to_owned())],
            Body::Bytes(bytes),
            UPLOAD_TIMEOUT,
        )
        .map(|a| a.value)
    }

    /// `POST /v1/jobs`: decides and stores a job; a rejected decision is a
    /// [`ClientError::Api`] with code `rejected` and the report in `body.error.details`.
    pub fn submit(&self, request: &SubmitRequest) -> Result<Answer<SubmitResponse>, ClientError> {
        self.post_json(&["jobs"], request)
    }

    /// `POST /v1/check`: the decision without a job.
    pub fn check(&self, request: &SubmitRequest) -> Result<Answer<SubmitResponse>, ClientError> {
        self.post_json(&["check"], request)
    }

    /// `GET /v1/jobs`: one page of jobs, newest first.
    pub fn jobs(&self, query: &JobQuery) -> Result<Answer<JobList>, ClientError> {
        let mut params = vec![("limit", query.limit.to_string())];
        if let Some(model) = &query.model {
            params.push(("model", model.clone()));
        }
        if let Some(state) = query.state {
            params.push(("state", state.as_str().to_owned()));
        }
        if let Some(cursor) = &query.cursor {
            params.push(("cursor", cursor.clone()));
        }
        self.call(Method::GET, &["jobs"], &params, Body::None, REQUEST_TIMEOUT)
    }

    /// `GET /v1/jobs/{id}`: a job with all its events (read a page at a time).
    pub fn job(&self, id: &str) -> Result<Answer<JobView>, ClientError> {
        let mut answer = self.job_page(id, 0, None)?;
        while answer.value.more_events {
            let after = answer.value.events.last().map_or(0, |e| e.seq);
            let page = self.job_page(id, after, None)?;
            answer.value.events.extend(page.value.events);
            answer.value.more_events = page.value.more_events;
            if let (Some(all), Some(more)) = (
                answer
                    .json
                    .get_mut("events")
                    .and_then(serde_json::Value::as_array_mut),
                page.json
                    .get("events")
                    .and_then(serde_json::Value::as_array),
            ) {
                all.extend(more.iter().cloned());
            }
        }
        if let Some(object) = answer.json.as_object_mut() {
            object.remove("more_events");
        }
        Ok(answer)
    }

    /// `GET /v1/jobs/{id}` with one page of its events: those after `after`, at most `limit`
    /// (the coordinator's default when `None`; 0 for the job alone).
    pub fn job_page(
        &self,
        id: &str,
        after: i64,
        limit: Option<u32>,
    ) -> Result<Answer<JobView>, ClientError> {
        let mut params = Vec::new();
        if after > 0 {
            params.push(("events_after", after.to_string()));
        }
        if let Some(limit) = limit {
            params.push(("events_limit", limit.to_string()));
        }
        self.call(
            Method::GET,
            &["jobs", id],
            &params,
            Body::None,
            REQUEST_TIMEOUT,
        )
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub fn cancel(&self, id: &str) -> Result<Answer<JobView>, ClientError> {
        self.call(
            Method::POST,
            &["jobs", id, "cancel"],
            &[],
            Body::None,
            REQUEST_TIMEOUT,
        )
    }

    /// `GET /v1/models`.
    pub fn models(&self) -> Result<Answer<ModelList>, ClientError> {
        self.call(Method::GET, &["models"], &[], Body::None, REQUEST_TIMEOUT)
    }

    /// `GET /v1/models/{name}/versions`.
    pub fn versions(&self, model: &str) -> Result<Answer<VersionList>, ClientError> {
        self.call(
            Method::GET,
            &["models", model, "versions"],
            &[],
            Body::None,
            REQUEST_TIMEOUT,
        )
    }

    /// `PUT /v1/models/{name}/aliases/{alias}`: moves the alias if the version passes its gate
    /// (or with `request.force`); a failed gate is [`ClientError::Api`] with code `gate_failed`
    /// and the gate's checks in `body.error.details`.
    pub fn set_alias(
        &self,
        model: &str,
        alias: &str,
        request: &AliasRequest,
    ) -> Result<Answer<AliasView>, ClientError> {
        self.call(
            Method::PUT,
            &["models", model, "aliases", alias],
            &[],
            Body::Json(serde_json::to_value(request).expect("an AliasRequest serialises")),
            REQUEST_TIMEOUT,
        )
    }

    /// `GET /v1/models/{name}/aliases/{alias}/history`.
    pub fn alias_history(
        &self,
        model: &str,
        alias: &str,
    ) -> Result<Answer<AliasHistory>, ClientError> {
        self.get(&["models", model, "aliases", alias, "history"], &[])
    }

    /// `GET /v1/models/{name}/aliases/{alias}/gate?version=`: the gate's decision, nothing moved.
    pub fn gate(
        &self,
        model: &str,
        alias: &str,
        version: &str,
    ) -> Result<Answer<GateResult>, ClientError> {
        self.get(
            &["models", model, "aliases", alias, "gate"],
            &[("version", version.to_owned())],
        )
    }

    /// `GET /v1/models/{name}/versions/{version}/evaluation`.
    pub fn evaluation(
        &self,
        model: &str,
        version: &str,
    ) -> Result<Answer<Evaluation>, ClientError> {
        self.get(&["models", model, "versions", version, "evaluation"], &[])
    }

    /// `GET /v1/models/{name}/compare?before=&after=`.
    pub fn compare(
        &self,
        model: &str,
        before: &str,
        after: &str,
    ) -> Result<Answer<Comparison>, ClientError> {
        self.get(
            &["models", model, "compare"],
            &[("before", before.to_owned()), ("after", after.to_owned())],
        )
    }

    fn get<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<Answer<T>, ClientError> {
        self.call(Method::GET, path, query, Body::None, REQUEST_TIMEOUT)
    }

    fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &[&str],
        body: &B,
    ) -> Result<Answer<T>, ClientError> {
        let body = serde_json::to_value(body).expect("request bodies serialise");
        self.call(Method::POST, path, &[], Body::Json(body), REQUEST_TIMEOUT)
    }

    /// `{base}/v1/{segments…}?{query}`, each segment percent-encoded.
    fn endpoint(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Body,
        timeout: Duration,
    ) -> Result<Answer<T>, ClientError> {
        let url = self.endpoint(segments, query);
        let path = url.path().to_owned();
        let mut request = self
            .http
            .request(method.clone(), url)
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            // `bearer_auth` marks the header sensitive, so reqwest never logs it either.
            request = request.bearer_auth(token.expose());
        }
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Bytes(bytes) => request
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
        };
        let started = Instant::now();
        let result = self.runtime.block_on(async {
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        });
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, bytes) = match result {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(%method, %path, ms, "coordinator request failed");
                return Err(self.transport_error(&e, timeout));
            }
        };
        tracing::debug!(%method, %path, status = status.as_u16(), ms, "coordinator request");
        if status.is_success() {
            let json: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|_| self.protocol(status, &bytes))?;
            let value = T::deserialize(&json).map_err(|e| ClientError::Protocol {
                url: self.url().to_owned(),
                what: format!("{method} {path} answered JSON this refit does not read: {e}"),
            })?;
            return Ok(Answer { value, json });
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: self.url().to_owned(),
                token_source: self.token_source.clone(),
            });
        }
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| self.protocol(status, &bytes))?;
        let error: ErrorBody =
            serde_json::from_value(body.clone()).map_err(|_| self.protocol(status, &bytes))?;
        Err(ClientError::Api {
            status: status.as_u16(),
            code: error.error.code,
            message: error.error.message,
            body,
        })
    }

    fn protocol(&self, status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
        let text = String::from_utf8_lossy(bytes);
        let snippet: String = text.trim().chars().take(120).collect();
        let what = if snippet.is_empty() {
            format!("HTTP {status} with no refit JSON body")
        } else {
            format!("HTTP {status} with no refit JSON body ({snippet:?})")
        };
        ClientError::Protocol {
            url: self.url().to_owned(),
            what,
        }
    }

    fn transport_error(&self, error: &reqwest::Error, timeout: Duration) -> ClientError {
        let url = self.url().to_owned();
        if error.is_timeout() && !error.is_connect() {
            return ClientError::Timeout {
                url,
                secs: timeout.as_secs(),
            };
        }
        ClientError::Unreachable {
            url,
            cause: transport_cause(error),
        }
    }
}

/// A short reason for a failed connection: "connection refused", "connect timeout", or the
/// innermost error's message (which, unlike reqwest's own, does not repeat the URL).
fn transport_cause(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("no connection within {} s", CONNECT_TIMEOUT.as_secs());
    }
    let mut source = std::error::Error::source(error);
    let mut innermost = None;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".to_owned(),
                std::io::ErrorKind::TimedOut => return "connection timed out".to_owned(),
                _ => {}
            }
        }
        innermost = Some(e);
        source = e.source();
    }
    match innermost {
        Some(e) => e.to_string(),
        None if error.is_connect() => "cannot connect".to_owned(),
        None => "the connection failed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_a_base_path_and_encode_segments() {
        let client = |base: &str| {
            Client::new(Connection {
                url: Url::parse(base).unwrap(),
                url_source: "test".into(),
                token: None,
                token_source: None,
            })
            .unwrap()
        };
        let c = client("http://h:1/refit/");
        assert_eq!(
            c.endpoint(&["jobs", "a/b c"], &[("model", "x&y".into())])
                .as_str(),
            "http://h:1/refit/v1/jobs/a%2Fb%20c?model=x%26y"
        );
        let c = client("http://h:1");
        assert_eq!(
            c.endpoint(&["models"], &[]).as_str(),
            "http://h:1/v1/models"
        );
        assert_eq!(c.url(), "http://h:1");
    }

    #[test]
    fn the_token_never_shows_in_debug_or_errors() {
        let c = Client::new(Connection {
            url: Url::parse("http://h:1").unwrap(),
            url_source: "test".into(),
            token: Some(Secret::new("sekrit-token-value")),
            token_source: Some("REFIT_TOKEN".into()),
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
        let args = ConnectArgs {
            token: Some(Secret::new("sekrit-token-value")),
            ..ConnectArgs::default()
        };
        assert!(!format!("{args:?}").contains("sekrit"));
        let err = ClientError::Unauthorized {
            url: "http://h:1".into(),
            token_source: Some("REFIT_TOKEN".into()),
        };
        assert!(
            err.to_string()
                .contains("refused the token (from REFIT_TOKEN)")
        );
        assert_eq!(err.exit_code(), exit::TOKEN_REFUSED);
    }
}
