//! The listener through its socket: framing, order, batching, caps and
//! the budget, against small handlers.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use walrus_core::protocol::MAX_FRAME;

use super::lanes::MAX_BATCH_ENTRIES;
use walrus_core::locks::MutexExt;

/// Answers PING at once; `PUT t <ms>` after sleeping `ms` and echoes the
/// payload; records the order PUTs finish in.
struct Echo {
    finished: std::sync::Mutex<Vec<String>>,
    active: AtomicUsize,
}

#[async_trait]
impl ClientHandler for Echo {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Ping => Response::Pong,
            Request::Put { payload, .. } => {
                self.active.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&payload).into_owned();
                let ms: u64 = text.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.finished.lock_or_recover().push(text.clone());
                self.active.fetch_sub(1, Ordering::SeqCst);
                Response::Entry(payload)
            }
            _ => Response::Err("not in this test".into()),
        }
    }
}

async fn serve(config: ListenerConfig) -> (ClientListener, Arc<Echo>) {
    let echo = Arc::new(Echo {
        finished: Default::default(),
        active: AtomicUsize::new(0),
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (
        ClientListener::start(l, echo.clone(), config).unwrap(),
        echo,
    )
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

async fn read_resp(s: &mut TcpStream) -> Option<String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(String::from_utf8(body).unwrap())
}

/// Answers every READ with `count` entries of 60 KB from its offset.
struct Wide {
    count: u64,
}

#[async_trait]
impl ClientHandler for Wide {
    async fn handle(&self, req: Request) -> Response {
        let Request::Read { offset, .. } = req else {
            return Response::Err("not in this test".into());
        };
        let entries: Vec<(u64, Bytes)> = (offset..offset + self.count)
            .map(|o| (o, Bytes::from(vec![b'x'; 60_000])))
            .collect();
        Response::Entries {
            next: offset + self.count,
            entries,
        }
    }
}

#[tokio::test]
async fn given_a_read_answer_larger_than_the_budget_should_send_the_entries_that_fit_and_their_next(
) {
    let config = ListenerConfig {
        max_bytes_in_flight: MIN_BYTES_IN_FLIGHT,
        ..ListenerConfig::default()
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wide = Arc::new(Wide { count: 40 }); // 2.4 MB, over the 1 MiB budget
    let l = ClientListener::start(l, wide, config).unwrap();
    let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
    s.write_all(&frame(b"READ t 100")).await.unwrap();
    let body = read_resp(&mut s).await.unwrap();
    let (entries, next) =
        walrus_core::protocol::parse_entries(body.as_bytes()).expect("a whole ENTRIES answer");
    assert!(
        !entries.is_empty() && entries.len() < 40,
        "{} entries",
        entries.len()
    );
    assert!(body.len() <= MIN_BYTES_IN_FLIGHT, "{} bytes", body.len());
    assert_eq!(entries[0].0, 100);
    assert_eq!(
        next,
        100 + entries.len() as u64,
        "the reader goes on where it stopped"
    );
    // The budget is whole again once the answer is written.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(l.bytes_in_flight(), 0);
}

#[tokio::test]
async fn given_pipelined_requests_when_later_ones_finish_first_should_answer_in_request_order() {
    let (l, echo) = serve(ListenerConfig::default()).await;
    let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
    let mut bytes = Vec::new();
    bytes.extend(frame(b"PUT a 200 slow"));
    bytes.extend(frame(b"PUT b 0 fast"));
    bytes.extend(frame(b"PING"));
    s.write_all(&bytes).await.unwrap();
    assert_eq!(read_resp(&mut s).await.unwrap(), "OK 200 slow");
    assert_eq!(read_resp(&mut s).await.unwrap(), "OK 0 fast");
    assert_eq!(read_resp(&mut s).await.unwrap(), "OK PONG");
    // Different topics ran concurrently: the fast one finished first.
    assert_eq!(*echo.finished.lock_or_recover(), vec!["0 fast", "200 slow"]);
}

#[tokio::test]
async fn given_pipelined_puts_on_one_topic_should_run_them_in_order() {
    let (l, echo) = serve(ListenerConfig::default()).await;
    let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
    let mut bytes = Vec::new();
    for (i, ms) in [50, 0, 20, 0].iter().enumerate() {
        bytes.extend(frame(format!("PUT t {ms} #{i}").as_bytes()));
    }
    s.write_all(&bytes).await.unwrap();
    for _ in 0..4 {
        read_resp(&mut s).await.unwrap();
    }
    assert_eq!(
        *echo.finished.lock_or_recover(),
        vec!["50 #0", "0 #1", "20 #2", "0 #3"]
    );
}

/// Stores PUTs in a list; a batch is one "append". The first PUT of a
/// topic takes 100 ms, so the ones pipelined behind it queue up.
#[derive(Default)]
struct Batching {
    stored: std::sync::Mutex<Vec<String>>,
    appends: std::sync::Mutex<Vec<usize>>,
}

#[async_trait]
impl ClientHandler for Batching {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Put { topic, payload } => {
                self.handle_puts(topic, vec![payload]).await.remove(0)
            }
            _ => Response::Err("not in this test".into()),
        }
    }

    async fn handle_puts(&self, _topic: TopicName, payloads: Vec<Bytes>) -> Vec<Response> {
        if self.appends.lock_or_recover().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.appends.lock_or_recover().push(payloads.len());
        let mut stored = self.stored.lock_or_recover();
        payloads
            .iter()
            .map(|p| {
                stored.push(String::from_utf8_lossy(p).into_owned());
                Response::Entry(Bytes::from(format!("#{}", stored.len() - 1)))
            })
            .collect()
    }
}

#[tokio::test]
async fn given_puts_pipelined_behind_a_slow_one_should_batch_them_and_keep_their_order() {
    let handler = Arc::new(Batching::default());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l = ClientListener::start(l, handler.clone(), ListenerConfig::default()).unwrap();
    let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
    let sent: Vec<String> = (0..300).map(|i| format!("p{i}")).collect();
    let mut bytes = Vec::new();
    for p in &sent {
        bytes.extend(frame(format!("PUT t {p}").as_bytes()));
    }
    s.write_all(&bytes).await.unwrap();
    for i in 0..sent.len() {
        assert_eq!(read_resp(&mut s).await.unwrap(), format!("OK #{i}"));
    }
    assert_eq!(*handler.stored.lock_or_recover(), sent);
    let appends = handler.appends.lock_or_recover().clone();
    assert_eq!(appends.iter().sum::<usize>(), sent.len());
    assert!(
        appends.len() < 10,
        "PUTs queued behind the first were batched: {appends:?}"
    );
    assert!(
        appends.iter().all(|&n| n <= MAX_BATCH_ENTRIES),
        "{appends:?}"
    );
}

#[tokio::test]
async fn given_a_handler_without_batching_should_run_queued_puts_one_by_one_in_order() {
    let (l, echo) = serve(ListenerConfig::default()).await;
    let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
    let mut bytes = Vec::new();
    for i in 0..20 {
        bytes.extend(frame(
            format!("PUT t {} #{i}", if i == 0 { 50 } else { 0 }).as_bytes(),
        ));
    }
    bytes.extend(frame(b"PING"));
    s.write_all(&bytes).await.unwrap();
    for i in 0..20 {
        let ms = if i == 0 { 50 } else { 0 };
        assert_eq!(read_resp(&mut s).await.unwrap(), format!("OK {ms} #{i}"));
    }
    assert_eq!(read_resp(&mut s).await.unwrap(), "OK PONG");
    assert_eq!(echo.active.load(Ordering::SeqCst), 0);
    let finished = echo.finished.lock_or_recover().clone();
    let expected: Vec<String> = (0..20)
        .map(|i| format!("{} #{i}", if i == 0 { 50 } else { 0 }))
        .collect();
    assert_eq!(finished, expected);
}

/// Panics on the PUT whose payload is `boom`, stores the others.
struct Boom;

#[async_trait]
impl ClientHandler for Boom {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Put { payload, .. } if &payload[..] == b"boom" => {
                panic!("the handler failed on purpose")
            }
            Request::Put { payload, .. } => Response::Entry(payload),
            _ => Response::Err("not in this test".into()),
        }
    }
}

