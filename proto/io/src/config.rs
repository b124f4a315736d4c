//! Configuration layering, the same for every refit service: built-in defaults (the config
//! type's serde defaults), then a TOML file (`--config`), then `REFIT__<SECTION>__<KEY>`
//! environment variables (e.g. `REFIT__S3__SECRET_ACCESS_KEY`). Each service's config type and
//! its `validate` live with the service.

use std::path::Path;

/// The `REFIT__<SECTION>__<KEY>` environment layer both services read.
pub fn env_layer() -> config::Environment {
    config::Environment::with_prefix("REFIT")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
}

/// Reads built-in defaults (`T`'s serde defaults), then `file` (TOML, required when given), then
/// `env` into a `T`. Validation is the caller's.
pub fn read_layers<T: serde::de::DeserializeOwned>(
    file: Option<&Path>,
    env: config::Environment,
) -> Result<T, config::ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder.add_source(env).build()?.try_deserialize()
}
