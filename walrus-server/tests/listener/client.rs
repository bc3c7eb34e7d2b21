//! The client library (walrus-client) against the real client listener:
//! round trips, pipelining, and reconnecting after the server closed or
//! restarted (the failures a scripted server cannot show).

use std::sync::Arc;
use std::time::Duration;

use walrus_client::{CliClient, ClientError, ReadOptions};
use walrus_core::locks::MutexExt;
use walrus_core::protocol::{Request, Response};
use walrus_server::listener::{ClientHandler, ClientListener, ListenerConfig};

/// A one-topic in-memory log, enough to drive the client.
#[derive(Default)]
struct Mini {
    log: std::sync::Mutex<(Vec<bytes::Bytes>, usize)>,
}

#[async_trait::async_trait]
impl ClientHandler for Mini {
    async fn handle(&self, req: Request) -> Response {
        let mut log = self.log.lock_or_recover();
        match req {
            Request::Register(_) | Request::RegisterRetaining { .. } | Request::Config { .. } => {
                Response::Ok
            }
            Request::Put { topic, payload } if topic.as_str() == "logs" => {
                log.0.push(payload);
                Response::Ok
            }
            Request::Put { .. } => Response::Err("topic not found".into()),
            Request::PutBatch { entries, .. } => {
                let first = log.0.len() as u64;
                let n = entries.len() as u64;
                log.0.extend(entries);
                Response::Stored {
                    n,
                    first: Some(first),
                }
            }
            Request::Get(_) => {
                let (entries, cursor) = &mut *log;
                match entries.get(*cursor) {
                    Some(e) => {
                        *cursor += 1;
                        Response::Entry(e.clone())
                    }
                    None => Response::Empty,
                }
            }
            Request::State(_) | Request::Metrics | Request::Topics | Request::TopicCounts => {
                Response::Json(format!("{{\"count\":{}}}", log.0.len()))
            }
            Request::Read {
                offset,
                max_entries,
                ..
            } => {
                let entries: Vec<(u64, bytes::Bytes)> = (offset..)
                    .zip(log.0.iter().skip(offset as usize).cloned())
                    .take(max_entries as usize)
                    .collect();
                let next = offset + entries.len() as u64;
                Response::Entries { entries, next }
            }
            Request::Offsets(_) => {
                Response::Json(format!("{{\"first\":0,\"end\":{}}}", log.0.len()))
            }
            Request::Ping => Response::Pong,
            Request::ReplaceStorage { .. }
            | Request::RemoveNode { .. }
            | Request::Fetch { .. }
            | Request::Commit { .. } => Response::Err("not here".into()),
        }
    }
}

async fn server() -> ClientListener {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ClientListener::start(l, Arc::new(Mini::default()), ListenerConfig::default()).unwrap()
}

/// A listener on `addr` with `config`, and its log to look into.
async fn server_at(addr: &str, config: ListenerConfig) -> (ClientListener, Arc<Mini>) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mini = Arc::new(Mini::default());
    (
        ClientListener::start(l, mini.clone(), config).unwrap(),
        mini,
    )
}

fn stored(mini: &Mini) -> Vec<bytes::Bytes> {
    mini.log.lock_or_recover().0.clone()
}

#[tokio::test]
async fn given_the_seed_example_should_round_trip() {
    let s = server().await;
    let c = CliClient::new(s.local_addr().to_string());
    c.register("logs").await.unwrap();
    c.put("logs", "hello world").await.unwrap();
    c.put("logs", "{\"event\":\"test\"}").await.unwrap();
    assert_eq!(c.get("logs").await.unwrap().as_deref(), Some("hello world"));
    assert_eq!(
        c.get("logs").await.unwrap().as_deref(),
        Some("{\"event\":\"test\"}")
    );
    assert_eq!(c.get("logs").await.unwrap(), None);
    assert_eq!(c.state("logs").await.unwrap()["count"], 2);
    c.ping().await.unwrap();
}

