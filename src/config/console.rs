//! `[console]`: where the console listens, who may use it (tokens with a
//! role), and how often its sampler reads Redis. Off unless the section is
//! present; `sluice run` serves it only when `listen` is set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where `sluice console` listens when neither `--listen` nor
/// `console.listen` says: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9400";

/// Most samples kept per stream (`retention / sample_every`).
pub const MAX_SAMPLES: u64 = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `ip:port`. `sluice run` serves the console only when this is set;
    /// `sluice console` defaults to [`DEFAULT_LISTEN`].
    #[serde(default)]
    pub listen: Option<String>,
    /// Who may sign in. Without tokens the console is open to anyone who can
    /// reach it, as an operator, which is allowed on loopback only.
    #[serde(default)]
    pub tokens: Vec<ConsoleToken>,
    /// How often the shared sampler reads every flow's streams.
    #[serde(default = "default_sample_every", with = "humantime_serde")]
    pub sample_every: Duration,
    /// How long samples are kept in memory (the rate sparklines' window).
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// How long a sign-in (session cookie) lasts.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: None,
            tokens: Vec::new(),
            sample_every: default_sample_every(),
            retention: default_retention(),
            session_ttl: default_session_ttl(),
        }
    }
}

/// `[[console.tokens]]`. The secret never appears in `Debug` output.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleToken {
    /// Who this is: shown in the page and in the action log.
    pub name: String,
    /// The secret. Prefer `token_file`.
    #[serde(default)]
    pub token: String,
    /// A file holding the secret (one trailing newline dropped); read at
    /// start-up into `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    pub role: Role,
}

impl std::fmt::Debug for ConsoleToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleToken")
            .field("name", &self.name)
            .field("token", &"***")
            .field("token_file", &self.token_file)
            .field("role", &self.role)
            .finish()
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read every page and API answer; no action.
    Viewer,
    /// Also replay, purge, pause, resume, trigger, add, remove, move.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

fn default_sample_every() -> Duration {
    Duration::from_secs(5)
}
fn default_retention() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_session_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

impl ConsoleConfig {
    /// The address to serve on: `--listen`, else `listen`, else loopback.
    pub fn listen_or_default(&self) -> &str {
        self.listen.as_deref().unwrap_or(DEFAULT_LISTEN)
    }

