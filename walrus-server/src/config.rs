//! The server's flags and environment, compatible with the reference
//! (`--node-id`, `--data-dir`, `--raft-*`, `--client-*`, `--join`,
//! `--log-file`, `WALRUS_MAX_SEGMENT_ENTRIES`, `WALRUS_MONITOR_CHECK_MS`),
//! plus ours (`--fsync`, connection caps, timeouts, the in-flight bytes
//! budget).
//!
//! With no flags at all: node 1, a one-voter cluster, clients on
//! 127.0.0.1:9091, Raft on 127.0.0.1:9191, data under `./data/node_1`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use walrus_backends::wal::{FsyncPolicy, WalConfig};

use crate::listener::{ListenerConfig, MIN_BYTES_IN_FLIGHT};

/// The default client port (what `walrus-cli` and the seed's examples use).
pub const DEFAULT_CLIENT_PORT: u16 = 9091;
/// The default inter-node (Raft + forwarding) port.
pub const DEFAULT_RAFT_PORT: u16 = 9191;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "walrus-server",
    version,
    about = "A Walrus node: a distributed streaming log (openraft+redb metadata, memmap2 WAL, TCP)"
)]
pub struct ServerConfig {
    /// This node's stable id. Node 1 bootstraps a new cluster when started
    /// without --join; other nodes join one.
    #[arg(long, env = "WALRUS_NODE_ID", default_value_t = 1)]
    pub node_id: u64,

    /// Data directory; this node's files live under `<data-dir>/node_<id>/`.
    #[arg(long, env = "WALRUS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Address to bind the inter-node (Raft and forwarding) port on.
    #[arg(long, default_value = "127.0.0.1")]
    pub raft_host: String,

    /// The inter-node port.
    #[arg(long, default_value_t = DEFAULT_RAFT_PORT)]
    pub raft_port: u16,

    /// The host other nodes use to reach this one (default: --raft-host, or
    /// 127.0.0.1 when that is 0.0.0.0).
    #[arg(long)]
    pub raft_advertise_host: Option<String>,

    /// Address to bind the client port on.
    #[arg(long, default_value = "127.0.0.1")]
    pub client_host: String,

    /// The client port.
    #[arg(long, default_value_t = DEFAULT_CLIENT_PORT)]
    pub client_port: u16,

    /// `host:raft-port` of any member, to join its cluster. Only needed the
    /// first time; a restarted member finds its cluster from its own data.
    #[arg(long)]
    pub join: Option<String>,

    /// Append logs to this file instead of standard error.
    #[arg(long)]
    pub log_file: Option<PathBuf>,

