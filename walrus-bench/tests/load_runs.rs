//! The load generator against in-process servers: walrus-echo, a scripted
//! server that answers what a test tells it, and a tiny in-memory log that
//! speaks REGISTER/PUT/GET (so `--verify` can be checked end to end,
//! including against a server that loses or duplicates writes), and a
//! log with offsets for the consumer workloads, correct or broken in the
//! ways their checks must catch.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use walrus_bench::conn::Workload;
use walrus_bench::consume::{run as consume, ConsumeConfig, Mode};
use walrus_bench::run::{run, Length, RunConfig};
use walrus_bench::wire::take_frame;
use walrus_core::locks::MutexExt;
use walrus_core::protocol::encode_frame;

async fn start_echo() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(walrus_bench::echo::serve(listener));
    addr
}

/// A server whose every answer comes from `answer(request body)`, which may
/// also sleep (to play a stalled server).
async fn start_scripted<F>(answer: F) -> String
where
    F: Fn(&[u8]) -> (Vec<u8>, Option<Duration>) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let mut out = BytesMut::new();
                    while let Some(body) = take_frame(&mut buf).unwrap() {
                        let (reply, pause) = answer(&body);
                        if let Some(p) = pause {
                            tokio::time::sleep(p).await;
                        }
                        encode_frame(&mut out, &reply);
                    }
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// How the in-memory log misbehaves, if at all.
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Every `n`-th PUT is answered OK but not stored.
    DropEvery(u64),
    /// The first entry read is served twice.
    DuplicateFirstRead,
}

/// REGISTER / PUT / GET with one shared cursor per topic, like Walrus.
async fn start_mem_log(fault: Fault) -> String {
    let topics: Arc<Mutex<HashMap<String, VecDeque<Vec<u8>>>>> = Arc::default();
    let puts = Arc::new(AtomicU64::new(0));
    let duplicated = Arc::new(AtomicU64::new(0));
    start_scripted(move |body| {
        let text = std::str::from_utf8(body).unwrap();
        let mut words = text.splitn(3, ' ');
        let verb = words.next().unwrap();
        let topic = words.next().unwrap_or("").to_string();
        let mut topics = topics.lock_or_recover();
        let reply: Vec<u8> = match verb {
            "REGISTER" => {
                topics.entry(topic).or_default();
                b"OK".to_vec()
            }
            "PUT" => match topics.get_mut(&topic) {
                None => b"ERR topic not found".to_vec(),
                Some(q) => {
                    let n = puts.fetch_add(1, Ordering::Relaxed) + 1;
                    let drop = matches!(fault, Fault::DropEvery(k) if n.is_multiple_of(k));
                    if !drop {
                        q.push_back(words.next().unwrap().as_bytes().to_vec());
                    }
                    b"OK".to_vec()
                }
            },
            "GET" => match topics.get_mut(&topic) {
                None => b"ERR topic not found".to_vec(),
                Some(q) => match q.pop_front() {
                    None => b"EMPTY".to_vec(),
                    Some(p) => {
                        if matches!(fault, Fault::DuplicateFirstRead)
                            && duplicated.fetch_add(1, Ordering::Relaxed) == 0
                        {
                            q.push_front(p.clone());
                        }
                        [b"OK ".as_slice(), &p].concat()
                    }
                },
            },
            _ => format!("ERR unknown command {verb}").into_bytes(),
        };
        (reply, None)
    })
    .await
}

#[tokio::test]
async fn given_a_batch_when_putting_should_send_putbs_of_that_many_entries() {
    let entries = Arc::new(AtomicU64::new(0));
    let seen = entries.clone();
    let addr = start_scripted(move |body| {
        let text = std::str::from_utf8(body).unwrap();
        let (header, mut rest) = text.split_once('\n').unwrap();
        assert_eq!(header, "PUTB bench-0 10");
        for _ in 0..10 {
            let (len, after) = rest.split_once('\n').unwrap();
            let len: usize = len.parse().unwrap();
            assert_eq!(&after[len..len + 1], "\n");
            rest = &after[len + 1..];
        }
        assert!(rest.is_empty());
        let first = seen.fetch_add(10, Ordering::Relaxed);
        (format!("OK 10 {first}").into_bytes(), None)
    })
    .await;
    let mut cfg = count_run(&addr, 20);
    cfg.batch = 10;
    cfg.payload_size = 100;
    let r = run(cfg).await.unwrap();
    assert_eq!(r.ops, 20);
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert_eq!(entries.load(Ordering::Relaxed), 200);
    let mut too_big = count_run(&addr, 1);
    too_big.batch = 100;
    assert!(run(too_big).await.is_err(), "100 × 1 KiB is over a frame");
}

