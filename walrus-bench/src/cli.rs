//! The command line of `walrus-bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use walrus_client::TlsConfig;

use crate::conn::Workload;
use crate::consume::{default_read_batch, ConsumeConfig, Mode};
use crate::run::{Length, RunConfig};

#[derive(Debug, Parser)]
#[command(
    name = "walrus-bench",
    version,
    about = "Load generator for Walrus: PUT/GET/mixed load with pipelining, HDR latency \
             percentiles (no coordinated omission with --rate) and --verify; consumer \
             workloads (-w read, fetch, tail-latency) that fill a topic, measure and check \
             every entry they read",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Retry `PUT <topic> probe` until one is answered OK; print the time it
    /// took (start-up and failover measurements).
    WaitWrite {
        #[arg(short, long, default_value = "127.0.0.1:9091")]
        addr: String,
        #[arg(long, default_value = "probe")]
        topic: String,
        /// REGISTER the topic first (retried like the PUT).
        #[arg(long)]
        register: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Retry `READ <topic> <offset> 1` until it returns the entry at that
    /// offset; print the time it took (failover: how soon the last
    /// acknowledged entry of a dead leader is readable again).
    WaitRead {
        #[arg(short, long, default_value = "127.0.0.1:9091")]
        addr: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        offset: u64,
        /// The payload the entry must hold (a different one fails at once).
        #[arg(long)]
        payload: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Send one request (the words joined by spaces) and print the answer.
    Request {
        #[arg(short, long, default_value = "127.0.0.1:9091")]
        addr: String,
        #[arg(required = true, trailing_var_arg = true)]
        words: Vec<String>,
    },
}

/// How the `wait-*` commands retry and report.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Pause between attempts.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub every: Duration,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    Put,
    Get,
    Mixed,
    /// Fill `<prefix>-0` with --fill entries, then READ them from --addr in
    /// batches of --read-batch, pass after pass, for --duration.
    Read,
    /// Fill `<prefix>-0`, then consume it as a new consumer group: FETCH
    /// --read-batch entries and COMMIT them (pipelined with the next FETCH).
    Fetch,
    /// --connections writers PUT to `<prefix>-0` for --duration while
    /// --readers long-poll it (READ … WAIT, or FETCH … WAIT with
    /// --tail-fetch); reports the delay from each PUT's send to its
    /// delivery.
    TailLatency,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Server address(es); connections are spread over them round-robin.
    #[arg(
        short,
        long = "addr",
        value_delimiter = ',',
        default_value = "127.0.0.1:9091"
    )]
    pub addrs: Vec<String>,
    #[arg(short, long, value_enum, default_value = "put")]
    pub workload: WorkloadArg,
    /// Share of GETs in the mixed workload, in percent.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub get_percent: u8,
    /// PUT payload size in bytes.
    #[arg(short, long, default_value_t = 1024)]
    pub size: usize,
    /// Number of connections.
    #[arg(short, long, default_value_t = 1)]
    pub connections: usize,
    /// Entries per write: above 1, each write is one PUTB of that many
    /// entries of --size bytes (all stored together); requests/s then
    /// counts batches.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Requests in flight per connection (pipeline depth).
    #[arg(short, long, default_value_t = 1)]
    pub depth: usize,
    /// How long to send (e.g. 10s, 500ms, 2m); 10s when neither this nor
    /// --requests is given. With --requests: an upper bound.
    #[arg(short = 't', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Send this many requests in total (within --duration, if given).
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Target rate in requests/s over all connections. A request held back
    /// because the server had not answered enough earlier ones (all `depth`
    /// slots taken) is timed from its intended send time, so a stalled
    /// server shows in the percentiles (no coordinated omission); one only
    /// late by the client's 1 ms timer is timed from its actual send.
    #[arg(short, long)]
    pub rate: Option<f64>,
    /// Number of topics (named <prefix>-0, <prefix>-1, ...).
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    #[arg(long, default_value = "bench")]
    pub topic_prefix: String,
    /// REGISTER the topics before the run.
    #[arg(long)]
    pub register: bool,
    /// Read everything back with GET after the run and check that every
    /// acknowledged payload comes back exactly once, intact.
    #[arg(long)]
    pub verify: bool,
    /// Do not set TCP_NODELAY: behave like an ordinary client.
    #[arg(long)]
    pub no_nodelay: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// How long to wait for answers still in flight when the run ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Speak TLS (to a server run with --tls-cert), trusting the CA
    /// certificate(s) of this PEM file.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host
    /// of each --addr).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// Send `AUTH <token>` first on every connection (a server run with
    /// `--auth-token-file`). Also read from WALRUS_TOKEN, which keeps it
    /// off the process list.
    #[arg(long, env = "WALRUS_TOKEN", hide_env_values = true,
          value_parser = |s: &str| Ok::<_, String>(walrus_core::Secret::new(s.trim())))]
    pub token: Option<walrus_core::Secret>,
    /// read, fetch: entries the fill step writes (with PUTB) before the
    /// measure step reads them.
    #[arg(long, default_value_t = 100_000)]
    pub fill: u64,
    /// read, fetch, tail-latency: entries asked for per READ or FETCH
    /// (default: 1000; 100 for fetch).
    #[arg(long)]
    pub read_batch: Option<u32>,
    /// tail-latency: long-polling readers, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub readers: usize,
    /// tail-latency: the readers FETCH and COMMIT as consumer groups
    /// instead of READing.
    #[arg(long)]
    pub tail_fetch: bool,
    /// tail-latency: the WAIT of each long-polling read, in ms.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Plan {
    Load(RunConfig),
    Consume(ConsumeConfig),
}

