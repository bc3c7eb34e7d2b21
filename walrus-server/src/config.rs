//! The server's flags and environment, compatible with the reference
//! (`--node-id`, `--data-dir`, `--raft-*`, `--client-*`, `--join`,
//! `--log-file`, `WALRUS_MAX_SEGMENT_ENTRIES`, `WALRUS_MONITOR_CHECK_MS`),
//! plus ours (`--fsync`, connection caps, timeouts, the in-flight bytes
//! budget, `--metrics-addr`, TLS on either port, `--auth-token-file`,
//! `--cluster-secret-file`). Secrets are only ever named by their file
//! here, so this struct's `Debug` and `--help` never show one.
//!
//! With no flags at all: node 1, a one-voter cluster, clients on
//! 127.0.0.1:9091, Raft on 127.0.0.1:9191, data under `./data/node_1`.
//!
//! Every flag can also be set in a TOML file (`--config <file>` or
//! `WALRUS_CONFIG`): one `key = value` line per flag, the key being the
//! flag without `--` (`node-id = 2`, `fsync = "interval:50"`; `node_id`
//! works too). Precedence, highest first: the command line, the
//! environment (the flags that have a `WALRUS_*` variable), the file, the
//! built-in default. A file value is checked as its flag would be; an
//! unknown key, a value of the wrong kind, or a file that is not valid
//! TOML stops the server with an error that names the file and the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use walrus_backends::tcp::tls::NodeTls;
use walrus_backends::wal::{FsyncPolicy, WalConfig};

use walrus_core::Secret;

use crate::listener::auth::{Tokens, MIN_TOKEN_LEN};
use crate::listener::{ClientTls, ListenerConfig, MIN_BYTES_IN_FLIGHT};

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
    /// A TOML file with any of these settings (keys are the flags without
    /// `--`). Flags and environment variables win over it.
    #[arg(long, env = "WALRUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// This node's stable id. Node 1 bootstraps a new cluster when started
    /// without --join; other nodes join one.
    #[arg(long, env = "WALRUS_NODE_ID", default_value_t = 1)]
    pub node_id: u64,

    /// Data directory; this node's files live under `<data-dir>/node_<id>/`.
    #[arg(long, env = "WALRUS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Address to bind the inter-node (Raft and forwarding) port on.
    #[arg(long, env = "WALRUS_RAFT_HOST", default_value = "127.0.0.1")]
    pub raft_host: String,

    /// The inter-node port.
    #[arg(long, env = "WALRUS_RAFT_PORT", default_value_t = DEFAULT_RAFT_PORT)]
    pub raft_port: u16,

    /// The host other nodes use to reach this one (default: --raft-host, or
    /// 127.0.0.1 when that is 0.0.0.0).
    #[arg(long, env = "WALRUS_RAFT_ADVERTISE_HOST")]
    pub raft_advertise_host: Option<String>,

    /// Address to bind the client port on.
    #[arg(long, env = "WALRUS_CLIENT_HOST", default_value = "127.0.0.1")]
    pub client_host: String,

    /// The client port.
    #[arg(long, env = "WALRUS_CLIENT_PORT", default_value_t = DEFAULT_CLIENT_PORT)]
    pub client_port: u16,

    /// `host:raft-port` of any member, to join its cluster. Only needed the
    /// first time; a restarted member finds its cluster from its own data.
    #[arg(long, env = "WALRUS_JOIN")]
    pub join: Option<String>,

    /// Append logs to this file instead of standard error.
    #[arg(long, env = "WALRUS_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// `text` (for people) or `json` (one JSON object per line, for log
    /// shippers: `timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level).
    #[arg(long, env = "WALRUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

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

    /// Default retention by bytes, for topics that set none: keep closed
    /// segments holding at most this many payload bytes (`<n>`, or with
    /// KiB, MiB, GiB, TiB; the oldest go, whole). None: no limit.
    #[arg(long, env = "WALRUS_RETENTION_BYTES",
          value_parser = |s: &str| walrus_core::protocol::parse_bytes(s))]
    pub retention_bytes: Option<u64>,

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

    /// Copies of each segment, its leader included, for topics registered
    /// on this node without `RF`. Default: `min(3, voters)` at
    /// registration (1 on a single node).
    #[arg(long, env = "WALRUS_REPLICATION_FACTOR",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub replication_factor: Option<u32>,

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

    /// Serve `GET /metrics` (Prometheus text format) on this `host:port`.
    /// Without it, no metrics port is opened.
    #[arg(long, env = "WALRUS_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// TLS on the client port: the certificate chain it presents (PEM,
    /// leaf first). Goes with --tls-key. Clients then must speak TLS.
    #[arg(long, env = "WALRUS_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WALRUS_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS on the inter-node port: the CA certificate (PEM) that
    /// signs every node's certificate. Nodes accept only peers whose
    /// certificate it signed; give every node of the cluster this flag.
    #[arg(long, env = "WALRUS_NODE_TLS_CA", value_name = "PEM")]
    pub node_tls_ca: Option<PathBuf>,

    /// The certificate chain (PEM) this node shows other nodes, signed by
    /// --node-tls-ca and naming the host of --raft-advertise-host. Default:
    /// --tls-cert. Goes with --node-tls-key.
    #[arg(long, env = "WALRUS_NODE_TLS_CERT", value_name = "PEM")]
    pub node_tls_cert: Option<PathBuf>,

    /// The private key of --node-tls-cert (PEM). Default: --tls-key.
    #[arg(long, env = "WALRUS_NODE_TLS_KEY", value_name = "PEM")]
    pub node_tls_key: Option<PathBuf>,

    /// Require clients to send `AUTH <token>` first, with a token listed in
    /// this file: one per line, `<token> read|write [<topic-prefix>]`, `#`
    /// comments (docs/protocol.md). Without it, no authentication.
    #[arg(long, env = "WALRUS_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// The cluster's shared secret, alone in this file (at least 16
    /// characters; surrounding whitespace ignored). Nodes then prove it to
    /// each other on every inter-node connection, and a process without it
    /// cannot join, vote, forward or read. Every node needs the same file;
    /// without it, node traffic is unauthenticated.
    #[arg(long, env = "WALRUS_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// Accepted for compatibility with the reference; ignored.
    #[arg(long, env = "WALRUS_DISABLE_IO_URING", hide = true)]
    pub disable_io_uring: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line or environment is wrong, or asks for `--help` or
    /// `--version` (`clap::Error::exit` prints and exits as is fitting).
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The config file cannot be read, is not TOML, or holds a setting
    /// that is unknown or invalid.
    #[error("config file {}: {why}", path.display())]
    File { path: PathBuf, why: String },
}