#[tokio::test]
async fn given_payloads_with_spaces_and_newlines_when_reading_by_offset_should_get_them_exactly_without_moving_the_cursor(
) {
    let s = server().await;
    let c = CliClient::new(s.local_addr().to_string());
    let payloads = ["a b", "line one\nline two\n", "3 4\n", " ENTRIES 9 9\n"];
    for p in payloads {
        c.put("logs", p).await.unwrap();
    }
    let opts = ReadOptions {
        max_entries: 3,
        ..ReadOptions::default()
    };
    let first = c.read("logs", 0, opts).await.unwrap();
    assert_eq!(first.next, 3);
    let second = c.read("logs", first.next, opts).await.unwrap();
    let got: Vec<(u64, String)> = first
        .entries
        .into_iter()
        .chain(second.entries)
        .map(|e| (e.offset, e.payload))
        .collect();
    let want: Vec<(u64, String)> = (0..).zip(payloads.map(String::from)).collect();
    assert_eq!(got, want);
    assert_eq!(second.next, 4);
    assert_eq!(c.offsets("logs").await.unwrap(), (0, 4));
    // The shared cursor did not move.
    assert_eq!(c.get("logs").await.unwrap().as_deref(), Some("a b"));
}

#[tokio::test]
async fn given_an_err_answer_should_carry_the_server_text() {
    let s = server().await;
    let c = CliClient::new(s.local_addr().to_string());
    let e = c.put("nope", "x").await.unwrap_err();
    assert_eq!(e.to_string(), "topic not found");
    assert_eq!(
        c.send_raw("PUT nope x").await.unwrap(),
        "ERR topic not found"
    );
    assert!(matches!(
        c.send_raw("").await,
        Err(ClientError::TooLarge(0))
    ));
}

#[tokio::test]
async fn given_a_bulk_put_should_pipeline_in_order() {
    let s = server().await;
    let c = CliClient::new(s.local_addr().to_string());
    let payloads: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    let outcomes = c.put_many("logs", &payloads, 128).await;
    assert!(outcomes.iter().all(|o| o.is_ok()));
    for p in &payloads {
        assert_eq!(c.get("logs").await.unwrap().as_ref(), Some(p));
    }
}

#[tokio::test]
async fn given_a_restarted_server_should_reconnect_on_the_next_call() {
    let s = server().await;
    let addr = s.local_addr();
    let c = CliClient::new(addr.to_string()).with_timeout(Duration::from_secs(2));
    c.ping().await.unwrap();
    assert!(s.shutdown().await);
    assert!(c.ping().await.is_err(), "the old connection is gone");
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _s2 =
        ClientListener::start(l, Arc::new(Mini::default()), ListenerConfig::default()).unwrap();
    c.ping().await.unwrap();
}

#[tokio::test]
async fn given_the_server_closed_an_idle_connection_when_putting_again_should_store_it_once() {
    let idle = Duration::from_millis(50);
    let config = ListenerConfig {
        idle_connection_timeout: idle,
        ..ListenerConfig::default()
    };
    let (s, mini) = server_at("127.0.0.1:0", config).await;
    let c = CliClient::new(s.local_addr().to_string());
    c.put("logs", "first").await.unwrap();
    // Far past the server's idle timeout, so it has closed the
    // connection the client keeps.
    tokio::time::sleep(idle * 20).await;
    c.put("logs", "second").await.unwrap();
    assert_eq!(stored(&mini), ["first", "second"]);
}

#[tokio::test]
async fn given_a_restarted_server_when_putting_through_the_same_client_should_store_it_once() {
    let (s, _) = server_at("127.0.0.1:0", ListenerConfig::default()).await;
    let addr = s.local_addr().to_string();
    let c = CliClient::new(addr.clone());
    c.put("logs", "before").await.unwrap();
    assert!(s.shutdown().await);
    let (_s2, mini) = server_at(&addr, ListenerConfig::default()).await;
    c.put("logs", "after").await.unwrap();
    assert_eq!(stored(&mini), ["after"]);
}