fn count_run(addr: &str, requests: u64) -> RunConfig {
    let mut cfg = RunConfig::new(addr);
    cfg.length = Length::Requests(requests);
    cfg
}

#[tokio::test]
async fn given_echo_when_putting_a_count_pipelined_should_get_every_answer() {
    let addr = start_echo().await;
    let mut cfg = count_run(&addr, 1000);
    cfg.connections = 4;
    cfg.depth = 8;
    cfg.payload_size = 100;
    let r = run(cfg).await.unwrap();
    assert_eq!(r.ops, 1000);
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert!(r.latency_ms.max > 0.0);
    assert!(r.mib_per_sec > 0.0);
}

#[tokio::test]
async fn given_echo_when_running_for_a_duration_without_nodelay_should_stop_on_time() {
    let addr = start_echo().await;
    let mut cfg = RunConfig::new(&addr);
    cfg.length = Length::Duration(Duration::from_millis(300));
    cfg.nodelay = false;
    cfg.connections = 2;
    let r = run(cfg).await.unwrap();
    assert!(r.ops > 0);
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert!(!r.shape.nodelay);
    assert!(r.elapsed_s < 5.0, "ran {} s", r.elapsed_s);
}

#[tokio::test]
async fn given_error_answers_when_running_should_count_them_by_text() {
    let n = Arc::new(AtomicU64::new(0));
    let addr = start_scripted(move |_| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let reply = if i % 2 == 1 {
            b"ERR write lease expired".to_vec()
        } else {
            b"OK".to_vec()
        };
        (reply, None)
    })
    .await;
    let r = run(count_run(&addr, 100)).await.unwrap();
    assert_eq!(r.ops, 50);
    assert_eq!(r.errors_total, 50);
    assert_eq!(r.errors["write lease expired"], 50);
    assert!(!r.is_clean());
}

#[tokio::test]
async fn given_an_answer_that_does_not_fit_the_request_when_running_should_count_it() {
    // The echo answers OK to a GET, which a GET never gets.
    let addr = start_echo().await;
    let mut cfg = count_run(&addr, 10);
    cfg.workload = Workload::Get;
    let r = run(cfg).await.unwrap();
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors["unexpected answer to GET: OK"], 10);
}

#[tokio::test]
async fn given_no_server_when_running_should_report_the_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let r = run(count_run(&addr, 10)).await.unwrap();
    assert_eq!(r.ops, 0);
    assert!(
        r.errors.keys().any(|k| k.starts_with("cannot connect")),
        "{:?}",
        r.errors
    );
}

#[tokio::test]
async fn given_a_topic_that_cannot_be_registered_when_running_should_fail_with_the_reason() {
    let addr = start_scripted(|_| (b"ERR unavailable: no quorum, retry".to_vec(), None)).await;
    let mut cfg = count_run(&addr, 10);
    cfg.register = true;
    let err = run(cfg).await.unwrap_err().to_string();
    assert!(err.contains("no quorum"), "{err}");
}

#[tokio::test]
async fn given_a_correct_log_when_verifying_a_pipelined_run_should_find_every_write() {
    let addr = start_mem_log(Fault::None).await;
    let mut cfg = count_run(&addr, 2000);
    cfg.connections = 4;
    cfg.depth = 16;
    cfg.topics = 3;
    cfg.payload_size = 100;
    cfg.register = true;
    cfg.verify = true;
    let r = run(cfg).await.unwrap();
    let v = r.verify.clone().unwrap();
    assert!(v.ok, "{}", r.to_text());
    assert_eq!((v.acked, v.read, v.missing), (2000, 2000, 0));
    assert!(r.is_clean());
}

