//! `SLUICE_…` environment overrides. They address keys by path with `__`
//! between segments and array indexes as numbers: `SLUICE_REDIS__URL`,
//! `SLUICE_CLICKHOUSE__PASSWORD`, `SLUICE_FLOW__0__BATCH__MAX_ROWS=1000`. A
//! value is read as a TOML literal when it parses as one (`1000`, `true`,
//! `["a","b"]`), else as a string.

use super::{ConfigError, Result};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "SLUICE_";

/// `SLUICE_…` variables that are not config keys.
pub(super) const NOT_CONFIG: &[&str] = &[
    "SLUICE_CONFIG",
    "SLUICE_LOG_FORMAT",
    "SLUICE_TEST_",
    "SLUICE_DEMO_",
    "SLUICE_BENCH_",
];

/// Sets the key addressed by `SLUICE_A__B__0__C` inside `doc`, creating
/// tables on the way; array indexes must already exist.
pub(super) fn apply_env_override(
    doc: &mut toml::Value,
    var: &str,
    value: toml::Value,
) -> Result<()> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    if path.iter().any(|s| s.is_empty()) {
        return Err(env_err("empty path segment (use `__` between keys)".into()));
    }
    let mut node = doc;
    for (depth, segment) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        node = match node {
            toml::Value::Table(table) => {
                if last {
                    table.insert(segment.clone(), value);
                    return Ok(());
                }
                table
                    .entry(segment.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(items) => {
                let index: usize = segment
                    .parse()
                    .map_err(|_| env_err(format!("`{segment}` must be an array index here")))?;
                let len = items.len();
                let slot = items.get_mut(index).ok_or_else(|| {
                    env_err(format!("index {index} is out of range (array has {len})"))
                })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            _ => {
                return Err(env_err(format!(
                    "`{}` is not a table or array",
                    path[..depth].join(".")
                )))
            }
        };
    }
    Ok(())
}

/// The key path of an override as serde_path_to_error prints it:
/// `SLUICE_FLOW__0__BATCH__MAX_ROWS` → `flow[0].batch.max_rows`.
pub(super) fn env_key_path(var: &str) -> String {
    let mut out = String::new();
    for segment in var[ENV_PREFIX.len()..].split("__") {
        let segment = segment.to_ascii_lowercase();
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

pub(super) fn parse_env_value(raw: &str) -> toml::Value {
    // Parse as the right-hand side of a TOML assignment; fall back to a string.
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
