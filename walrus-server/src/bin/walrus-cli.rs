//! `walrus-cli`: the Walrus shell and one-off commands.
//!
//! `walrus-cli` opens the REPL (`🦭 > `); `walrus-cli put logs "hello"`
//! sends one command, prints the answer and exits non-zero on `ERR`.
//!
//! A one-off command is sent again (for up to `--retry-ms`) only while the
//! answer says it was certainly not carried out; a PUT whose outcome is
//! unknown is never resent (exit code 3): it may already be stored.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rustyline::error::ReadlineError;
use walrus_client::{
    putb_body, Client, ClientError, Entry, Producer, ReadOptions, RetainSetting, TlsConfig,
    MAX_BATCH_ENTRIES,
};

#[derive(Parser)]
#[command(name = "walrus-cli", version, about = "Talk to a Walrus node")]
struct Cli {
    /// The node's client address; several, comma-separated
    /// (`a:9091,b:9091`), to fail over to the next when one is down.
    #[arg(
        long,
        env = "WALRUS_ADDR",
        default_value = "127.0.0.1:9091",
        global = true
    )]
    addr: String,

    /// How long a one-off command keeps resending a request whose answer
    /// says it was not carried out (`ERR NotLeaderError`, `ERR write lease
    /// expired`, `ERR unavailable: …`, no connection), in ms. 0: send once.
    /// Never resends after an unknown outcome.
    #[arg(long, env = "WALRUS_RETRY_MS", default_value_t = 3000, global = true)]
    retry_ms: u64,

    /// Speak TLS to the node (which runs with --tls-cert), trusting the CA
    /// certificate(s) of this PEM file.
    #[arg(long, env = "WALRUS_TLS_CA", value_name = "PEM", global = true)]
    tls_ca: Option<std::path::PathBuf>,

    /// The name the node's certificate must carry (default: the host of
    /// --addr). Needs --tls-ca.
    #[arg(
        long,
        env = "WALRUS_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "tls_ca",
        global = true
    )]
    tls_server_name: Option<String>,

    /// A file holding the token to send as `AUTH <token>` on every
    /// connection (for a server run with `--auth-token-file`). The
    /// WALRUS_TOKEN environment variable gives the token itself instead;
    /// this flag wins over it. There is no flag taking the token itself:
    /// other users can read a process's command line.
    #[arg(long, env = "WALRUS_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

/// The token to authenticate with, if any: `--token-file`, else
/// `WALRUS_TOKEN`.
fn token(cli: &Cli) -> Result<Option<walrus_core::Secret>, String> {
    if let Some(path) = &cli.token_file {
        return walrus_core::Secret::read_file(path, "token").map(Some);
    }
    match std::env::var("WALRUS_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(Some(walrus_core::Secret::new(t.trim()))),
        _ => Ok(None),
    }
}

/// Exit codes of one-off commands.
const EXIT_ERR: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;
const EXIT_OUTCOME_UNKNOWN: u8 = 3;

