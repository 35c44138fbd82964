//! A private Redis Cluster per test: N masters (optionally one replica
//! each, for failover tests), each a
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
    /// Masters first, then their replicas (replica of master `i` at `masters + i`).
    nodes: Vec<RedisServer>,
    /// Each node's cluster bus port.
    bus_ports: Vec<u16>,
    masters: usize,
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
        Self::start_full(n, false, extra).await
    }

    /// `masters` masters, each with one replica (its index: `masters + i`);
    /// returns once the replicas are in sync.
    pub async fn start_with_replicas(masters: usize) -> RedisCluster {
        Self::start_full(masters, true, &[]).await
    }

    async fn start_full(n: usize, replicas: bool, extra: &[&str]) -> RedisCluster {
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
        let total = if replicas { 2 * n } else { n };
        let mut nodes = Vec::with_capacity(total);
        let mut bus_ports = Vec::with_capacity(total);
        for _ in 0..total {
            // The bus port defaults to port + 10000, which can fall in the
            // ephemeral range and be taken: pick one from our own pool.
            let bus = super::free_port();
            let bus_arg = bus.to_string();
            let mut node_args = args.clone();
            node_args.extend_from_slice(&["--cluster-port", &bus_arg]);
            nodes.push(RedisServer::start_with(&node_args).await);
            bus_ports.push(bus);
        }
        let cluster = RedisCluster {
            nodes,
            bus_ports,
            masters: n,
        };
        cluster.create().await;
        cluster.wait_ok().await;
        cluster
    }

    async fn create(&self) {
        let n = self.masters;
        for (i, node) in self.nodes.iter().take(n).enumerate() {
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
        if self.nodes.len() == n {
            return;
        }
        // A replica can follow its master once it knows it.
        self.wait_known().await;
        for i in 0..n {
            let id = raw_command(self.nodes[i].port(), "CLUSTER MYID").await;
            let id = id.lines().nth(1).unwrap_or_default().trim().to_string();
            let line = format!("CLUSTER REPLICATE {id}");
            let reply = raw_command(self.nodes[n + i].port(), &line).await;
            assert!(reply.starts_with("+OK"), "{line}: {reply:?}");
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        for replica in &self.nodes[n..] {
            while !raw_command(replica.port(), "INFO replication")
                .await
                .contains("master_link_status:up")
            {
                assert!(Instant::now() < deadline, "replica did not sync");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn wait_known(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let want = format!("cluster_known_nodes:{}\r", self.nodes.len());
        for node in &self.nodes {
            while !raw_command(node.port(), "CLUSTER INFO")
                .await
                .contains(&want)
            {
                assert!(Instant::now() < deadline, "nodes did not meet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits until every running node says `cluster_state:ok` and knows
    /// all 16384 slots.
    pub async fn wait_ok(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let mut all = true;
            // A node killed for good (a failover test) is not asked.
            for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
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

    /// The index of the master serving `key`'s slot, from CLUSTER NODES
    /// of a running node.
    pub async fn owner_of(&self, key: &str) -> usize {
        let slot = u32::from(fred::util::redis_keyslot(key.as_bytes()));
        let asked = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .expect("a node runs");
        let text = raw_command(asked.port(), "CLUSTER NODES").await;
        // `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>…`
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            if serves {
                let port: u16 = f[1]
                    .split(['@', ','])
                    .next()
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse().ok())
                    .expect("node address");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port() == port)
                    .expect("owner is one of ours");
            }
        }
        panic!("no master serves slot {slot} of {key}:\n{text}");
    }

    /// SIGKILL master `i` and leave it down; returns once its replica has
    /// taken over its slots (the cluster is ok again without it).
    pub async fn fail_over(&mut self, i: usize) {
        assert!(i < self.masters && self.nodes.len() > self.masters);
        self.nodes[i].kill();
        let replica = self.nodes[self.masters + i].port();
        let deadline = Instant::now() + FORM_TIMEOUT;
        while !raw_command(replica, "INFO replication")
            .await
            .contains("role:master")
        {
            assert!(
                Instant::now() < deadline,
                "replica {replica} was not promoted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_ok().await;
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
