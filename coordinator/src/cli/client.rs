//! The coordinator's HTTP API as the `refit` commands use it: where the coordinator is and which
//! token to send ([`ConnectArgs`] → [`Connection`]), and a blocking [`Client`] whose methods
//! return the API's typed bodies ([`crate::wire`]) or a [`ClientError`] that says what to do.
//!
//! The address and the token are taken from, in order: the flags `--url` / `--token`, the
//! environment variables `REFIT_URL` / `REFIT_TOKEN`, then the config file (`--config PATH`, else
//! `REFIT_CONFIG`, else `$XDG_CONFIG_HOME/refit/cli.toml` or `~/.config/refit/cli.toml`):
//!
//! ```toml
//! url = "http://127.0.0.1:8080"
//! token_file = "~/.config/refit/token"   # or: token = "…"; a relative path is read from the
//!                                        # config file's folder
//! ```
//!
//! The address defaults to [`DEFAULT_URL`]. The token never appears in an error, a log line or
//! a `Debug` print; requests are logged (at `debug`) by method, path, status and time only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use refit_worker::storage::Secret;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::exit;
use crate::wire::{
    AliasRequest, AliasView, DatasetBody, ErrorBody, JobList, JobState, JobView, ModelList,
    SubmitRequest, SubmitResponse, VersionList,
};

/// Where the CLI looks for the coordinator when nothing else says.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// How long to wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one API call may take in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a dataset upload may take (it carries up to 64 MiB).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// What the commands that talk to the coordinator print after their examples.
pub const CONNECT_HELP: &str = "\
The coordinator's address and token come from --url/--token, else REFIT_URL/REFIT_TOKEN, else
the config file (--config, REFIT_CONFIG, or ~/.config/refit/cli.toml with keys url, token or
token_file). deploy/local/up.sh prints the export lines for a local stack.";

/// The flags that say how to reach the coordinator, shared by every command that talks to it.
#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Coordinator")]
pub struct ConnectArgs {
    /// The coordinator's address [env: REFIT_URL] [default: `url` from the config file, else
    /// http://127.0.0.1:8080].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// The API token [env: REFIT_TOKEN]. Prefer the variable or the config file's `token_file`:
    /// a flag's value is visible to other users in the process list.
    #[arg(long, value_name = "TOKEN", value_parser = parse_token)]
    pub token: Option<Secret>,

    /// The CLI config file (TOML with `url` and `token` or `token_file`) [env: REFIT_CONFIG]
    /// [default: $XDG_CONFIG_HOME/refit/cli.toml, else ~/.config/refit/cli.toml].
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

fn parse_token(s: &str) -> Result<Secret, String> {
    let token = s.trim();
    if token.is_empty() {
        return Err("the token is empty".to_owned());
    }
    Ok(Secret::new(token))
}

/// The config file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<Secret>,
    token_file: Option<PathBuf>,
}

/// Where the coordinator is and what token to show it, with where each came from.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The coordinator's base URL.
    pub url: Url,
    /// Where the URL came from: `--url`, `REFIT_URL`, the config file or the default.
    pub url_source: String,
    /// The bearer token, if any was found.
    pub token: Option<Secret>,
    /// Where the token came from, for error messages (never the token itself).
    pub token_source: Option<String>,
}

impl ConnectArgs {
    /// Resolves flags, environment and config file into a [`Connection`].
    pub fn resolve(&self) -> Result<Connection, ClientError> {
        self.resolve_with(&|name| std::env::var(name).ok())
    }

    /// [`Self::resolve`] with the environment given as a lookup function.
    pub fn resolve_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Connection, ClientError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let mut url = self
            .url
            .clone()
            .map(|u| (u, "--url".to_owned()))
            .or_else(|| env("REFIT_URL").map(|u| (u, "REFIT_URL".to_owned())));
        let mut token = self
            .token
            .clone()
            .map(|t| (t, "--token".to_owned()))
            .or_else(|| env("REFIT_TOKEN").map(|t| (Secret::new(t.trim()), "REFIT_TOKEN".into())));