#[tokio::test]
async fn given_a_handler_that_panics_on_one_put_should_answer_it_and_keep_serving_the_topic() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l = ClientListener::start(l, Arc::new(Boom), ListenerConfig::default()).unwrap();
    let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
    s.write_all(&frame(b"PUT t a")).await.unwrap();
    assert_eq!(read_resp(&mut s).await.unwrap(), "OK a");
    let mut bytes = Vec::new();
    for p in ["boom", "b", "c"] {
        bytes.extend(frame(format!("PUT t {p}").as_bytes()));
    }
    s.write_all(&bytes).await.unwrap();
    assert!(read_resp(&mut s)
        .await
        .unwrap()
        .starts_with("ERR internal error"));
    // b and c may have shared boom's batch (and its fate); either way
    // they are answered in order.
    for p in ["b", "c"] {
        let r = read_resp(&mut s).await.unwrap();
        assert!(
            r == format!("OK {p}") || r.starts_with("ERR internal error"),
            "{r}"
        );
    }
    // The lane keeps serving the topic.
    s.write_all(&frame(b"PUT t d")).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), read_resp(&mut s)).await;
    assert_eq!(d.expect("answered in time").unwrap(), "OK d");
}

#[tokio::test]
async fn given_a_bad_length_should_answer_and_close_while_others_keep_working() {
    let (l, _) = serve(ListenerConfig::default()).await;
    let mut good = TcpStream::connect(l.local_addr()).await.unwrap();
    for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
        let mut bad = TcpStream::connect(l.local_addr()).await.unwrap();
        bad.write_all(&len.to_le_bytes()).await.unwrap();
        assert_eq!(
            read_resp(&mut bad).await.unwrap(),
            "ERR invalid frame length"
        );
        assert_eq!(read_resp(&mut bad).await, None, "closed after the answer");
    }
    good.write_all(&frame(b"PING")).await.unwrap();
    assert_eq!(read_resp(&mut good).await.unwrap(), "OK PONG");
}