#[derive(Subcommand)]
enum Command {
    /// Create a topic (OK if it exists). With --retain, also set its
    /// retention (on an existing topic too).
    Register {
        topic: String,
        /// The topic's retention: any of `entries=<n>`,
        /// `bytes=<n>[KiB|MiB|GiB|TiB]` and `age=<n>ms|s|m|h|d`, or `none`
        /// (keep everything) or `default` (the server's). A limit left out
        /// is no limit.
        #[arg(long, num_args = 1.., value_name = "LIMIT")]
        retain: Option<Vec<String>>,
        /// Copies of each segment (leader included), fixed when the topic
        /// is created; without it, the server's --replication-factor.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        rf: Option<u32>,
    },
    /// Show a topic's retention (its own, the one in force, its first
    /// offset) as JSON; with --retain, set it.
    Config {
        topic: String,
        /// As for `register --retain`: the topic's whole retention.
        #[arg(long, num_args = 1.., value_name = "LIMIT")]
        retain: Option<Vec<String>>,
    },
    /// Append one entry; words after the topic are joined with one space.
    /// With --file, append each line of a file (or of stdin: `-`) as an
    /// entry, in batches (PUTB) each stored whole.
    Put {
        topic: String,
        /// Append each non-empty line of this file (`-`: stdin) as one
        /// entry, without its line end, in batches of up to --batch lines.
        #[arg(long, conflicts_with = "payload")]
        file: Option<String>,
        /// Lines per batch with --file (1 to 10000; a batch is also cut
        /// before it passes 64 KiB).
        #[arg(long, default_value_t = 1000, requires = "file")]
        batch: usize,
        /// Write as this producer (with --file): each batch is stored once,
        /// however often it is resent, so a batch whose outcome is unknown
        /// is resent too. Prints the next sequence number on stderr.
        #[arg(long, requires = "file")]
        producer: Option<String>,
        /// The producer's first sequence number (0 for a new producer; the
        /// number printed by the previous run to go on).
        #[arg(long, default_value_t = 0, requires = "producer")]
        seq: u64,
        #[arg(required_unless_present = "file", num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
        payload: Vec<String>,
    },
    /// Take the next entry from the topic's shared cursor.
    Get { topic: String },
    /// The topic's segments and leaders, as JSON.
    State { topic: String },
    /// The node's consensus metrics, as JSON.
    Metrics,
    /// The list of topics, as JSON.
    Topics {
        /// With each topic's first and end offsets.
        #[arg(long)]
        counts: bool,
    },
    /// Read entries by offset, moving no cursor: one payload per entry,
    /// as stored. Prints the next offset to read on stderr.
    Read {
        topic: String,
        /// The offset to start at (see `offsets`).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Entries per request (1 to 10000).
        #[arg(long, default_value_t = 100)]
        max: u32,
        /// Keep reading and wait for new entries (long-polling, no busy
        /// loop), like `tail -f`. Stops on Ctrl-C, or when no node answers
        /// for --retry-ms (exit 2, after printing the next offset).
        #[arg(long, short = 'f')]
        follow: bool,
        /// How long each request of --follow waits at the end, in ms.
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
        /// Print `<offset>\t` before each payload.
        #[arg(long)]
        offsets: bool,
    },
    /// The topic's first offset and end (one past the last readable entry).
    Offsets { topic: String },
    /// Check that the node answers.
    Ping,
    /// With -f: print the last --lines entries, then each new entry as it
    /// is written (READ … WAIT long-polling: no cursor moves, nothing
    /// polls). Without -f: take entries from the shared cursor as they
    /// arrive (like GET, asking again every --poll-ms at the end). Stops on
    /// Ctrl-C; with -f also when no node answers for --retry-ms (exit 2,
    /// after printing the offset to go on from).
    Tail {
        topic: String,
        /// Follow by offset with long-polling reads.
        #[arg(long, short = 'f')]
        follow: bool,
        /// With -f: how many of the last entries to print first.
        #[arg(long, short = 'n', default_value_t = 10, requires = "follow")]
        lines: u64,
        /// With -f: how long each read waits at the end, in ms.
        #[arg(long, default_value_t = 30_000, requires = "follow")]
        wait_ms: u64,
        /// Without -f: how long to wait after reaching the end before
        /// asking again, in ms.
        #[arg(long, default_value_t = 200, conflicts_with = "follow")]
        poll_ms: u64,
    },
    /// Consumer groups: each reads a topic from its own committed offset.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Operator commands about a node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Send a raw request body and print the raw answer.
    Raw {
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
        request: Vec<String>,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Print the entries after the group's committed offset (from 0 when it
    /// never committed), one payload per line, and the offset to commit
    /// next on stderr. Commits nothing unless --commit: until a commit,
    /// the same entries come again (at-least-once).
    Fetch {
        group: String,
        topic: String,
        /// Entries at most (1 to 10000).
        #[arg(long, default_value_t = 100)]
        max: u32,
        /// At the end, wait this long for a new entry, in ms (0 to 60000).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// Commit the next offset once the entries are printed.
        #[arg(long)]
        commit: bool,
        /// Print `<offset>\t` before each payload.
        #[arg(long)]
        offsets: bool,
    },
    /// Set the group's offset: its next fetch starts there (forward or
    /// back, from the topic's first offset to its end). Safe to repeat.
    Commit {
        group: String,
        topic: String,
        offset: u64,
        /// Answered once the node applied it; durable in the background
        /// (`COMMIT … ASYNC`: after a crash of that node the group may
        /// fetch again from its last durable commit).
        #[arg(long = "async")]
        asynchronous: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Accept that a node lost its data: record its new (empty) storage so
    /// it can start again, and close the segments it held whose count was
    /// pending as lost (they keep the entries readers already got; readers
    /// go on past them). Run it against any running member once the node
    /// was refused with "came back with storage <storage-id>". Nothing else
    /// ever accepts a loss: a restart on an empty disk is refused.
    ReplaceStorage {
        /// The node whose data was lost.
        node: u64,
        /// The new storage id, as the refused node printed it (32 hex digits).
        storage: String,
    },
    /// Remove a node from the cluster for good: it leaves the consensus
    /// membership, is never chosen again as a segment leader or replica,
    /// and cannot join again; every segment that had a copy on it gets a
    /// new copy on another node (STATE's `under_replicated_segments` shows
    /// what is left to copy). Refused, changing nothing, when it would
    /// lose data (the node leads an open or pending segment, or holds the
    /// only copy of one) or leave consensus without a live majority.
    Remove {
        /// The node to remove.
        node: u64,
    },
}

/// The TLS settings of --tls-ca and --tls-server-name, if any.
fn tls(ca: Option<&std::path::Path>, name: Option<&str>) -> std::io::Result<Option<TlsConfig>> {
    let Some(ca) = ca else { return Ok(None) };
    let tls = TlsConfig::from_ca_file(ca)?;
    match name {
        Some(name) => tls.with_server_name(name).map(Some),
        None => Ok(Some(tls)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut client =
        Client::with_nodes(cli.addr.split(',').map(str::trim).filter(|a| !a.is_empty()));
    match tls(cli.tls_ca.as_deref(), cli.tls_server_name.as_deref()) {
        Ok(None) => {}
        Ok(Some(tls)) => client = client.with_tls(tls),
        Err(e) => {
            eprintln!("walrus-cli: {e}");
            return ExitCode::from(EXIT_ERR);
        }
    }
    match token(&cli) {
        Ok(Some(token)) => client = client.with_auth(token.expose()),
        Ok(None) => {}
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_ERR);
        }
    }
    let patience = Duration::from_millis(cli.retry_ms);
    match cli.command {
        None => repl(&rt, &client),
        Some(Command::Tail {
            topic,
            follow: true,
            lines,
            wait_ms,
            ..
        }) => rt.block_on(async {
            let from = match tail_start(&client, &topic, lines, patience).await {
                Ok(from) => from,
                Err(code) => return code,
            };
            let read = ReadArgs {
                topic,
                from,
                max: 1000,
                wait: Some(Duration::from_millis(wait_ms)),
                offsets: false,
                patience,
            };
            read_entries(&client, read).await
        }),
        Some(Command::Tail { topic, poll_ms, .. }) => rt.block_on(tail(&client, &topic, poll_ms)),
        Some(Command::Read {
            topic,
            from,
            max,
            follow,
            wait_ms,
            offsets,
        }) => {
            let read = ReadArgs {
                topic,
                from,
                max,
                wait: follow.then(|| Duration::from_millis(wait_ms)),
                offsets,
                patience,
            };
            rt.block_on(read_entries(&client, read))
        }
        Some(Command::Group {
            command:
                GroupCommand::Fetch {
                    group,
                    topic,
                    max,
                    wait_ms,
                    commit,
                    offsets,
                },
        }) => {
            let options = ReadOptions {
                max_entries: max,
                wait: Duration::from_millis(wait_ms),
                ..ReadOptions::default()
            };
            let fetch = GroupFetch {
                group,
                topic,
                options,
                commit,
                offsets,
            };
            rt.block_on(group_fetch(&client, fetch))
        }
        Some(Command::Put {
            topic,
            file: Some(file),
            batch,
            producer,
            seq,
            ..
        }) => {
            let put = PutFile {
                topic,
                file,
                batch,
                producer: producer.map(|id| Producer::resume(id, seq)),
                patience,
            };
            rt.block_on(put_file(&client, put))
        }
        // A health check reports what it finds now; raw sends exactly once.
        Some(Command::Ping) => one_off(&rt, &client, "PING", None),
        Some(Command::Raw { request }) => one_off(&rt, &client, &request.join(" "), None),
        Some(cmd) => {
            let request = match cmd {
                Command::Register { topic, retain, rf } => {
                    let mut request = format!("REGISTER {topic}");
                    if let Some(limits) = retain {
                        match retain_words(&limits) {
                            Ok(words) => request.push_str(&format!(" RETAIN {words}")),
                            Err(code) => return code,
                        }
                    }
                    if let Some(n) = rf {
                        request.push_str(&format!(" RF {n}"));
                    }
                    request
                }
                Command::Config {
                    topic,
                    retain: None,
                } => format!("CONFIG {topic}"),
                Command::Config {
                    topic,
                    retain: Some(limits),
                } => match retain_words(&limits) {
                    Ok(words) => format!("CONFIG {topic} RETAIN {words}"),
                    Err(code) => return code,
                },
                Command::Put { topic, payload, .. } => format!("PUT {topic} {}", payload.join(" ")),
                Command::Get { topic } => format!("GET {topic}"),
                Command::State { topic } => format!("STATE {topic}"),
                Command::Metrics => "METRICS".into(),
                Command::Topics { counts: false } => "TOPICS".into(),
                Command::Topics { counts: true } => "TOPICS COUNTS".into(),
                Command::Offsets { topic } => format!("OFFSETS {topic}"),
                Command::Node {
                    command: NodeCommand::ReplaceStorage { node, storage },
                } => format!("REPLACE-STORAGE {node} {storage}"),
                Command::Node {
                    command: NodeCommand::Remove { node },
                } => format!("REMOVE-NODE {node}"),
                Command::Group {
                    command:
                        GroupCommand::Commit {
                            group,
                            topic,
                            offset,
                            asynchronous,
                        },
                } => {
                    let mode = if asynchronous { " ASYNC" } else { "" };
                    format!("COMMIT {group} {topic} {offset}{mode}")
                }
                Command::Ping
                | Command::Group {
                    command: GroupCommand::Fetch { .. },
                }
                | Command::Raw { .. }
                | Command::Tail { .. }
                | Command::Read { .. } => {
                    unreachable!("handled above")
                }
            };
            one_off(&rt, &client, &request, Some(patience))
        }
    }
}

/// The words after `RETAIN` for the `--retain` values, checked here with
/// the server's own parser so that a typo is refused before anything is
/// sent.
fn retain_words(limits: &[String]) -> Result<String, ExitCode> {
    RetainSetting::parse(&limits.join(" "))
        .map(|setting| setting.to_words())
        .map_err(|e| {
            eprintln!("--retain: {e}");
            ExitCode::from(EXIT_ERR)
        })
}

/// `tail -f`: the offset of the last `lines` entries (the first retained
/// one at most), resending while no node answers, for up to `patience`.
async fn tail_start(
    client: &Client,
    topic: &str,
    lines: u64,
    patience: Duration,
) -> Result<u64, ExitCode> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match client.offsets(topic).await {
            Ok((first, end)) => return Ok(end.saturating_sub(lines).max(first)),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                eprintln!("ERR {}", explain(&e, client.addr()));
                return Err(ExitCode::from(if e.is_retryable() {
                    EXIT_UNREACHABLE
                } else {
                    EXIT_ERR
                }));
            }
        }
    }
}

