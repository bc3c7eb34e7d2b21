//! `walrus-server`: one Walrus node. With no flags: node 1, a one-voter
//! cluster, clients on 127.0.0.1:9091, data under ./data/node_1.
//!
//! SIGTERM or Ctrl-C: stop accepting, finish in-flight requests, sync,
//! exit 0.

use std::process::ExitCode;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;
use walrus_server::config::{ConfigError, LogFormat, ServerConfig};
use walrus_server::stack::Stack;

fn main() -> ExitCode {
    let config = match ServerConfig::load() {
        Ok(c) => c,
        Err(ConfigError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("walrus-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("walrus-server: {e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walrus-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("walrus-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ServerConfig) -> anyhow::Result<()> {
    raise_fd_limit(&config);
    tracing::info!(
        node = config.node_id,
        data = %config.node_dir().display(),
        client = %config.client_bind_addr(),
        raft = %config.raft_bind_addr(),
        join = ?config.join,
        config = %config
            .config
            .as_deref()
            .map_or_else(|| "none".into(), |p| p.display().to_string()),
        fsync = %config.fsync,
        version = env!("CARGO_PKG_VERSION"),
        max_segment_entries = config.max_segment_entries,
        // Whether, never what: the files hold secrets.
        client_auth = config.auth_token_file.is_some(),
        cluster_secret = config.cluster_secret_file.is_some(),
        "starting"
    );
    let stack = tokio::select! {
        s = Stack::start(&config) => s?,
        sig = shutdown_signal() => {
            tracing::info!(signal = sig, "signal received while starting; exiting");
            return Ok(());
        }
    };
    tokio::select! {
        sig = shutdown_signal() => {
            tracing::info!(signal = sig, "shutting down");
            stack.shutdown().await;
            Ok(())
        }
        why = stack.refused() => {
            tracing::error!("the cluster refused this node's storage; stopping");
            stack.shutdown().await;
            Err(anyhow::anyhow!("{why}"))
        }
    }
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// File descriptors the node needs besides client connections: WAL files,
/// redb, Raft and forwarding connections, logs.
const FD_RESERVE: u64 = 512;

/// Every client connection is a file descriptor, and a process that runs out
/// cannot accept anyone (the accept loop backs off until one is freed): lift
/// the soft limit to the hard one, as far as the connection cap needs, and
/// say so when even that is too low.
fn raise_fd_limit(config: &ServerConfig) {
    let want = config.max_connections.saturating_add(FD_RESERVE);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur < want {
        tracing::warn!(
            open_files_limit = lim.rlim_cur,
            max_connections = config.max_connections,
            "the open-files limit is below --max-connections plus {FD_RESERVE}: past it, new \
             clients wait until a connection closes; raise `ulimit -n` (hard limit) or lower \
             --max-connections"
        );
    }
}

fn init_logging(config: &ServerConfig) -> anyhow::Result<()> {
    // openraft logs every election step at info; ours are the lifecycle lines.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let (writer, ansi) = match &config.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open --log-file {}: {e}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => {
            use std::io::IsTerminal;
            (
                BoxMakeWriter::new(std::io::stderr),
                std::io::stderr().is_terminal(),
            )
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        // One object per line with the event's fields at the top level,
        // as log shippers (Vector, Fluent Bit, Loki) expect them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}