#[tokio::test]
async fn given_invalid_utf8_should_answer_and_keep_the_connection() {
    let (l, _) = serve(ListenerConfig::default()).await;
    let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
    s.write_all(&frame(b"PUT logs \xff\xfe")).await.unwrap();
    assert_eq!(read_resp(&mut s).await.unwrap(), "ERR invalid utf-8");
    s.write_all(&frame(b"ping")).await.unwrap();
    assert_eq!(read_resp(&mut s).await.unwrap(), "OK PONG");
}

#[tokio::test]
async fn given_a_max_size_frame_should_accept_it() {
    let (l, _) = serve(ListenerConfig::default()).await;
    let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
    let mut body = b"PUT t 0 ".to_vec();
    body.resize(MAX_FRAME, b'x');
    s.write_all(&frame(&body)).await.unwrap();
    let resp = read_resp(&mut s).await.unwrap();
    assert_eq!(resp.len(), 3 + MAX_FRAME - 6);
}

#[tokio::test]
async fn given_a_partial_frame_then_silence_should_close_after_the_idle_timeout() {
    let config = ListenerConfig {
        idle_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let (l, _) = serve(config).await;
    let mut idle = TcpStream::connect(l.local_addr()).await.unwrap();
    idle.write_all(&frame(b"PING")).await.unwrap();
    assert_eq!(read_resp(&mut idle).await.unwrap(), "OK PONG");
    let mut partial = TcpStream::connect(l.local_addr()).await.unwrap();
    partial.write_all(&[10, 0, 0, 0, b'P']).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), read_resp(&mut partial)).await;
    assert_eq!(closed.unwrap(), None);
    // A connection idle between frames is kept.
    tokio::time::sleep(Duration::from_millis(300)).await;
    idle.write_all(&frame(b"PING")).await.unwrap();
    assert_eq!(read_resp(&mut idle).await.unwrap(), "OK PONG");
}