    /// Checks the section (after token files were read); the error is
    /// `(key, message)`. `listen` is checked as [`Self::listen_or_default`].
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        let listen = self.listen_or_default();
        let Ok(addr) = listen.parse::<SocketAddr>() else {
            return bad("console.listen", "must be ip:port, e.g. 127.0.0.1:9400");
        };
        if !addr.ip().is_loopback() && self.tokens.is_empty() {
            return Err((
                "console.listen".into(),
                format!("{listen} is not a loopback address: set console.tokens so that only people with a token get in"),
            ));
        }
        if self.sample_every < Duration::from_millis(200) {
            return bad("console.sample_every", "must be at least 200ms");
        }
        if self.retention < self.sample_every {
            return bad("console.retention", "must be at least console.sample_every");
        }
        if self.retention.as_millis() / self.sample_every.as_millis() > MAX_SAMPLES as u128 {
            return Err((
                "console.retention".into(),
                format!("keeps more than {MAX_SAMPLES} samples per stream: raise console.sample_every or lower this"),
            ));
        }
        if self.session_ttl < Duration::from_secs(60) {
            return bad("console.session_ttl", "must be at least 1m");
        }
        let mut names = std::collections::HashSet::new();
        let mut secrets = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let k = |f: &str| format!("console.tokens[{i}].{f}");
            let name_ok = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
            if !name_ok {
                return Err((
                    k("name"),
                    "must be 1-64 characters of [A-Za-z0-9_.@-]".into(),
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err((k("name"), format!("{:?} is listed twice", t.name)));
            }
            if t.token.is_empty() {
                return Err((k("token"), "set token or token_file".into()));
            }
            if t.token.len() < 16 {
                return Err((k("token"), "must be at least 16 characters".into()));
            }
            if t.token.len() > 512 || t.token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return Err((
                    k("token"),
                    "must be at most 512 visible ASCII characters".into(),
                ));
            }
            if !secrets.insert(t.token.as_str()) {
                return Err((k("token"), "is listed twice".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[redis]\nurl = \"redis://127.0.0.1:6379\"\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml_with_env(text, "t.toml", Vec::<(String, String)>::new())
            .map_err(|e| e.to_string())
    }

    const TOKEN: &str =
        "[[console.tokens]]\nname = \"ann\"\ntoken = \"0123456789abcdef-ann\"\nrole = \"viewer\"\n";

    #[test]
    fn off_unless_configured_and_loopback_by_default() {
        assert!(parse(BASE).unwrap().console.is_none());
        let c = parse(&format!("{BASE}[console]\n")).unwrap();
        let console = c.console.unwrap();
        assert_eq!(
            console.listen, None,
            "sluice run serves it only when listen is set"
        );
        assert_eq!(console.listen_or_default(), "127.0.0.1:9400");
        assert!(console.tokens.is_empty());
    }

    #[test]
    fn non_loopback_listen_needs_tokens_and_names_the_key() {
        let open = format!("{BASE}[console]\nlisten = \"0.0.0.0:9400\"\n");
        let err = parse(&open).unwrap_err();
        assert!(
            err.contains("console.listen") && err.contains("console.tokens"),
            "{err}"
        );
        parse(&format!("{open}{TOKEN}")).unwrap();
        parse(&format!("{BASE}[console]\nlisten = \"[::1]:9400\"\n")).unwrap();
        let err = parse(&format!("{BASE}[console]\nlisten = \"nine\"\n")).unwrap_err();
        assert!(err.contains("console.listen"), "{err}");
    }

    #[test]
    fn token_rules_name_the_key() {
        let with = |t: &str| parse(&format!("{BASE}[console]\n{t}"));
        let err = with(&TOKEN.replace("viewer", "admin")).unwrap_err();
        assert!(err.contains("console.tokens[0].role"), "{err}");
        let err = with(&TOKEN.replace("0123456789abcdef-ann", "short")).unwrap_err();
        assert!(
            err.contains("console.tokens[0].token") && err.contains("16"),
            "{err}"
        );
        let err = with(&format!("{TOKEN}{}", TOKEN.replace("-ann", "-bob"))).unwrap_err();
        assert!(
            err.contains("console.tokens[1].name") && err.contains("twice"),
            "{err}"
        );
        let err = with(&TOKEN.replace("name = \"ann\"", "name = \"a n\"")).unwrap_err();
        assert!(err.contains("console.tokens[0].name"), "{err}");
        let err = with("[[console.tokens]]\nname = \"x\"\nrole = \"viewer\"\n").unwrap_err();
        assert!(err.contains("console.tokens[0].token"), "{err}");
        let err = with("sample_every = \"10ms\"\n").unwrap_err();
        assert!(err.contains("console.sample_every"), "{err}");
        let err = with("sample_every = \"1s\"\nretention = \"1d\"\n").unwrap_err();
        assert!(err.contains("console.retention"), "{err}");
    }

    #[test]
    fn token_file_is_read_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("op");
        std::fs::write(&path, "file-secret-0123456789\n").unwrap();
        let text = format!(
            "{BASE}[console]\n[[console.tokens]]\nname = \"op\"\ntoken_file = \"{}\"\nrole = \"operator\"\n",
            path.display()
        );
        let c = parse(&text).unwrap();
        let console = c.console.unwrap();
        assert_eq!(console.tokens[0].token, "file-secret-0123456789");
        assert!(!format!("{console:?}").contains("file-secret"));
        let both = text.replace("token_file", "token = \"0123456789abcdef\"\ntoken_file");
        let err = parse(&both).unwrap_err();
        assert!(err.contains("console.tokens[0].token_file"), "{err}");
    }
}