#[tokio::test]
async fn given_a_log_that_loses_acknowledged_writes_when_verifying_should_report_them_missing() {
    let addr = start_mem_log(Fault::DropEvery(100)).await;
    let mut cfg = count_run(&addr, 1000);
    cfg.connections = 2;
    cfg.depth = 4;
    cfg.payload_size = 64;
    cfg.register = true;
    cfg.verify = true;
    let r = run(cfg).await.unwrap();
    let v = r.verify.unwrap();
    assert!(!v.ok);
    assert_eq!(v.missing, 10);
    assert_eq!(v.missing_examples.len(), 5);
}

#[tokio::test]
async fn given_a_log_that_serves_an_entry_twice_when_verifying_should_report_a_duplicate() {
    let addr = start_mem_log(Fault::DuplicateFirstRead).await;
    let mut cfg = count_run(&addr, 50);
    cfg.payload_size = 64;
    cfg.register = true;
    cfg.verify = true;
    let r = run(cfg).await.unwrap();
    let v = r.verify.unwrap();
    assert_eq!((v.duplicated, v.missing), (1, 0));
    assert!(!v.ok);
}

#[tokio::test]
async fn given_a_mixed_run_when_verifying_should_count_reads_during_and_after_the_run() {
    let addr = start_mem_log(Fault::None).await;
    let mut cfg = count_run(&addr, 1000);
    cfg.workload = Workload::Mixed { get_percent: 30 };
    cfg.connections = 2;
    cfg.depth = 4;
    cfg.payload_size = 64;
    cfg.register = true;
    cfg.verify = true;
    let r = run(cfg).await.unwrap();
    let v = r.verify.clone().unwrap();
    assert!(v.ok, "{}", r.to_text());
    assert!(v.acked > 500 && v.acked < 900, "acked {}", v.acked);
    assert_eq!(v.read, v.acked);
}

#[tokio::test]
async fn given_a_payload_too_small_for_ids_when_verifying_should_refuse_before_sending() {
    let addr = start_echo().await;
    let mut cfg = count_run(&addr, 10);
    cfg.payload_size = 8;
    cfg.verify = true;
    let err = run(cfg).await.unwrap_err().to_string();
    assert!(err.contains("--size"), "{err}");
}

#[tokio::test]
async fn given_a_count_and_a_server_that_never_answers_when_bounded_in_time_should_stop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Accepts and reads, never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let mut cfg = RunConfig::new(&addr);
    cfg.length = Length::RequestsWithin(1_000_000, Duration::from_millis(200));
    cfg.drain_timeout = Duration::from_millis(200);
    cfg.depth = 4;
    let r = run(cfg).await.unwrap();
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors.values().sum::<u64>(), 4, "{:?}", r.errors);
    assert!(r.errors.keys().all(|k| k.starts_with("no answer within")));
}

#[tokio::test]
async fn given_a_rate_when_running_should_send_at_that_rate() {
    let addr = start_echo().await;
    let mut cfg = RunConfig::new(&addr);
    cfg.length = Length::Duration(Duration::from_secs(1));
    cfg.rate = Some(200.0);
    cfg.connections = 2;
    let r = run(cfg).await.unwrap();
    assert!(
        (195..=201).contains(&r.ops),
        "sent {} in 1 s at 200/s",
        r.ops
    );
}

/// The server stalls 500 ms on the 10th request. A closed-loop client
/// waits politely and records one slow request; a client with a rate
/// records every request that was due during the stall as late (no
/// coordinated omission). Counts, not timings, are compared.
#[tokio::test]
async fn given_a_stalled_server_when_running_at_a_rate_should_record_every_delayed_request() {
    async fn slow_count(rate: Option<f64>) -> u64 {
        let n = Arc::new(AtomicU64::new(0));
        let addr = start_scripted(move |_| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let pause = (i == 10).then_some(Duration::from_millis(500));
            (b"OK".to_vec(), pause)
        })
        .await;
        let mut cfg = RunConfig::new(&addr);
        cfg.length = Length::Duration(Duration::from_millis(1500));
        cfg.rate = rate;
        let r = run(cfg).await.unwrap();
        assert_eq!(r.errors_total, 0, "{:?}", r.errors);
        // Above 100 ms: clearly held up by the stall.
        r.count_slower_than_ms(100.0)
    }
    let closed = slow_count(None).await;
    let open = slow_count(Some(200.0)).await;
    assert!(closed <= 2, "closed loop saw {closed} slow requests");
    assert!(open >= 20, "rate-driven run saw only {open} slow requests");
}