impl ServerConfig {
    /// The configuration of this process: its arguments and environment,
    /// and the `--config` file if one is named.
    pub fn load() -> Result<ServerConfig, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// As [`ServerConfig::load`], with `args` (the program name first) in
    /// place of the process's arguments; the environment is the process's.
    pub fn load_from<I, T>(args: I) -> Result<ServerConfig, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let first = Self::command().try_get_matches_from(&args)?;
        let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
            return Ok(Self::from_arg_matches(&first)?);
        };
        // The file's values become the flags' defaults: clap then lets the
        // command line and the environment win, and checks the file's
        // values with the flags' own parsers.
        let mut cmd = Self::command();
        for (key, value) in read_config_file(&path)? {
            let file_error = |why: String| ConfigError::File {
                path: path.clone(),
                why,
            };
            let name = key.replace('_', "-");
            let id = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(name.as_str()) && !a.is_hide_set())
                .map(|a| a.get_id().clone())
                .filter(|id| id != "config")
                .ok_or_else(|| file_error(unknown_key(&cmd, &key)))?;
            let values = toml_values(&value).ok_or_else(|| {
                file_error(format!("`{key}` must be a string, number or boolean"))
            })?;
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == &id)
                .expect("the id was just found among the arguments")
                .clone();
            if values.len() != 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
                return Err(file_error(format!("`{key}` takes one value, not a list")));
            }
            // Checked alone, so that an error is the file's own.
            let alone = clap::Command::new("walrus-server")
                .no_binary_name(true)
                .arg(arg);
            for v in &values {
                alone
                    .clone()
                    .try_get_matches_from([format!("--{name}={v}")])
                    .map_err(|e| file_error(format!("`{key} = {value}`: {}", clap_reason(&e))))?;
            }
            cmd = cmd.mut_arg(id, |a| a.default_values(values));
        }
        let matches = cmd.try_get_matches_from(&args)?;
        Ok(Self::from_arg_matches(&matches)?)
    }

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

    /// The client port's TLS, loaded from its files (`None`: plain TCP).
    pub fn client_tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some((cert, key)) = pair("--tls-cert", &self.tls_cert, "--tls-key", &self.tls_key)?
        else {
            return Ok(None);
        };
        ClientTls::from_files(cert, key)
            .map(Some)
            .context("cannot set up TLS on the client port (--tls-cert, --tls-key)")
    }

    /// The inter-node port's mutual TLS, loaded from its files (`None`:
    /// plain TCP). The node's own certificate is --node-tls-cert and
    /// --node-tls-key, or else --tls-cert and --tls-key.
    pub fn node_tls(&self) -> anyhow::Result<Option<NodeTls>> {
        let own = pair(
            "--node-tls-cert",
            &self.node_tls_cert,
            "--node-tls-key",
            &self.node_tls_key,
        )?;
        let Some(ca) = &self.node_tls_ca else {
            if own.is_some() {
                anyhow::bail!(
                    "--node-tls-cert and --node-tls-key need --node-tls-ca: nodes verify each \
                     other's certificate against that CA"
                );
            }
            return Ok(None);
        };
        let fallback = pair("--tls-cert", &self.tls_cert, "--tls-key", &self.tls_key)?;
        let Some((cert, key)) = own.or(fallback) else {
            anyhow::bail!(
                "--node-tls-ca needs this node's own certificate: give --node-tls-cert and \
                 --node-tls-key (or --tls-cert and --tls-key, then used on both ports)"
            );
        };
        NodeTls::from_files(cert, key, ca).map(Some).context(
            "cannot set up TLS on the inter-node port (--node-tls-ca, --node-tls-cert, --node-tls-key)",
        )
    }

    /// The client tokens of `--auth-token-file`, if set. Errors name the
    /// file and line, never a token.
    pub fn auth_tokens(&self) -> anyhow::Result<Option<Arc<Tokens>>> {
        let Some(path) = &self.auth_token_file else {
            return Ok(None);
        };
        Ok(Some(Arc::new(
            Tokens::read_file(path).map_err(anyhow::Error::msg)?,
        )))
    }

    /// The secret of `--cluster-secret-file`, if set.
    pub fn cluster_secret(&self) -> anyhow::Result<Option<Secret>> {
        let Some(path) = &self.cluster_secret_file else {
            return Ok(None);
        };
        let secret = Secret::read_file(path, "cluster secret").map_err(anyhow::Error::msg)?;
        if secret.len() < MIN_TOKEN_LEN {
            anyhow::bail!(
                "the cluster secret in {} is shorter than {MIN_TOKEN_LEN} characters, too easy \
                 to guess; generate one with `openssl rand -hex 32`",
                path.display()
            );
        }
        Ok(Some(secret))
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
            max_bytes: self.retention_bytes,
        };
        c.retention_interval = Duration::from_millis(self.retention_check_ms);
        c.replication_factor = self.replication_factor;
        c
    }
}