    /// When an acknowledged PUT is on disk: `always` (before OK, shared
    /// fsyncs), `interval:<ms>` (within that many ms), `never` (left to the OS).
    #[arg(long, env = "WALRUS_FSYNC", default_value = "always",
          value_parser = clap::value_parser!(FsyncPolicy))]
    pub fsync: FsyncPolicy,

    /// Size of each WAL file, in bytes (sparse: disk blocks are reserved in
    /// 1 MiB steps as it fills; a segment spans several files when it
    /// outgrows one; bounds one entry's size).
    #[arg(long, env = "WALRUS_WAL_FILE_BYTES", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(128 * 1024..=(4u64 << 30) - 1))]
    pub wal_file_bytes: u64,

    /// Entries per segment before it is sealed and the next one opens.
    #[arg(long, env = "WALRUS_MAX_SEGMENT_ENTRIES", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_segment_entries: u64,

    /// Payload bytes per segment before it is sealed and the next one
    /// opens (whichever limit comes first). None: no byte limit.
    #[arg(long, env = "WALRUS_MAX_SEGMENT_BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_segment_bytes: Option<u64>,

    /// Default retention, for topics that set none: keep closed segments
    /// holding at most this many entries (the oldest go, whole). None: no
    /// limit. Give every node the same defaults.
    #[arg(long, env = "WALRUS_RETENTION_ENTRIES")]
    pub retention_entries: Option<u64>,

    /// Default retention by age, for topics that set none: delete closed
    /// segments closed longer ago than this (`<n>ms|s|m|h|d`, e.g. 7d).
    #[arg(long, env = "WALRUS_RETENTION_AGE",
          value_parser = |s: &str| walrus_core::protocol::parse_duration_ms(s))]
    pub retention_age: Option<u64>,

    /// Period of the retention pass (deleting closed segments past
    /// retention), in ms.
    #[arg(long, env = "WALRUS_RETENTION_CHECK_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_check_ms: u64,

    /// Period of the backstop rollover check, in ms.
    #[arg(long, env = "WALRUS_MONITOR_CHECK_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub monitor_check_ms: u64,

    /// Client connections served at once; more are refused with an ERR.
    #[arg(long, env = "WALRUS_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Client connections served at once from one IP address; more are
    /// refused with an ERR, so one client cannot take every slot.
    #[arg(long, env = "WALRUS_MAX_CONNECTIONS_PER_IP", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections_per_ip: u64,

    /// A client that leaves a frame half-sent (or stops reading answers) for
    /// this long is disconnected, in ms.
    #[arg(long, env = "WALRUS_IDLE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,

    /// A client connection that sends nothing between requests for this
    /// long, with no request in flight, is closed, in ms.
    #[arg(long, env = "WALRUS_IDLE_CONNECTION_TIMEOUT_MS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_connection_timeout_ms: u64,

    /// Bytes of client requests and answers the node holds at once, across
    /// all connections; when spent, it stops reading requests until answers
    /// go out (the clients' sends then wait). At least 1 MiB.
    #[arg(long, env = "WALRUS_MAX_BYTES_IN_FLIGHT", default_value_t = 64 << 20,
          value_parser = clap::value_parser!(u64).range(MIN_BYTES_IN_FLIGHT as u64..=(1u64 << 40)))]
    pub max_bytes_in_flight: u64,

    /// Accepted for compatibility with the reference; ignored.
    #[arg(long, env = "WALRUS_DISABLE_IO_URING", hide = true)]
    pub disable_io_uring: Option<String>,
}

impl ServerConfig {
    /// This node's own directory.
    pub fn node_dir(&self) -> PathBuf {
        self.data_dir.join(format!("node_{}", self.node_id))
    }

    fn advertise_host(&self) -> String {
        match &self.raft_advertise_host {
            Some(h) => h.clone(),
            None if self.raft_host == "0.0.0.0" || self.raft_host == "::" => "127.0.0.1".into(),
            None => self.raft_host.clone(),
        }
    }

    /// `host:port` other nodes dial for Raft and forwarding.
    pub fn raft_advertise_addr(&self) -> String {
        format!("{}:{}", self.advertise_host(), self.raft_port)
    }

    /// `host:port` clients are told about (in metadata).
    pub fn client_advertise_addr(&self) -> String {
        let host = if self.client_host == "0.0.0.0" || self.client_host == "::" {
            self.advertise_host()
        } else {
            self.client_host.clone()
        };
        format!("{}:{}", host, self.client_port)
    }

    pub fn raft_bind_addr(&self) -> String {
        format!("{}:{}", self.raft_host, self.raft_port)
    }

    pub fn client_bind_addr(&self) -> String {
        format!("{}:{}", self.client_host, self.client_port)
    }

    pub fn listener_config(&self) -> ListenerConfig {
        ListenerConfig {
            max_connections: self.max_connections as usize,
            max_connections_per_ip: self.max_connections_per_ip as usize,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            idle_connection_timeout: Duration::from_millis(self.idle_connection_timeout_ms),
            max_bytes_in_flight: usize::try_from(self.max_bytes_in_flight).unwrap_or(usize::MAX),
            ..ListenerConfig::default()
        }
    }

    pub fn wal_config(&self) -> WalConfig {
        WalConfig {
            fsync: self.fsync,
            segment_file_bytes: self.wal_file_bytes,
            ..WalConfig::default()
        }
    }