/// Sends `request` (resending what was certainly not carried out for up to
/// `retry`, if given), prints the answer and exits with its code.
fn one_off(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    request: &str,
    retry: Option<Duration>,
) -> ExitCode {
    let outcome = rt.block_on(async {
        match retry {
            Some(patience) => client.send_retrying(request, patience).await,
            None => client.send_raw(request).await,
        }
    });
    let code = exit_code(&outcome);
    match outcome {
        Ok(answer) if code == 0 => println!("{}", pretty(&answer)),
        Ok(answer) => eprintln!("{answer}"),
        Err(e) => eprintln!("error: {}", explain(&e, client.addr())),
    }
    ExitCode::from(code)
}

/// 0 for an answer that is not `ERR`; 3 when the outcome is unknown (the
/// server said so, or the request was sent and no answer came); 2 when the
/// node could not be reached; 1 for any other `ERR` or failure.
fn exit_code(outcome: &Result<String, ClientError>) -> u8 {
    match outcome {
        Ok(answer) => match answer.strip_prefix("ERR ") {
            None => 0,
            Some(text) if ClientError::Server(text.into()).is_outcome_unknown() => {
                EXIT_OUTCOME_UNKNOWN
            }
            Some(_) => EXIT_ERR,
        },
        Err(e) if e.is_outcome_unknown() => EXIT_OUTCOME_UNKNOWN,
        Err(ClientError::Io { .. } | ClientError::Timeout(_)) => EXIT_UNREACHABLE,
        Err(_) => EXIT_ERR,
    }
}