/// Two settings that go together: both or neither.
fn pair<'a>(
    a_flag: &str,
    a: &'a Option<PathBuf>,
    b_flag: &str,
    b: &'a Option<PathBuf>,
) -> anyhow::Result<Option<(&'a Path, &'a Path)>> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        _ => anyhow::bail!(
            "{a_flag} and {b_flag} go together (a certificate and its private key): give both or neither"
        ),
    }
}

/// The file's `key = value` pairs, in order.
fn read_config_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        why: format!("cannot read it: {e}"),
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        why: format!("not valid TOML: {e}"),
    })
}

/// A setting's value as its flag's text: a scalar, or an array of them
/// for a flag given several times.
fn toml_values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::Array(_) => None,
                _ => toml_values(v).map(|mut one| one.remove(0)),
            })
            .collect(),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

fn unknown_key(cmd: &clap::Command, key: &str) -> String {
    let known: Vec<&str> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "config" && *l != "help" && *l != "version")
        .collect();
    format!(
        "unknown setting `{key}`; the settings are the server's flags without `--`: {}",
        known.join(", ")
    )
}

/// clap's explanation of a bad value, without its usage lines.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
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
        assert_eq!(c.metrics_addr, None, "no metrics port unless asked for");
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

    /// Loads with `args` after a config file holding `toml`.
    fn load_with_file(toml: &str, args: &[&str]) -> (Result<ServerConfig, ConfigError>, PathBuf) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("walrus.toml");
        std::fs::write(&path, toml).expect("writing the config file");
        let path_arg = path.to_str().expect("a UTF-8 temporary path").to_string();
        let all = ["walrus-server", "--config", &path_arg]
            .into_iter()
            .chain(args.iter().copied());
        (ServerConfig::load_from(all), path)
    }

    fn file_error(result: Result<ServerConfig, ConfigError>) -> String {
        match result {
            Err(e @ ConfigError::File { .. }) => e.to_string(),
            other => panic!("expected a config file error, got {other:?}"),
        }
    }

    #[test]
    fn given_a_config_file_should_take_every_setting_from_it_in_either_spelling() {
        let (c, path) = load_with_file(
            r#"
            node-id = 2
            data_dir = "/var/lib/walrus"
            client-host = "0.0.0.0"
            client-port = 8002
            join = "10.0.0.1:7001"
            fsync = "interval:50"
            max-connections = 10
            log-format = "json"
            metrics-addr = "0.0.0.0:9464"
            "#,
            &[],
        );
        let c = c.unwrap();
        assert_eq!(c.config.as_deref(), Some(path.as_path()));
        assert_eq!(c.node_dir(), PathBuf::from("/var/lib/walrus/node_2"));
        assert_eq!(c.client_bind_addr(), "0.0.0.0:8002");
        assert_eq!(c.join.as_deref(), Some("10.0.0.1:7001"));
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(50)));
        assert_eq!(c.listener_config().max_connections, 10);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.metrics_addr.as_deref(), Some("0.0.0.0:9464"));
        // What the file does not set keeps its default.
        assert_eq!(c.raft_bind_addr(), "127.0.0.1:9191");
    }

    #[test]
    fn given_a_flag_and_the_same_setting_in_the_file_should_take_the_flag() {
        let (c, _) = load_with_file(
            "node-id = 2\nclient-port = 8002\nfsync = \"never\"\n",
            &["--client-port", "9002", "--fsync=always"],
        );
        let c = c.unwrap();
        assert_eq!(c.client_port, 9002);
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.node_id, 2, "the file still sets what no flag gives");
    }

    #[test]
    fn given_tls_settings_in_the_file_should_pair_them_and_fall_back_to_the_client_certificate() {
        fn err<T>(r: anyhow::Result<T>) -> String {
            format!("{:#}", r.err().expect("an error"))
        }
        let c = parse(&[]).unwrap();
        assert!(c.client_tls().unwrap().is_none() && c.node_tls().unwrap().is_none());

        let (c, _) = load_with_file(
            "tls-cert = \"/nonexistent/server.pem\"\ntls_key = \"/nonexistent/server.key\"\n\
             node-tls-ca = \"/nonexistent/ca.pem\"\n",
            &[],
        );
        let c = c.unwrap();
        assert_eq!(
            c.tls_cert.as_deref(),
            Some(Path::new("/nonexistent/server.pem"))
        );
        assert_eq!(
            c.tls_key.as_deref(),
            Some(Path::new("/nonexistent/server.key"))
        );
        let e = err(c.client_tls());
        assert!(
            e.contains("cannot read the certificate file /nonexistent/server.pem"),
            "{e}"
        );
        // The node port reads the CA, then (no --node-tls-cert) the client
        // port's certificate.
        let e = err(c.node_tls());
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");

        let e = err(parse(&["--tls-cert", "c.pem"]).unwrap().client_tls());
        assert!(e.contains("--tls-cert and --tls-key go together"), "{e}");
        let e = err(
            parse(&["--node-tls-cert", "c.pem", "--node-tls-key", "k.pem"])
                .unwrap()
                .node_tls(),
        );
        assert!(e.contains("need --node-tls-ca"), "{e}");
        let e = err(parse(&["--node-tls-ca", "ca.pem"]).unwrap().node_tls());
        assert!(e.contains("needs this node's own certificate"), "{e}");
        let e = err(
            parse(&["--node-tls-ca", "ca.pem", "--node-tls-key", "k.pem"])
                .unwrap()
                .node_tls(),
        );
        assert!(
            e.contains("--node-tls-cert and --node-tls-key go together"),
            "{e}"
        );
    }

    #[test]
    fn given_a_bad_file_should_name_the_file_and_what_is_wrong() {
        let (r, path) = load_with_file("node-id = 2\nclinet-port = 8002\n", &[]);
        let text = file_error(r);
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("unknown setting `clinet-port`"), "{text}");
        assert!(
            text.contains("client-port"),
            "lists the known settings: {text}"
        );

        let text = file_error(load_with_file("client-port = 70000\n", &[]).0);
        assert!(text.contains("`client-port = 70000`"), "{text}");
        assert!(text.contains("70000"), "{text}");

        let text = file_error(load_with_file("fsync = \"sometimes\"\n", &[]).0);
        assert!(text.contains("`fsync = \"sometimes\"`"), "{text}");

        let text = file_error(load_with_file("node-id = [1, [2]]\n", &[]).0);
        assert!(
            text.contains("must be a string, number or boolean"),
            "{text}"
        );
        let text = file_error(load_with_file("node-id = [1, 2]\n", &[]).0);
        assert!(text.contains("`node-id` takes one value"), "{text}");

        let text = file_error(load_with_file("node-id = \n", &[]).0);
        assert!(
            text.contains("not valid TOML") && text.contains("line 1"),
            "{text}"
        );

        let text = file_error(load_with_file("config = \"other.toml\"\n", &[]).0);
        assert!(text.contains("unknown setting `config`"), "{text}");

        let missing = ServerConfig::load_from(["walrus-server", "--config", "/nonexistent/w.toml"]);
        let text = file_error(missing);
        assert!(
            text.contains("/nonexistent/w.toml: cannot read it"),
            "{text}"
        );
    }

    #[test]
    fn given_the_example_config_in_deploy_should_load_as_documented() {
        let (c, _) = load_with_file(include_str!("../../deploy/walrus.toml"), &[]);
        let c = c.unwrap();
        assert_eq!(c.node_dir(), PathBuf::from("/var/lib/walrus/node_1"));
        assert_eq!(c.client_bind_addr(), "0.0.0.0:9091");
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn given_credential_files_in_the_config_file_should_load_them_and_never_show_them() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tokens = dir.path().join("tokens");
        let secret = dir.path().join("secret");
        std::fs::write(&tokens, "tok-0123456789abcdef write\n").unwrap();
        std::fs::write(&secret, "sec-0123456789abcdef\n").unwrap();
        let (c, _) = load_with_file(
            &format!("auth-token-file = {tokens:?}\ncluster-secret-file = {secret:?}\n"),
            &[],
        );
        let c = c.unwrap();
        assert!(c.auth_tokens().unwrap().is_some());
        assert!(c
            .cluster_secret()
            .unwrap()
            .is_some_and(|s| s.matches(b"sec-0123456789abcdef")));
        let shown = format!(
            "{c:?} {:?} {:?}",
            c.auth_tokens().unwrap(),
            c.cluster_secret().unwrap()
        );
        assert!(
            !shown.contains("0123456789abcdef"),
            "a secret in Debug: {shown}"
        );
        assert!(parse(&[]).unwrap().cluster_secret().unwrap().is_none());

        std::fs::write(&secret, "short\n").unwrap();
        let err = c.cluster_secret().unwrap_err().to_string();
        assert!(err.contains("shorter than 16"), "{err}");
        assert!(
            !err.contains("short\n") && !err.contains(": short"),
            "{err}"
        );
        std::fs::write(&tokens, "tok-0123456789abcdef admin\n").unwrap();
        let err = c.auth_tokens().unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("tok-"), "{err}");
    }

    #[test]
    fn given_no_config_file_should_parse_flags_as_before() {
        let c =
            ServerConfig::load_from(["walrus-server", "--node-id", "4", "--log-format", "json"])
                .unwrap();
        assert_eq!(c.node_id, 4);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.config.is_none());
        assert!(matches!(
            ServerConfig::load_from(["walrus-server", "--log-format", "xml"]),
            Err(ConfigError::Args(_))
        ));
    }

    #[test]
    fn given_a_replication_factor_flag_should_make_it_the_node_default() {
        assert_eq!(
            parse(&[]).unwrap().node_config().replication_factor,
            None,
            "min(3, voters)"
        );
        let c = parse(&["--replication-factor", "3"]).unwrap();
        assert_eq!(c.node_config().replication_factor, Some(3));
        assert!(parse(&["--replication-factor", "0"]).is_err());
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
            "--retention-bytes",
            "2GiB",
        ])
        .unwrap();
        let n = c.node_config();
        assert_eq!(n.default_retention.max_bytes, Some(2 << 30));
        assert!(parse(&["--retention-bytes", "2GB"]).is_err());
        assert_eq!(n.default_retention.max_entries, Some(5000));
        assert_eq!(n.default_retention.max_age_ms, Some(2 * 3_600_000));
        assert_eq!(n.retention_interval, Duration::from_millis(250));
        assert!(
            parse(&["--retention-age", "2"]).is_err(),
            "a unit is needed"
        );
        assert_eq!(n.max_segment_bytes, u64::MAX, "no byte limit by default");
        let c = parse(&["--max-segment-bytes", "1048576"]).unwrap();
        assert_eq!(c.node_config().max_segment_bytes, 1 << 20);
        assert!(parse(&["--max-segment-bytes", "0"]).is_err());
    }
}