    pub fn node_config(&self) -> walrus_core::NodeConfig {
        let mut c = walrus_core::NodeConfig::new(self.node_id);
        c.max_segment_entries = self.max_segment_entries;
        c.max_segment_bytes = self.max_segment_bytes.unwrap_or(u64::MAX);
        c.monitor_interval = Duration::from_millis(self.monitor_check_ms);
        c.default_retention = walrus_core::Retention {
            max_entries: self.retention_entries,
            max_age_ms: self.retention_age,
        };
        c.retention_interval = Duration::from_millis(self.retention_check_ms);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerConfig, clap::Error> {
        ServerConfig::try_parse_from(std::iter::once("walrus-server").chain(args.iter().copied()))
    }

    #[test]
    fn given_no_flags_should_run_node_1_on_the_default_ports() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.client_bind_addr(), "127.0.0.1:9091");
        assert_eq!(c.raft_bind_addr(), "127.0.0.1:9191");
        assert_eq!(c.node_dir(), PathBuf::from("./data/node_1"));
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert!(c.join.is_none());
        let l = c.listener_config();
        assert_eq!(l.max_connections_per_ip, 1024);
        assert_eq!(l.max_bytes_in_flight, 64 << 20);
        assert_eq!(l.idle_connection_timeout, Duration::from_secs(600));
    }

    #[test]
    fn given_memory_limit_flags_should_take_them_and_refuse_a_budget_below_one_mib() {
        let c = parse(&[
            "--max-connections-per-ip",
            "8",
            "--max-bytes-in-flight",
            "2097152",
            "--idle-connection-timeout-ms",
            "5000",
        ])
        .unwrap();
        let l = c.listener_config();
        assert_eq!(l.max_connections_per_ip, 8);
        assert_eq!(l.max_bytes_in_flight, 2 << 20);
        assert_eq!(l.idle_connection_timeout, Duration::from_secs(5));
        assert!(parse(&["--max-bytes-in-flight", "1000"]).is_err());
        assert!(parse(&["--max-connections-per-ip", "0"]).is_err());
    }

    #[test]
    fn given_reference_flags_should_take_them() {
        let c = parse(&[
            "--node-id",
            "2",
            "--data-dir",
            "/tmp/w",
            "--raft-host",
            "0.0.0.0",
            "--raft-port",
            "7002",
            "--client-port",
            "8002",
            "--join",
            "10.0.0.1:7001",
            "--fsync",
            "interval:50",
            "--max-connections",
            "10",
        ])
        .unwrap();
        assert_eq!(c.node_dir(), PathBuf::from("/tmp/w/node_2"));
        assert_eq!(c.raft_advertise_addr(), "127.0.0.1:7002");
        assert_eq!(c.join.as_deref(), Some("10.0.0.1:7001"));
        assert_eq!(c.listener_config().max_connections, 10);
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(50)));
    }

    #[test]
    fn given_a_zero_segment_size_should_refuse_it() {
        assert!(parse(&["--max-segment-entries", "0"]).is_err());
        assert!(parse(&["--client-port", "70000"]).is_err());
        assert!(parse(&["--fsync", "sometimes"]).is_err());
    }

    #[test]
    fn given_retention_and_segment_byte_flags_should_make_them_the_node_config() {
        let c = parse(&[]).unwrap();
        assert!(c.node_config().default_retention.keeps_everything());
        let c = parse(&[
            "--retention-entries",
            "5000",
            "--retention-age",
            "2h",
            "--retention-check-ms",
            "250",
        ])
        .unwrap();
        let n = c.node_config();
        assert_eq!(n.default_retention.max_entries, Some(5000));
        assert_eq!(n.default_retention.max_age_ms, Some(2 * 3_600_000));
        assert_eq!(n.retention_interval, Duration::from_millis(250));
        assert!(
            parse(&["--retention-age", "2"]).is_err(),
            "a unit is needed"
        );
    }
}
