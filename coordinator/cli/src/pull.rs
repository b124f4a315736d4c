//! `refit pull NAME@ALIAS|NAME@vN DIR`: copies a stored version down into a folder, e.g. to
//! ship it with an application, run `refit predict --model-dir DIR`, or load `model.onnx` in any
//! ONNX Runtime.
//!
//! Every file the manifest lists is downloaded and checked against the manifest's sha256 (a
//! mismatch fails the pull and names the file), written atomically (temporary file, then
//! rename), and `manifest.json` is written last, so a folder with a manifest holds the whole
//! version. A non-empty DIR is refused unless `--force` (which overwrites the version's files
//! and leaves anything else there alone). The store flags are `refit serve`'s.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use refit_io::registry::Registry;
use refit_proto::{Version, keys};
use serde_json::json;

use super::serve::store::{ModelRef, StoreArgs, Target};
use super::{Output, exit, print_json, print_stdout};

/// Arguments of `refit pull`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # the version the prod alias names, from the bucket (REFIT_S3_* from the local Garage)
  set -a; . .refit-local/garage/credentials.env; set +a
  refit pull financial@prod ./financial-prod

  # a fixed version from refit demo's local store, then parse with it
  refit pull --store .refit-local/demo demo@v3 /tmp/demo-v3
  refit predict --model-dir /tmp/demo-v3 \"send 50 dollars to Bob\"

Every file is checked against the manifest's sha256; manifest.json is written last. The store
flags are those of `refit serve` (see `refit serve --help`).")]
pub struct PullArgs {
    /// The version: NAME@ALIAS (the version the alias names now) or NAME@vN.
    #[arg(value_name = "NAME@ALIAS|NAME@vN")]
    model: ModelRef,

    /// The folder to write the version's files into (created if missing).
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// Write into a non-empty folder, overwriting the version's files there.
    #[arg(long)]
    force: bool,

    #[command(flatten)]
    store: StoreArgs,

    /// Output format: `json` prints {"model", "version", "dir", "files": [{"name", "size",
    /// "sha256"}]}.
    #[arg(long, short, value_enum, default_value_t = Output::Human)]
    output: Output,
}

pub(super) fn run(args: PullArgs) -> Result<ExitCode> {
    check_dir(&args.dir, args.force)?;
    let (store, store_name) = args.store.open()?;
    let registry = Registry::new(store);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let (version, written) = tokio.block_on(pull(&registry, &args.model, &args.dir))?;
    match args.output {
        Output::Json => print_json(&json!({
            "model": args.model.model,
            "version": version,
            "dir": args.dir,
            "files": written.iter().map(|(name, size, sha256)| json!({
                "name": name, "size": size, "sha256": sha256,
            })).collect::<Vec<_>>(),
        }))?,
        Output::Human => {
            let mut lines = vec![format!(
                "pulled {}@{version} from {store_name} into {}:",
                args.model.model,
                args.dir.display()
            )];
            for (name, size, sha256) in &written {
                lines.push(format!(
                    "  {name:<24} {size:>10} bytes  sha256 {}",
                    &sha256[..12.min(sha256.len())]
                ));
            }
            print_stdout(&lines.join("\n"))?;
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// Refuses a file, or a non-empty folder without `--force`.
fn check_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a folder", dir.display());
    }
    if dir.is_dir() && !force {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty: choose an empty folder, or add --force to overwrite the \
                 version's files there",
                dir.display()
            );
        }
    }
    Ok(())
}

/// What was written: (file name, size, sha256), manifest last.
type Written = Vec<(String, u64, String)>;

/// Downloads the version into `dir`; its number and the files written.
async fn pull(registry: &Registry, reference: &ModelRef, dir: &Path) -> Result<(Version, Written)> {
    let version = match &reference.target {
        Target::Version(v) => *v,
        Target::Alias(alias) => registry
            .alias(&reference.model, alias)
            .await
            .with_context(|| format!("cannot read alias {reference}"))?
            .with_context(|| format!("model {} has no alias {alias}", reference.model))?,
    };
    let manifest = registry.manifest(&reference.model, version).await?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, entry) in &manifest.files {
        // Names become file names: only plain ones (the manifest is data anyone with write
        // access to the bucket could have changed).
        if name.is_empty()
            || name == keys::MANIFEST
            || name.starts_with('.')
            || name.contains(['/', '\\', '\0'])
        {
            bail!("the manifest of {reference} ({version}) lists a file named {name:?}: refused");
        }
        let bytes = registry
            .file(&manifest, name)
            .await
            .with_context(|| format!("cannot download {name} of {}@{version}", reference.model))?;
        write_atomic(&dir.join(name), &bytes)?;
        written.push((
            name.clone(),
            bytes.len() as u64,
            entry.sha256.to_lowercase(),
        ));
    }
    let manifest_bytes = manifest.to_json();
    write_atomic(&dir.join(keys::MANIFEST), &manifest_bytes)?;
    written.push((
        keys::MANIFEST.to_owned(),
        manifest_bytes.len() as u64,
        keys::sha256_hex(&manifest_bytes),
    ));
    Ok((version, written))
}

/// Writes `bytes` to a temporary file next to `path`, then renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a checked file name");
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_empty_folders_need_force() {
        let dir = tempfile::tempdir().unwrap();
        check_dir(dir.path(), false).unwrap();
        check_dir(&dir.path().join("new"), false).unwrap();
        std::fs::write(dir.path().join("x"), "x").unwrap();
        let err = check_dir(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        check_dir(dir.path(), true).unwrap();
        let err = check_dir(&dir.path().join("x"), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a folder"), "{err}");
    }

    #[test]
    fn writes_are_atomic_and_leave_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        write_atomic(&path, b"bytes").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