#[tokio::test]
async fn given_the_connection_cap_should_refuse_extra_connections_with_an_error() {
    let config = ListenerConfig {
        max_connections: 2,
        ..Default::default()
    };
    let (l, _) = serve(config).await;
    let mut a = TcpStream::connect(l.local_addr()).await.unwrap();
    let mut b = TcpStream::connect(l.local_addr()).await.unwrap();
    a.write_all(&frame(b"PING")).await.unwrap();
    b.write_all(&frame(b"PING")).await.unwrap();
    read_resp(&mut a).await.unwrap();
    read_resp(&mut b).await.unwrap();
    let mut c = TcpStream::connect(l.local_addr()).await.unwrap();
    assert!(read_resp(&mut c)
        .await
        .unwrap()
        .starts_with("ERR too many connections"));
    drop(a);
    // The freed slot is usable again.
    let mut ok = false;
    for _ in 0..50 {
        let mut d = TcpStream::connect(l.local_addr()).await.unwrap();
        d.write_all(&frame(b"PING")).await.unwrap();
        if read_resp(&mut d).await.as_deref() == Some("OK PONG") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
}

#[tokio::test]
async fn given_a_client_that_never_reads_should_keep_serving_others() {
    let (l, _) = serve(ListenerConfig::default()).await;
    let stuck = TcpStream::connect(l.local_addr()).await.unwrap();
    let (_stuck_r, mut stuck_w) = stuck.into_split();
    // Large answers it never reads: fills the socket buffers.
    let mut body = b"PUT t 0 ".to_vec();
    body.resize(60_000, b'y');
    let flood = frame(&body);
    let flooder = tokio::spawn(async move {
        for _ in 0..2000 {
            if stuck_w.write_all(&flood).await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = TcpStream::connect(l.local_addr()).await.unwrap();
    other.write_all(&frame(b"PING")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), read_resp(&mut other)).await;
    assert_eq!(r.unwrap().unwrap(), "OK PONG");
    flooder.abort();
}

/// A connection from `ip` (a loopback address other than 127.0.0.1 is
/// a second client address on Linux).
async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn given_one_address_at_its_connection_cap_should_refuse_it_and_serve_another_address() {
    let config = ListenerConfig {
        max_connections_per_ip: 3,
        max_connections: 4,
        ..Default::default()
    };
    let (l, _) = serve(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", l.local_addr()).await;
        s.write_all(&frame(b"PING")).await.unwrap();
        assert_eq!(read_resp(&mut s).await.unwrap(), "OK PONG");
        held.push(s);
    }
    let mut over = connect_from("127.0.0.1", l.local_addr()).await;
    let refused = tokio::time::timeout(Duration::from_secs(5), read_resp(&mut over))
        .await
        .expect("the connection over the cap is answered at once")
        .unwrap();
    assert!(
        refused.starts_with("ERR too many connections from 127.0.0.1"),
        "{refused}"
    );
    assert_eq!(read_resp(&mut over).await, None, "closed after the answer");
    let mut other = connect_from("127.0.0.2", l.local_addr()).await;
    other.write_all(&frame(b"PING")).await.unwrap();
    assert_eq!(read_resp(&mut other).await.unwrap(), "OK PONG");
    // A slot freed by the first address is its own again.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..50 {
        let mut again = connect_from("127.0.0.1", l.local_addr()).await;
        again.write_all(&frame(b"PING")).await.unwrap();
        if read_resp(&mut again).await.as_deref() == Some("OK PONG") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the freed slot was never usable again");
}

#[tokio::test]
async fn given_a_connection_silent_between_frames_should_close_it_unless_a_request_is_in_flight() {
    let config = ListenerConfig {
        idle_connection_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let (l, _) = serve(config).await;
    let mut silent = TcpStream::connect(l.local_addr()).await.unwrap();
    silent.write_all(&frame(b"PING")).await.unwrap();
    assert_eq!(read_resp(&mut silent).await.unwrap(), "OK PONG");
    let mut waiting = TcpStream::connect(l.local_addr()).await.unwrap();
    waiting.write_all(&frame(b"PUT t 600 slow")).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), read_resp(&mut silent)).await;
    assert_eq!(closed.expect("closed in time"), None);
    // Silent for 3 timeouts, but its PUT was running: kept, answered.
    assert_eq!(read_resp(&mut waiting).await.unwrap(), "OK 600 slow");
}

/// A leader that never answers: holds every PUT it is given, and counts
/// the payload bytes it holds.
#[derive(Default)]
struct Stuck {
    held: AtomicUsize,
    peak: AtomicUsize,
}

#[async_trait]
impl ClientHandler for Stuck {
    async fn handle(&self, req: Request) -> Response {
        if let Request::Put { payload, .. } = req {
            let now = self.held.fetch_add(payload.len(), Ordering::SeqCst) + payload.len();
            self.peak.fetch_max(now, Ordering::SeqCst);
            futures::future::pending::<()>().await;
        }
        Response::Pong
    }
}

#[tokio::test]
async fn given_a_flood_of_large_puts_to_a_leader_that_never_answers_should_hold_at_most_the_budget()
{
    const BUDGET: usize = 4 << 20;
    let handler = Arc::new(Stuck::default());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ListenerConfig {
        max_bytes_in_flight: BUDGET,
        ..Default::default()
    };
    let l = ClientListener::start(l, handler.clone(), config).unwrap();
    // Each PUT on a topic of its own, so each goes to the handler at
    // once; 8 connections x 1,024 in flight x 60 KB would be 480 MB.
    let mut flooders = Vec::new();
    for c in 0..8 {
        let mut s = TcpStream::connect(l.local_addr()).await.unwrap();
        flooders.push(tokio::spawn(async move {
            for i in 0..1024 {
                let mut body = format!("PUT t{c}-{i} ").into_bytes();
                body.resize(60_000, b'x');
                if s.write_all(&frame(&body)).await.is_err() {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = handler.peak.load(Ordering::SeqCst);
    assert!(
        held <= BUDGET,
        "the handler was given {held} bytes, over the {BUDGET}-byte budget"
    );
    assert!(held >= BUDGET / 2, "the flood reached the handler: {held}");
    assert!(l.bytes_in_flight() <= BUDGET, "{}", l.bytes_in_flight());
    // Other clients still get their (small) requests through once
    // budget frees; here nothing frees it, so only the count is checked.
    for f in flooders {
        f.abort();
    }
}

#[tokio::test]
async fn given_shutdown_should_finish_in_flight_requests_and_stop_accepting() {
    let (l, _) = serve(ListenerConfig::default()).await;
    let addr = l.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&frame(b"PUT t 300 last words")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn(l.shutdown());
    assert_eq!(read_resp(&mut s).await.unwrap(), "OK 300 last words");
    assert!(stopping.await.unwrap(), "drained in time");
    assert!(TcpStream::connect(addr).await.is_err());
}
