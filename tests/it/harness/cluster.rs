//! A private Redis Cluster per test: N masters (no replicas), each a
//! [`RedisServer`] with `--cluster-enabled yes` and AOF fsynced on every
//! write, joined by hand: `CLUSTER ADDSLOTSRANGE` (an even share each) and
//! `CLUSTER MEET` — what `redis-cli --cluster create` does, but also for
//! one or two masters, which redis-cli refuses. A master restarted with
//! [`RedisCluster::restart_node`] comes back on its port with its data dir,
//! so its `nodes.conf` (identity, slots) and AOF (data) survive.
#![allow(dead_code)]
use super::redis::RedisServer;
use fred::prelude::{ClientLike, Config, ReconnectPolicy};
use std::time::{Duration, Instant};

const FORM_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Each node's cluster bus port.
    bus_ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts `n` masters and forms the cluster; returns once every node
    /// reports `cluster_state:ok` and agrees on the slot map.
    pub async fn start(n: usize) -> RedisCluster {
        Self::start_with(n, &[]).await
    }

    /// Like [`RedisCluster::start`], with extra `redis-server` args that win
    /// over the defaults (e.g. `["--appendfsync", "everysec"]`).
    pub async fn start_with(n: usize, extra: &[&str]) -> RedisCluster {
        assert!(n >= 1);
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            // A lone node never learns its address from a MEET and would
            // advertise "" in CLUSTER SLOTS.
            "--cluster-announce-ip",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ];
        args.extend_from_slice(extra);
        let mut nodes = Vec::with_capacity(n);
        let mut bus_ports = Vec::with_capacity(n);
        for _ in 0..n {
            // The bus port defaults to port + 10000, which can fall in the
            // ephemeral range and be taken: pick one from our own pool.
            let bus = super::free_port();
            let bus_arg = bus.to_string();
            let mut node_args = args.clone();
            node_args.extend_from_slice(&["--cluster-port", &bus_arg]);
            nodes.push(RedisServer::start_with(&node_args).await);
            bus_ports.push(bus);
        }
        let cluster = RedisCluster { nodes, bus_ports };
        cluster.create().await;
        cluster.wait_ok().await;
        cluster
    }

    async fn create(&self) {
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            let (start, end) = (16384 * i / n, 16384 * (i + 1) / n - 1);
            let reply =
                raw_command(node.port(), &format!("CLUSTER ADDSLOTSRANGE {start} {end}")).await;
            assert!(
                reply.starts_with("+OK"),
                "ADDSLOTSRANGE on node {i}: {reply:?}"
            );
        }
        for (node, bus) in self.nodes.iter().zip(&self.bus_ports).skip(1) {
            let line = format!("CLUSTER MEET 127.0.0.1 {} {bus}", node.port());
            let reply = raw_command(self.nodes[0].port(), &line).await;
            assert!(reply.starts_with("+OK"), "{line}: {reply:?}");
        }
    }

    /// Waits until every running node says `cluster_state:ok` and knows
    /// all 16384 slots.
    pub async fn wait_ok(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let mut all = true;
            for node in &self.nodes {
                let info = raw_command(node.port(), "CLUSTER INFO").await;
                all &= info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{}\r", self.nodes.len()));
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok within {FORM_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// `redis-cluster://127.0.0.1:P0?node=127.0.0.1:P1&…`: every node is a seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port()));
        }
        url
    }

    /// A cluster-aware fred client (reconnects every 50 ms, 10 s command timeout).
    pub async fn client(&self) -> fred::clients::Client {
        let config = Config::from_url(&self.url()).expect("cluster url");
        let client = fred::types::Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, 50))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.max_command_attempts = 20;
            })
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
            .build()
            .expect("build fred client");
        client.init().await.expect("connect to cluster");
        client
    }

    /// The index of the node serving `key`'s slot.
    pub async fn owner_of(&self, key: &str) -> usize {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let slots = raw_command(self.nodes[0].port(), "CLUSTER SLOTS").await;
        // The RESP reply nests [start, end, [ip, port, id], …]; read the
        // integers in order: start, end, then the port of the first node.
        let ints: Vec<i64> = slots
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        for triple in ints.chunks(3) {
            if let [start, end, port] = triple {
                if (*start..=*end).contains(&i64::from(slot)) {
                    return self
                        .nodes
                        .iter()
                        .position(|n| i64::from(n.port()) == *port)
                        .expect("owner is one of ours");
                }
            }
        }
        panic!("no node serves slot {slot} of {key}");
    }

    /// SIGTERM node `i` (its AOF is fsynced on every write anyway), start
    /// it again on the same port and dir, and wait for the cluster to be ok.
    pub async fn restart_node(&mut self, i: usize) {
        self.nodes[i].stop().await;
        self.nodes[i].start_again().await;
        self.wait_ok().await;
    }

    /// SIGKILL node `i` (a crash) and start it again, as above.
    pub async fn crash_node(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].start_again().await;
        self.wait_ok().await;
    }
}

/// Sends one inline command and returns the raw RESP reply text (up to 64 KiB);
/// "" when the node does not answer.
async fn raw_command(port: u16, line: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        // Read until the reply stops arriving for a moment.
        loop {
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => return None,
            }
            if out.len() > 64 << 10 {
                break;
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}