        // The config file: an explicit one must exist; the default one only when it is needed.
        let explicit = self
            .config
            .clone()
            .map(|p| (p, "--config"))
            .or_else(|| env("REFIT_CONFIG").map(|p| (PathBuf::from(p), "REFIT_CONFIG")));
        let file = match explicit {
            Some((path, source)) => {
                if !path.is_file() {
                    return Err(ClientError::Config(format!(
                        "the config file {} (from {source}) does not exist",
                        path.display()
                    )));
                }
                Some(path)
            }
            None if url.is_none() || token.is_none() => {
                default_config_path(&env).filter(|p| p.is_file())
            }
            None => None,
        };
        if let Some(path) = &file {
            let config = read_config_file(path)?;
            let shown = path.display();
            if url.is_none()
                && let Some(u) = config.url
            {
                url = Some((u, format!("url in {shown}")));
            }
            if token.is_none() {
                if let Some(t) = config.token {
                    token = Some((Secret::new(t.expose().trim()), format!("token in {shown}")));
                } else if let Some(token_file) = &config.token_file {
                    let token_path = resolve_relative(token_file, path, &env);
                    token = Some((
                        read_token_file(&token_path)?,
                        format!("token_file {}", token_path.display()),
                    ));
                }
            }
        }

        let (url, url_source) = url.unwrap_or_else(|| (DEFAULT_URL.to_owned(), "default".into()));
        let url = parse_base_url(&url, &url_source)?;
        let (token, token_source) = match token {
            Some((t, source)) if !t.expose().is_empty() => (Some(t), Some(source)),
            _ => (None, None),
        };
        Ok(Connection {
            url,
            url_source,
            token,
            token_source,
        })
    }
}

/// `$XDG_CONFIG_HOME/refit/cli.toml`, else `$HOME/.config/refit/cli.toml`.
fn default_config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("refit").join("cli.toml"))
}

fn read_config_file(path: &Path) -> Result<FileConfig, ClientError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Config(format!("cannot read the config file {shown}: {e}")))?;
    let config: FileConfig = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| {
            ClientError::Config(format!(
                "the config file {shown} is not valid (expected TOML with the keys url, token, \
                 token_file): {e}"
            ))
        })?;
    if config.token.is_some() && config.token_file.is_some() {
        return Err(ClientError::Config(format!(
            "the config file {shown} gives both token and token_file; keep one"
        )));
    }
    Ok(config)
}

/// `~/x` from `$HOME`; a relative path from the config file's folder.
fn resolve_relative(
    path: &Path,
    config_file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = env("HOME")
    {
        return Path::new(&home).join(rest);
    }
    if path.is_relative()
        && let Some(dir) = config_file.parent()
    {
        return dir.join(path);
    }
    path.to_path_buf()
}

fn read_token_file(path: &Path) -> Result<Secret, ClientError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Config(format!("cannot read the token_file {shown}: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ClientError::Config(format!(
            "the token_file {shown} is empty"
        )));
    }
    Ok(Secret::new(token))
}