// --- the consumer workloads (read, fetch, tail-latency) ---------------------

/// How the in-memory log with offsets misbehaves, if at all.
#[derive(Clone, Copy, PartialEq)]
enum ReadFault {
    None,
    /// A READ or FETCH that reaches this offset leaves its entry out (the
    /// offsets stay consecutive: the next entry is served in its place).
    SkipEntryAt(u64),
    /// COMMIT answers OK and stores nothing.
    IgnoreCommit,
    /// Every `n`-th PUT is answered OK and not stored.
    DropPutEvery(u64),
}

/// REGISTER / PUT / PUTB / OFFSETS / READ / FETCH / COMMIT on one in-memory
/// log per topic, with walrus-core's own parser and encoder. A READ with
/// WAIT at the end answers empty after a short pause (no real long-poll).
async fn start_offset_log(fault: ReadFault) -> String {
    use walrus_core::protocol::{Request, Response};
    type Logs = HashMap<String, Vec<bytes::Bytes>>;
    let logs: Arc<Mutex<Logs>> = Arc::default();
    let groups: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let puts = Arc::new(AtomicU64::new(0));
    start_scripted(move |body| {
        let mut logs = logs.lock_or_recover();
        let read = |logs: &Logs, topic: &str, from: u64, max: u32, wait_ms: u64| {
            let log = &logs[topic];
            let mut entries = Vec::new();
            let mut at = from as usize;
            while at < log.len() && entries.len() < max as usize {
                let skip = matches!(fault, ReadFault::SkipEntryAt(s) if s == at as u64);
                let src = if skip { at + 1 } else { at };
                if src >= log.len() {
                    break;
                }
                entries.push((at as u64, log[src].clone()));
                at += 1;
            }
            let pause = (entries.is_empty() && wait_ms > 0).then_some(Duration::from_millis(5));
            let next = from + entries.len() as u64;
            (Response::Entries { entries, next }, pause)
        };
        let (resp, pause) = match Request::parse(bytes::Bytes::copy_from_slice(body)) {
            Err(e) => (Response::Err(e.to_string()), None),
            Ok(Request::Register(t)) => {
                logs.entry(t.as_str().to_string()).or_default();
                (Response::Ok, None)
            }
            Ok(Request::Put { topic, payload }) => {
                let n = puts.fetch_add(1, Ordering::Relaxed) + 1;
                if !matches!(fault, ReadFault::DropPutEvery(k) if n.is_multiple_of(k)) {
                    logs.get_mut(topic.as_str()).unwrap().push(payload);
                }
                (Response::Ok, None)
            }
            Ok(Request::PutBatch { topic, entries, .. }) => {
                let log = logs.get_mut(topic.as_str()).unwrap();
                let first = log.len() as u64;
                let n = entries.len() as u64;
                log.extend(entries);
                (
                    Response::Stored {
                        n,
                        first: Some(first),
                    },
                    None,
                )
            }
            Ok(Request::Offsets(t)) => (
                Response::Json(format!(
                    "{{\"first\":0,\"end\":{}}}",
                    logs[t.as_str()].len()
                )),
                None,
            ),
            Ok(Request::Read {
                topic,
                offset,
                max_entries,
                wait_ms,
                ..
            }) => read(&logs, topic.as_str(), offset, max_entries, wait_ms),
            Ok(Request::Fetch {
                group,
                topic,
                max_entries,
                wait_ms,
                ..
            }) => {
                let key = format!("{} {}", group.as_str(), topic.as_str());
                let from = groups.lock_or_recover().get(&key).copied().unwrap_or(0);
                read(&logs, topic.as_str(), from, max_entries, wait_ms)
            }
            Ok(Request::Commit {
                group,
                topic,
                offset,
                ..
            }) => {
                if fault != ReadFault::IgnoreCommit {
                    let key = format!("{} {}", group.as_str(), topic.as_str());
                    groups.lock_or_recover().insert(key, offset);
                }
                (Response::Ok, None)
            }
            Ok(other) => (Response::Err(format!("not here: {other:?}")), None),
        };
        let mut framed = BytesMut::new();
        resp.encode(&mut framed);
        (framed[4..].to_vec(), pause)
    })
    .await
}