impl LoadArgs {
    /// The TLS settings of --tls-ca and --tls-server-name, if any.
    pub fn tls(&self) -> anyhow::Result<Option<TlsConfig>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let tls = TlsConfig::from_ca_file(ca)?;
        Ok(Some(match &self.tls_server_name {
            Some(name) => tls.with_server_name(name)?,
            None => tls,
        }))
    }

    pub fn plan(&self) -> Plan {
        let mode = match self.workload {
            WorkloadArg::Put | WorkloadArg::Get | WorkloadArg::Mixed => {
                return Plan::Load(self.to_config())
            }
            WorkloadArg::Read => Mode::Read,
            WorkloadArg::Fetch => Mode::Fetch,
            WorkloadArg::TailLatency => Mode::TailLatency,
        };
        let mut c = ConsumeConfig::new(mode, self.addrs[0].clone());
        c.targets = self.addrs.clone();
        c.topic_prefix = self.topic_prefix.clone();
        c.payload_size = self.size;
        c.fill = self.fill;
        c.read_batch = self.read_batch.unwrap_or(default_read_batch(mode));
        c.duration = self.duration.unwrap_or(Duration::from_secs(10));
        c.connections = self.connections;
        c.depth = self.depth;
        c.readers = self.readers;
        c.tail_fetch = self.tail_fetch;
        c.wait = Duration::from_millis(self.wait_ms);
        Plan::Consume(c)
    }

    /// The load run (`put`, `get` and `mixed`; the consumer workloads are
    /// in [`LoadArgs::plan`]).
    pub fn to_config(&self) -> RunConfig {
        RunConfig {
            targets: self.addrs.clone(),
            workload: match self.workload {
                WorkloadArg::Put
                | WorkloadArg::Read
                | WorkloadArg::Fetch
                | WorkloadArg::TailLatency => Workload::Put,
                WorkloadArg::Get => Workload::Get,
                WorkloadArg::Mixed => Workload::Mixed {
                    get_percent: self.get_percent,
                },
            },
            payload_size: self.size,
            batch: self.batch,
            connections: self.connections,
            depth: self.depth,
            length: match (self.requests, self.duration) {
                (Some(n), Some(d)) => Length::RequestsWithin(n, d),
                (Some(n), None) => Length::Requests(n),
                (None, Some(d)) => Length::Duration(d),
                (None, None) => Length::Duration(Duration::from_secs(10)),
            },
            rate: self.rate,
            topics: self.topics,
            topic_prefix: self.topic_prefix.clone(),
            register: self.register,
            verify: self.verify,
            nodelay: !self.no_nodelay,
            progress: !self.quiet && !self.json,
            drain_timeout: self.drain_timeout,
            verify_timeout: Duration::from_secs(300),
            tls: None,
            token: self.token.clone(),
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration; write e.g. 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("unknown unit in '{s}'; use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is not a usable duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_duration_texts_when_parsed_should_read_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn given_bench_flags_when_parsed_should_build_the_run() {
        let cli = Cli::try_parse_from([
            "walrus-bench",
            "--addr",
            "127.0.0.1:1,127.0.0.1:2",
            "-w",
            "mixed",
            "--get-percent",
            "20",
            "-c",
            "16",
            "-d",
            "32",
            "-n",
            "1000",
            "--no-nodelay",
            "--verify",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let cfg = cli.load.to_config();
        assert_eq!(cfg.targets.len(), 2);
        assert_eq!(cfg.workload, Workload::Mixed { get_percent: 20 });
        assert_eq!((cfg.connections, cfg.depth), (16, 32));
        assert!(matches!(cfg.length, Length::Requests(1000)));
        assert!(!cfg.nodelay && cfg.verify);
    }

    #[test]
    fn given_count_and_duration_together_when_parsed_should_bound_the_count_in_time() {
        let cli = Cli::try_parse_from(["walrus-bench", "-n", "5", "-t", "1s"]).unwrap();
        assert!(matches!(
            cli.load.to_config().length,
            Length::RequestsWithin(5, d) if d == Duration::from_secs(1)
        ));
        let cli = Cli::try_parse_from(["walrus-bench"]).unwrap();
        assert!(matches!(
            cli.load.to_config().length,
            Length::Duration(d) if d == Duration::from_secs(10)
        ));
    }

    #[test]
    fn given_consumer_workloads_when_parsed_should_plan_them_with_their_batch_sizes() {
        let plan = |args: &[&str]| {
            let mut all = vec!["walrus-bench"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).unwrap().load.plan() {
                Plan::Consume(c) => c,
                Plan::Load(_) => panic!("{args:?} is a consumer workload"),
            }
        };
        let read = plan(&["-w", "read", "--fill", "5000", "-t", "2s"]);
        assert_eq!(
            (read.mode, read.fill, read.read_batch),
            (Mode::Read, 5000, 1000)
        );
        assert_eq!(read.duration, Duration::from_secs(2));
        assert_eq!(plan(&["-w", "fetch"]).read_batch, 100);
        let tail = plan(&[
            "-w",
            "tail-latency",
            "-c",
            "16",
            "--readers",
            "2",
            "--tail-fetch",
            "--wait-ms",
            "500",
            "--read-batch",
            "10",
        ]);
        assert_eq!(
            (tail.mode, tail.connections, tail.readers),
            (Mode::TailLatency, 16, 2)
        );
        assert!(tail.tail_fetch);
        assert_eq!(
            (tail.wait, tail.read_batch),
            (Duration::from_millis(500), 10)
        );
        let load = Cli::try_parse_from(["walrus-bench", "-w", "get"]).unwrap();
        assert!(matches!(load.load.plan(), Plan::Load(_)));
    }

    #[test]
    fn given_a_subcommand_when_parsed_should_select_it() {
        let cli =
            Cli::try_parse_from(["walrus-bench", "request", "-a", "x:1", "STATE", "t"]).unwrap();
        match cli.command {
            Some(Command::Request { addr, words }) => {
                assert_eq!(addr, "x:1");
                assert_eq!(words, vec!["STATE", "t"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
