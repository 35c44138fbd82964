//! Building fred clients: one per role, so that a blocking XREADGROUP never
//! holds up acks, claims or metrics sampling.
//!
//! With `redis.cluster` (or a `redis-cluster://` URL, or `redis.nodes`) the
//! client is a cluster client: it learns the slot map from the seed nodes,
//! routes each command by its key's slot, follows MOVED/ASK and refreshes
//! the map after a failover. Commands must then name their key for routing:
//! see `stream::commands`.

use std::time::Duration;

use fred::prelude::*;

use crate::config::RedisConfig;

/// Connects a client; it reconnects forever with capped exponential backoff.
pub async fn connect(redis: &RedisConfig) -> Result<Client, fred::error::Error> {
    connect_with_timeout(redis, redis.command_timeout).await
}

/// A client for blocking reads: its timeout must exceed the BLOCK time.
pub(crate) async fn connect_blocking(
    redis: &RedisConfig,
    block: Duration,
) -> Result<Client, fred::error::Error> {
    connect_with_timeout(redis, redis.command_timeout + block).await
}

async fn connect_with_timeout(
    redis: &RedisConfig,
    timeout: Duration,
) -> Result<Client, fred::error::Error> {
    let mut config = if redis.is_cluster() {
        let mut config = Config::from_url_clustered(&redis.url)?;
        if let ServerConfig::Clustered { hosts, .. } = &mut config.server {
            for node in &redis.nodes {
                let (host, port) = node.rsplit_once(':').unwrap_or((node, "6379"));
                hosts.push(Server::new(host, port.parse().unwrap_or(6379)));
            }
        }
        config
    } else {
        Config::from_url(&redis.url)?
    };
    if let Some(user) = &redis.username {
        config.username = Some(user.clone());
    }
    if let Some(password) = &redis.password {
        config.password = Some(password.clone());
    }
    let client = Builder::from_config(config)
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.internal_command_timeout = Duration::from_secs(5);
            c.max_command_attempts = 3;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    client.init().await?;
    Ok(client)
}
