//! `walrus-echo`: answers every `[u32 LE len][body]` frame with `OK`, to
//! measure the ceiling of the network stack and of the client.

use clap::Parser;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "walrus-echo",
    version,
    about = "Answers every frame with OK: the network ceiling for walrus-bench"
)]
struct Args {
    /// Address to listen on.
    #[arg(short, long, default_value = "127.0.0.1:9099")]
    addr: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.addr))?;
    eprintln!("walrus-echo listening on {}", listener.local_addr()?);
    walrus_bench::echo::serve(listener).await?;
    Ok(())
}
