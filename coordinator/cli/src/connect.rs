//! Where the coordinator is and which token to show it: [`ConnectArgs`] (flags shared by every
//! command that talks to the coordinator) resolved into a [`Connection`].
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
//! The address defaults to [`DEFAULT_URL`]. The token never appears in an error or a `Debug`
//! print.

use std::path::{Path, PathBuf};

use clap::Args;
use refit_io::Secret;
use serde::Deserialize;
use url::Url;

use super::client::ClientError;

/// Where the CLI looks for the coordinator when nothing else says.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
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
}