fn consume_run(mode: Mode, addr: &str) -> ConsumeConfig {
    let mut cfg = ConsumeConfig::new(mode, addr);
    cfg.payload_size = 100;
    cfg.fill = 3000;
    cfg.duration = Duration::from_millis(200);
    cfg.timeout = Duration::from_secs(10);
    cfg.wait = Duration::from_millis(100);
    cfg
}

#[tokio::test]
async fn given_a_correct_log_when_reading_should_check_every_entry_of_every_pass() {
    let addr = start_offset_log(ReadFault::None).await;
    let mut cfg = consume_run(Mode::Read, &addr);
    cfg.read_batch = 1000;
    let r = consume(cfg).await.unwrap();
    assert!(r.is_clean(), "{}", r.to_text());
    assert!(r.check.passes >= 1 && r.ops >= 3000);
    assert_eq!(r.check.entries_checked, r.ops);
    assert_eq!(r.fill.unwrap().entries, 3000);
}

#[tokio::test]
async fn given_a_log_that_skips_an_entry_when_reading_should_fail_the_check() {
    let addr = start_offset_log(ReadFault::SkipEntryAt(1234)).await;
    let r = consume(consume_run(Mode::Read, &addr)).await.unwrap();
    assert!(!r.check.ok, "{}", r.to_text());
    assert!(
        r.check.problems[0].contains("offset 1234 holds entry 1235"),
        "{:?}",
        r.check.problems
    );
}

#[tokio::test]
async fn given_a_correct_log_when_fetching_as_a_group_should_commit_and_check_every_entry() {
    let addr = start_offset_log(ReadFault::None).await;
    let r = consume(consume_run(Mode::Fetch, &addr)).await.unwrap();
    assert!(r.is_clean(), "{}", r.to_text());
    assert_eq!(r.read_batch, 100);
    assert!(r.check.passes >= 1);
    assert!(r.requests >= 30, "3000 entries in batches of 100");
}

#[tokio::test]
async fn given_a_log_that_ignores_commits_when_fetching_should_fail_the_check() {
    let addr = start_offset_log(ReadFault::IgnoreCommit).await;
    let r = consume(consume_run(Mode::Fetch, &addr)).await.unwrap();
    assert!(!r.check.ok, "{}", r.to_text());
    assert!(
        r.check.problems[0].contains("asked for entries from offset 100, got 100 entries at 0"),
        "{:?}",
        r.check.problems
    );
}

#[tokio::test]
async fn given_a_correct_log_when_tailing_under_put_load_should_deliver_every_put_to_every_reader()
{
    for tail_fetch in [false, true] {
        let addr = start_offset_log(ReadFault::None).await;
        let mut cfg = consume_run(Mode::TailLatency, &addr);
        cfg.connections = 3;
        cfg.depth = 4;
        cfg.readers = 2;
        cfg.tail_fetch = tail_fetch;
        let r = consume(cfg).await.unwrap();
        assert!(r.is_clean(), "{}", r.to_text());
        let puts = r.puts.unwrap();
        assert!(puts > 0);
        assert_eq!(r.ops, 2 * puts, "each reader gets every PUT");
        assert!(r.latency_ms.max > 0.0);
    }
}

#[tokio::test]
async fn given_a_log_that_loses_acknowledged_puts_when_tailing_should_report_them_missing() {
    let addr = start_offset_log(ReadFault::DropPutEvery(10)).await;
    let mut cfg = consume_run(Mode::TailLatency, &addr);
    cfg.connections = 2;
    let r = consume(cfg).await.unwrap();
    assert!(!r.check.ok, "{}", r.to_text());
    assert_eq!(r.check.missing, r.puts.unwrap() / 10);
}
