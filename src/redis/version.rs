//! The Redis server version, read at start-up (`sluice run`, `sluice check`)
//! from `INFO server`: sluice refuses servers older than [`MINIMUM`].
//!
//! Below 7.0 sluice would misbehave silently rather than fail: on 6.2
//! XAUTOCLAIM answers nil for entries deleted meanwhile (and has no list of
//! deleted ids), and `SET … NX GET` (the leases) does not exist. On a
//! cluster every master is asked.

use fred::prelude::*;
use fred::types::InfoKind;

/// The oldest Redis sluice runs against.
pub(crate) const MINIMUM: Version = Version {
    major: 7,
    minor: 0,
    patch: 0,
};

/// `major.minor.patch` of a Redis server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum VersionError {
    #[error("redis {server}: cannot read the server version (INFO server; an ACL user needs +info): {error}")]
    Info {
        server: String,
        error: fred::error::Error,
    },
    #[error("redis {server}: INFO server has no readable redis_version line")]
    Unknown { server: String },
    #[error("redis {server}: Redis {found} is too old; sluice needs Redis {MINIMUM} or later (XAUTOCLAIM and SET … NX GET behave differently before 7.0)")]
    TooOld { server: String, found: Version },
}

/// The `redis_version` of an `INFO server` reply.
pub(crate) fn parse_info(info: &str) -> Option<Version> {
    let text = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?
        .trim();
    let mut parts = text.split('.').map(|p| {
        // "7.0.15" or, on some builds, "7.2.4-rc1": digits up to the first non-digit.
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    Some(Version {
        major: parts.next()??,
        minor: parts.next().flatten().unwrap_or(0),
        patch: parts.next().flatten().unwrap_or(0),
    })
}

/// The decision for one server: its version, or why it is refused.
pub(crate) fn require(server: &str, info: &str) -> Result<Version, VersionError> {
    let found = parse_info(info).ok_or_else(|| VersionError::Unknown {
        server: server.to_string(),
    })?;
    if found < MINIMUM {
        return Err(VersionError::TooOld {
            server: server.to_string(),
            found,
        });
    }
    Ok(found)
}

/// Reads every server's version (each master of a cluster) and refuses
/// the first one below [`MINIMUM`]. Returns (server, version) pairs.
pub(crate) async fn check(client: &Client) -> Result<Vec<(String, Version)>, VersionError> {
    // A cluster client knows its masters (split_cluster only reads the
    // cached slot map); each is asked over the client's own connection.
    let primaries: Vec<Server> = match client.split_cluster() {
        Ok(parts) => parts
            .iter()
            .filter_map(|c| match &c.client_config().server {
                ServerConfig::Centralized { server } => Some(server.clone()),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut out = Vec::new();
    if primaries.is_empty() {
        let server = client
            .active_connections()
            .first()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "server".into());
        let info = client.info::<String>(Some(InfoKind::Server)).await;
        out.push((server.clone(), decide(server, info)?));
        return Ok(out);
    }
    for node in primaries {
        let server = node.to_string();
        let info = client
            .with_cluster_node(node)
            .info::<String>(Some(InfoKind::Server))
            .await;
        out.push((server.clone(), decide(server, info)?));
    }
    Ok(out)
}

fn decide(
    server: String,
    info: Result<String, fred::error::Error>,
) -> Result<Version, VersionError> {
    match info {
        Ok(info) => require(&server, &info),
        Err(error) => Err(VersionError::Info { server, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO_62: &str =
        "# Server\r\nredis_version:6.2.14\r\nredis_git_sha1:00000000\r\nredis_mode:standalone\r\n";
    const INFO_70: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\n";

    #[test]
    fn parses_redis_version_lines() {
        let v = |major, minor, patch| Version {
            major,
            minor,
            patch,
        };
        assert_eq!(parse_info(INFO_62), Some(v(6, 2, 14)));
        assert_eq!(parse_info(INFO_70), Some(v(7, 0, 15)));
        assert_eq!(parse_info("redis_version:7.2.4-rc1\n"), Some(v(7, 2, 4)));
        assert_eq!(parse_info("redis_version:8\n"), Some(v(8, 0, 0)));
        assert_eq!(parse_info("redis_mode:standalone\n"), None);
        assert_eq!(parse_info("redis_version:\n"), None);
    }

    #[test]
    fn refuses_below_seven_naming_the_minimum() {
        let err = require("10.0.0.5:6379", INFO_62).unwrap_err().to_string();
        assert!(
            err.contains("10.0.0.5:6379") && err.contains("6.2.14") && err.contains("7.0.0"),
            "{err}"
        );
        assert!(require("h", "redis_version:5.0.7\n").is_err());
        assert!(require("h", "redis_version:6.9.99\n").is_err());
        assert_eq!(require("h", INFO_70).unwrap().to_string(), "7.0.15");
        assert!(require("h", "redis_version:7.0.0\n").is_ok());
        assert!(require("h", "redis_version:7.4.1\n").is_ok());
        let unknown = require("h", "# Server\n").unwrap_err().to_string();
        assert!(unknown.contains("redis_version"), "{unknown}");
    }
}