fn parse_base_url(text: &str, source: &str) -> Result<Url, ClientError> {
    let bad = |why: &str| {
        ClientError::Config(format!(
            "the coordinator URL {text:?} (from {source}) {why}; expected e.g. {DEFAULT_URL}"
        ))
    };
    let url = Url::parse(text.trim()).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("must start with http:// or https:// and name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ClientError::Config(format!(
            "the coordinator URL (from {source}) holds a user name or password; remove it and \
             give the token with REFIT_TOKEN"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(url)
}

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

    /// `GET /v1/jobs/{id}`: a job with its events.
    pub fn job(&self, id: &str) -> Result<Answer<JobView>, ClientError> {
        self.call(Method::GET, &["jobs", id], &[], Body::None, REQUEST_TIMEOUT)
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

    /// `PUT /v1/models/{name}/aliases/{alias}`.
    pub fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: &str,
    ) -> Result<Answer<AliasView>, ClientError> {
        let body = AliasRequest {
            version: version.to_owned(),
        };
        self.call(
            Method::PUT,
            &["models", model, "aliases", alias],
            &[],
            Body::Json(serde_json::to_value(body).expect("an AliasRequest serialises")),
            REQUEST_TIMEOUT,
        )
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
    use std::collections::HashMap;

    use super::*;

    fn resolve(args: &ConnectArgs, vars: &[(&str, &str)]) -> Result<Connection, ClientError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        args.resolve_with(&|name| vars.get(name).cloned())
    }

    #[test]
    fn flags_beat_environment_beats_config_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("refit")).unwrap();
        std::fs::write(dir.path().join("token"), "  file-token-0123456789\n").unwrap();
        std::fs::write(
            dir.path().join("refit/cli.toml"),
            "url = \"http://file:1\"\ntoken_file = \"../token\"\n",
        )
        .unwrap();

        // Nothing anywhere: the default URL, no token.
        let c = resolve(&ConnectArgs::default(), &[]).unwrap();
        assert_eq!(c.url.as_str(), "http://127.0.0.1:8080/");
        assert!(c.token.is_none() && c.token_source.is_none());

        // The default config file, with a token file relative to it.
        let c = resolve(&ConnectArgs::default(), &[("XDG_CONFIG_HOME", &xdg)]).unwrap();
        assert_eq!(c.url.as_str(), "http://file:1/");
        assert_eq!(c.token.unwrap().expose(), "file-token-0123456789");
        assert!(c.token_source.unwrap().starts_with("token_file "));

        // The environment beats the file.
        let env = [
            ("XDG_CONFIG_HOME", xdg.as_str()),
            ("REFIT_URL", "https://env:2/refit"),
            ("REFIT_TOKEN", "env-token"),
        ];
        let c = resolve(&ConnectArgs::default(), &env).unwrap();
        assert_eq!(c.url.as_str(), "https://env:2/refit");
        assert_eq!(c.url_source, "REFIT_URL");
        assert_eq!(c.token.unwrap().expose(), "env-token");

        // Flags beat both.
        let args = ConnectArgs {
            url: Some("http://flag:3".into()),
            token: Some(Secret::new("flag-token")),
            config: None,
        };
        let c = resolve(&args, &env).unwrap();
        assert_eq!(c.url.as_str(), "http://flag:3/");
        assert_eq!(c.token.unwrap().expose(), "flag-token");
        assert_eq!(c.token_source.as_deref(), Some("--token"));

        // Empty variables count as unset.
        let c = resolve(
            &ConnectArgs::default(),
            &[("REFIT_URL", ""), ("REFIT_TOKEN", " ")],
        );
        assert_eq!(c.unwrap().url.as_str(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn an_explicit_config_file_must_exist_and_be_valid() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let args = ConnectArgs {
            config: Some(missing.clone()),
            ..ConnectArgs::default()
        };
        let err = resolve(&args, &[]).unwrap_err().to_string();
        assert!(
            err.contains("does not exist") && err.contains("--config"),
            "{err}"
        );

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "uri = \"http://x\"\n").unwrap();
        let err = resolve(
            &ConnectArgs::default(),
            &[("REFIT_CONFIG", bad.to_str().unwrap())],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("uri") && err.contains("bad.toml"), "{err}");

        let both = dir.path().join("both.toml");
        std::fs::write(&both, "token = \"secret-abc\"\ntoken_file = \"t\"\n").unwrap();
        let args = ConnectArgs {
            config: Some(both),
            ..ConnectArgs::default()
        };
        let err = resolve(&args, &[]).unwrap_err().to_string();
        assert!(err.contains("both token and token_file"), "{err}");
        assert!(!err.contains("secret-abc"), "{err}");

        let token = dir.path().join("inline.toml");
        std::fs::write(&token, "token = \"inline-token\"\n").unwrap();
        let args = ConnectArgs {
            config: Some(token),
            ..ConnectArgs::default()
        };
        let c = resolve(&args, &[]).unwrap();
        assert_eq!(c.token.unwrap().expose(), "inline-token");
    }

    #[test]
    fn bad_urls_are_explained() {
        for (url, expected) in [
            ("localhost:8080", "http://"),
            ("ftp://x", "http://"),
            ("not a url", "is not a URL"),
            ("http://user:pw@x", "user name or password"),
            ("http://x/?a=1", "query"),
        ] {
            let args = ConnectArgs {
                url: Some(url.into()),
                ..ConnectArgs::default()
            };
            let err = resolve(&args, &[]).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
            assert!(!err.contains("pw"), "{err}");
        }
    }

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
