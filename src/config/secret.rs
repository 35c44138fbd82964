//! Secrets: password and token files read at load, and URLs with their
//! password hidden for logs. Errors name the key and the path, never the
//! content.

use std::path::Path;

use super::{Config, ConfigError, Result};

/// Hides the password of a `scheme://user:pass@host…` URL, for logs and
/// `sluice check`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the last `@` before any query; err towards
    // hiding (a password may hold an unescaped `/`).
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest[..query].rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{}", &rest[query..]),
            None => url.to_string(), // a user name alone
        },
        None => url.to_string(),
    }
}

/// Reads a secret file: its text, without one trailing newline. Errors
/// name the key and the path, never the content.
fn read_secret(key: &str, path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Key {
        key: key.to_string(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.to_string())
}

impl Config {
    /// Reads `*.password_file`s into the passwords (named connections too).
    pub(super) fn load_secrets(&mut self) -> Result<()> {
        let both = |key: &str| ConfigError::Key {
            key: key.to_string(),
            message: "set either password or password_file, not both".into(),
        };
        let remotes = self
            .redis_remote
            .iter_mut()
            .map(|(name, r)| (format!("redis.remote.{name}"), r));
        for (section, redis) in
            std::iter::once(("redis".to_string(), &mut self.redis)).chain(remotes)
        {
            if let Some(path) = &redis.password_file {
                let key = format!("{section}.password_file");
                if redis.password.is_some() {
                    return Err(both(&key));
                }
                redis.password = Some(read_secret(&key, path)?);
            }
        }
        for ch in self
            .clickhouse
            .iter_mut()
            .chain(self.clickhouse_remote.values_mut())
        {
            if let Some(path) = &ch.password_file {
                let key = format!("{}.password_file", ch.key());
                if !ch.password.is_empty() {
                    return Err(both(&key));
                }
                ch.password = read_secret(&key, path)?;
            }
        }
        if let Some(console) = &mut self.console {
            for (i, t) in console.tokens.iter_mut().enumerate() {
                if let Some(path) = &t.token_file {
                    let key = format!("console.tokens[{i}].token_file");
                    if !t.token.is_empty() {
                        return Err(ConfigError::Key {
                            key,
                            message: "set either token or token_file, not both".into(),
                        });
                    }
                    t.token = read_secret(&key, path)?;
                }
            }
        }
        Ok(())
    }
}
