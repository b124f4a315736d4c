//! [`RoleUsers`]: the coordinator and worker RabbitMQ users `deploy/rabbitmq.sh users` creates
//! (least privilege, see deploy/README.md), made for one test's queue prefix with random
//! passwords and deleted at the end.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

use super::api::random_hex;
use super::{env_or, read_env_file, repo, unique};

/// A test's coordinator and worker users.
pub struct RoleUsers {
    /// The coordinator's AMQP URL, with its password.
    pub coordinator_url: String,
    /// The workers' AMQP URL, with its password.
    pub worker_url: String,
    /// Both passwords (no log line may hold them).
    pub passwords: [String; 2],
    names: [String; 2],
}

/// `rabbitmqctl` (`REFIT_TEST_RABBITMQCTL` overrides it).
pub fn rabbitmqctl() -> String {
    env_or("REFIT_TEST_RABBITMQCTL", "rabbitmqctl")
}

impl RoleUsers {
    /// Runs `deploy/rabbitmq.sh users` for `prefix` on the broker of `admin_url` (its host,
    /// port and vhost); the users' URLs.
    pub fn create(prefix: &str, admin_url: &str) -> Result<Self> {
        let url = url::Url::parse(admin_url).context("REFIT_TEST_AMQP_URL is not a URL")?;
        let base = unique("u");
        let names = [format!("{base}-coordinator"), format!("{base}-worker")];
        let passwords = [random_hex(16), random_hex(16)];
        let vhost = match url.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            path => urlencoding_decode(path),
        };
        let output = Command::new(repo().join("deploy/rabbitmq.sh"))
            .arg("users")
            .env("REFIT_RABBITMQ_HOST", url.host_str().unwrap_or("127.0.0.1"))
            .env(
                "REFIT_RABBITMQ_PORT",
                url.port().unwrap_or(5672).to_string(),
            )
            .env("REFIT_RABBITMQ_PREFIX", prefix)
            .env("REFIT_RABBITMQ_VHOST", &vhost)
            .env("REFIT_RABBITMQ_COORDINATOR_USER", &names[0])
            .env("REFIT_RABBITMQ_WORKER_USER", &names[1])
            .env("REFIT_RABBITMQ_COORDINATOR_PASSWORD", &passwords[0])
            .env("REFIT_RABBITMQ_WORKER_PASSWORD", &passwords[1])
            .stdin(Stdio::null())
            .output()
            .context("cannot run deploy/rabbitmq.sh users")?;
        ensure!(
            output.status.success(),
            "deploy/rabbitmq.sh users failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        for password in &passwords {
            ensure!(
                !stdout.contains(password.as_str())
                    && !String::from_utf8_lossy(&output.stderr).contains(password.as_str()),
                "deploy/rabbitmq.sh users printed a password"
            );
        }
        let printed = {
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("users.env");
            std::fs::write(&file, &stdout)?;
            read_env_file(&file)
        };
        let with_password = |name: &str, password: &str| -> Result<String> {
            let printed = printed.get(name).with_context(|| {
                format!("deploy/rabbitmq.sh users printed no {name}:\n{stdout}")
            })?;
            let mut url = url::Url::parse(printed)?;
            url.set_password(Some(password))
                .map_err(|()| anyhow::anyhow!("cannot set a password in {printed}"))?;
            Ok(url.to_string())
        };
        Ok(Self {
            coordinator_url: with_password("REFIT_COORDINATOR_AMQP_URL", &passwords[0])?,
            worker_url: with_password("REFIT_WORKER_AMQP_URL", &passwords[1])?,
            passwords,
            names,
        })
    }

    /// Deletes both users (errors ignored, as in any cleanup).
    pub fn delete(&self) {
        for name in &self.names {
            let _ = Command::new(rabbitmqctl())
                .args(["-q", "delete_user", name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `%2f` → `/` (the only escape a vhost in the tests' URLs has).
fn urlencoding_decode(path: &str) -> String {
    path.replace("%2f", "/").replace("%2F", "/")
}
