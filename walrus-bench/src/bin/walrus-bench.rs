//! `walrus-bench`: see `walrus-bench --help`.

use std::process::ExitCode;

use clap::Parser;
use walrus_bench::cli::{Cli, Command, Plan};
use walrus_bench::{consume, probe, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrus-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => {
            let json = cli.load.json;
            let cfg = match cli.load.plan() {
                Plan::Load(cfg) => cfg,
                Plan::Consume(cfg) => {
                    if cli.load.tls_ca.is_some() {
                        anyhow::bail!(
                            "--tls-ca: the read, fetch and tail-latency workloads do not speak TLS \
                             yet; use --workload put, get or mixed"
                        );
                    }
                    let report = consume::run(cfg).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", report.to_text());
                    }
                    // A reader that got wrong entries makes the figure
                    // worthless: fail the script, as a failed --verify does.
                    return Ok(if report.check.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    });
                }
            };
            let mut cfg = cfg;
            cfg.tls = cli.load.tls()?;
            let report = run::run(cfg).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            // Errors during a run are measurements; a failed verification
            // is a broken promise and must fail a script.
            let verify_failed = report.verify.as_ref().is_some_and(|v| !v.ok);
            Ok(if verify_failed {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Some(Command::WaitWrite {
            addr,
            topic,
            register,
            wait,
        }) => {
            let w =
                probe::wait_for_write(&addr, &topic, register, wait.every, wait.timeout).await?;
            print_wait("write accepted", &w, wait.json);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::WaitRead {
            addr,
            topic,
            offset,
            payload,
            wait,
        }) => {
            let w = probe::wait_for_read(
                &addr,
                &topic,
                offset,
                payload.as_deref(),
                wait.every,
                wait.timeout,
            )
            .await?;
            print_wait(&format!("offset {offset} read"), &w, wait.json);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Request { addr, words }) => {
            let body = words.join(" ");
            let answer =
                probe::one_request(&addr, &body, std::time::Duration::from_secs(10)).await?;
            println!("{}", String::from_utf8_lossy(&answer));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints how long a wait took, as text or as a JSON object.
fn print_wait(what: &str, w: &probe::WaitOutcome, json: bool) {
    let ms = w.elapsed.as_secs_f64() * 1000.0;
    if json {
        let v = serde_json::json!({
            "elapsed_ms": ms,
            "failed_attempts": w.failed_attempts,
            "last_error": w.last_error,
        });
        println!("{v}");
    } else {
        println!(
            "{what} after {ms:.1} ms ({} failed attempts{})",
            w.failed_attempts,
            w.last_error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
}