fn repl(rt: &tokio::runtime::Runtime, client: &Client) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot open the terminal for the shell: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".walrus_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "Walrus shell on {}. Commands: REGISTER, CONFIG, PUT, GET, READ, OFFSETS, STATE, METRICS, TOPICS, PING; exit or Ctrl-D to leave.",
        client.addr()
    );
    loop {
        match editor.readline("🦭 > ") {
            Ok(line) => {
                let line = line.trim_end_matches(['\r', '\n']);
                if line.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line);
                if matches!(line.trim(), "exit" | "quit") {
                    break;
                }
                if line.trim() == "help" {
                    println!("REGISTER <topic> [RETAIN …] | CONFIG <topic> [RETAIN …] | PUT <topic> <payload> | GET <topic> | READ <topic> <offset> [max_entries] [max_bytes] [WAIT <ms>] | OFFSETS <topic> | STATE <topic> | METRICS | TOPICS [COUNTS] | PING | exit");
                    continue;
                }
                match rt.block_on(client.send_raw(line)) {
                    Ok(answer) => println!("{}", pretty(&answer)),
                    Err(e) => println!("error: {}", explain(&e, client.addr())),
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("cannot read the terminal: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    ExitCode::SUCCESS
}

async fn tail(client: &Client, topic: &str, poll_ms: u64) -> ExitCode {
    loop {
        let step = tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            r = client.get(topic) => r,
        };
        match step {
            Ok(Some(entry)) => println!("{entry}"),
            Ok(None) => tokio::time::sleep(Duration::from_millis(poll_ms)).await,
            Err(e) if e.is_retryable() => {
                eprintln!("{}; retrying", explain(&e, client.addr()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Asking again cannot duplicate anything (a GET stores
            // nothing), but the entry that GET took may be lost to us: say so.
            Err(e) if e.is_outcome_unknown() => {
                eprintln!("warning: {e}; an entry may have been skipped; following on");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                eprintln!("ERR {}", explain(&e, client.addr()));
                return ExitCode::FAILURE;
            }
        }
    }
}

struct PutFile {
    topic: String,
    file: String,
    batch: usize,
    producer: Option<Producer>,
    patience: Duration,
}

/// `put --file`: the file's lines as entries, in PUTBs of up to `batch`
/// lines and 64 KiB. Prints one line per stored batch (`OK <n> <first>`);
/// stops at the first batch not stored, with the exit code of its error.
async fn put_file(client: &Client, mut put: PutFile) -> ExitCode {
    if !(1..=MAX_BATCH_ENTRIES).contains(&put.batch) {
        eprintln!(
            "--batch must be 1 to {MAX_BATCH_ENTRIES}, got {}",
            put.batch
        );
        return ExitCode::from(EXIT_ERR);
    }
    let text = if put.file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(&put.file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e} (it must be UTF-8 text)", put.file);
            return ExitCode::from(EXIT_ERR);
        }
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let mut code = 0;
    let mut at = 0;
    while at < lines.len() {
        // As many lines as fit one frame, within --batch.
        let mut end = (at + put.batch).min(lines.len());
        // 300: room for ` PRODUCER <id> <seq>`.
        while end > at + 1 && putb_body(&put.topic, &lines[at..end], None).len() + 300 > 65536 {
            end = at + (end - at) / 2;
        }
        let outcome = client
            .put_batch_retrying(
                &put.topic,
                &lines[at..end],
                put.producer.as_mut(),
                put.patience,
            )
            .await;
        match outcome {
            Ok(ack) => match ack.first {
                Some(first) => println!("OK {} {first}", ack.n),
                None => println!("OK {}", ack.n),
            },
            Err(e) => {
                eprintln!(
                    "error: {} ({at} of {} lines were stored before this batch)",
                    explain(&e, client.addr()),
                    lines.len()
                );
                code = match e {
                    e if e.is_outcome_unknown() => EXIT_OUTCOME_UNKNOWN,
                    ClientError::Io { .. } | ClientError::Timeout(_) => EXIT_UNREACHABLE,
                    _ => EXIT_ERR,
                };
                break;
            }
        }
        at = end;
    }
    if let Some(p) = &put.producer {
        eprintln!("producer {} next sequence {}", p.id(), p.next_seq());
    }
    ExitCode::from(code)
}

struct ReadArgs {
    topic: String,
    from: u64,
    max: u32,
    /// `Some`: follow, each request waiting this long at the end.
    wait: Option<Duration>,
    offsets: bool,
    /// How long to keep resending a READ answered "not applied".
    patience: Duration,
}

/// `read`: prints entries from `from` on; without --follow, until the end
/// as it is now. A READ changes nothing, so every failure that may pass
/// (a node down, a segment waiting for its count) is simply asked again.
async fn read_entries(client: &Client, args: ReadArgs) -> ExitCode {
    let options = ReadOptions {
        max_entries: args.max,
        wait: args.wait.unwrap_or_default(),
        ..ReadOptions::default()
    };
    let mut next = args.from;
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let step = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            r = client.read(&args.topic, next, options) => r,
        };
        match step {
            Ok(batch) => {
                failing_since = None;
                if !print_entries(&batch.entries, args.offsets) {
                    return ExitCode::SUCCESS; // stdout closed (a pipe into head)
                }
                next = batch.next;
                if batch.entries.is_empty() && args.wait.is_none() {
                    break;
                }
            }
            // A node restarting or failing over is waited out. A follower
            // waits as long as a node answers (a segment whose node is
            // down comes back), but not for a server that is gone: no
            // connection for --retry-ms ends it, saying where to go on.
            Err(e) if e.is_retryable() => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                let gone = args.wait.is_none() || matches!(e, ClientError::Io { .. });
                if gone && since.elapsed() >= args.patience {
                    eprintln!("ERR {}", explain(&e, client.addr()));
                    eprintln!("next offset: {next}");
                    return ExitCode::from(EXIT_UNREACHABLE);
                }
                eprintln!("{}; retrying", explain(&e, client.addr()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                eprintln!("ERR {}", explain(&e, client.addr()));
                eprintln!("next offset: {next}");
                return ExitCode::from(EXIT_ERR);
            }
        }
    }
    eprintln!("next offset: {next}");
    ExitCode::SUCCESS
}

/// Prints one payload per line (`<offset>\t` first with `offsets`);
/// false when stdout is closed (a pipe into `head`).
fn print_entries(entries: &[Entry], offsets: bool) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for e in entries {
        let written = if offsets {
            writeln!(out, "{}\t{}", e.offset, e.payload)
        } else {
            writeln!(out, "{}", e.payload)
        };
        if written.is_err() {
            return false;
        }
    }
    out.flush().is_ok()
}

struct GroupFetch {
    group: String,
    topic: String,
    options: ReadOptions,
    /// Commit the answer's `next` after printing its entries.
    commit: bool,
    offsets: bool,
}

/// `group fetch`: one FETCH, printed like `read`, then (with --commit) a
/// COMMIT of the next offset. Printed before committed: a crash between
/// the two prints the entries again next time, never loses them.
async fn group_fetch(client: &Client, args: GroupFetch) -> ExitCode {
    let batch = match client.fetch(&args.group, &args.topic, args.options).await {
        Ok(batch) => batch,
        Err(e) => {
            eprintln!("ERR {}", explain(&e, client.addr()));
            return ExitCode::from(if e.is_retryable() {
                EXIT_UNREACHABLE
            } else {
                EXIT_ERR
            });
        }
    };
    if !print_entries(&batch.entries, args.offsets) {
        // stdout closed: what was fetched was not all delivered, so
        // nothing is committed.
        return ExitCode::from(EXIT_ERR);
    }
    eprintln!("next offset: {}", batch.next);
    if args.commit && !batch.entries.is_empty() {
        if let Err(e) = client.commit(&args.group, &args.topic, batch.next).await {
            eprintln!(
                "ERR committing {}: {}; the entries come again on the next fetch",
                batch.next,
                explain(&e, client.addr())
            );
            return ExitCode::from(EXIT_ERR);
        }
    }
    ExitCode::SUCCESS
}

/// JSON answers (STATE, METRICS, TOPICS) pretty-printed; others as they are.
fn pretty(answer: &str) -> String {
    if answer.starts_with('{') || answer.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(answer) {
            if let Ok(p) = serde_json::to_string_pretty(&v) {
                return p;
            }
        }
    }
    answer.to_string()
}

fn explain(e: &ClientError, addr: &str) -> String {
    match e {
        ClientError::Io { .. } => format!(
            "{e}. Is a walrus-server listening on {addr}? Start one with `walrus-server`, or point --addr at a node"
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> Result<String, ClientError> {
        Ok(text.to_string())
    }

    #[test]
    fn given_each_kind_of_outcome_should_exit_with_its_own_code() {
        assert_eq!(exit_code(&server("OK")), 0);
        assert_eq!(exit_code(&server("EMPTY")), 0);
        assert_eq!(exit_code(&server("ERR topic not found")), EXIT_ERR);
        assert_eq!(exit_code(&server("ERR write lease expired")), EXIT_ERR);
        assert_eq!(
            exit_code(&server("ERR outcome unknown: no answer from node 2")),
            EXIT_OUTCOME_UNKNOWN
        );
        let lost = ClientError::NoAnswer {
            addr: "a:1".into(),
            verb: "PUT",
            why: "connection reset".into(),
        };
        assert_eq!(exit_code(&Err(lost)), EXIT_OUTCOME_UNKNOWN);
        let refused = ClientError::Io {
            addr: "a:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(exit_code(&Err(refused)), EXIT_UNREACHABLE);
    }
}
