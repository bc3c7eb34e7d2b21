//! Client authentication (`--auth-token-file`) at the listener: every
//! command with no token, a wrong token, a read-only token and a
//! prefix-limited token, against a handler that records what reached it
//! (a refused request must do nothing); and walrus-client's `with_auth`.

use std::sync::Arc;
use std::time::Duration;

use walrus_client::{Client, ClientError};
use walrus_core::locks::MutexExt;
use walrus_core::protocol::{Request, Response};
use walrus_server::listener::auth::Tokens;
use walrus_server::listener::{ClientHandler, ClientListener, ListenerConfig};

const ADMIN: &str = "admin-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const TENANT: &str = "tenant-a-token-0123456789abcdef";
const TENANT_READER: &str = "tenant-a-reader-0123456789abcdef";

fn tokens() -> Arc<Tokens> {
    Arc::new(
        Tokens::parse(&format!(
            "# the test's tokens\n{ADMIN} write\n{READER} read\n{TENANT} write a.\n\
             {TENANT_READER} read a.\n"
        ))
        .expect("a valid token file"),
    )
}

/// Answers everything OK (TOPICS with two topics) and records each
/// request it was given.
#[derive(Default)]
struct Recorder {
    seen: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ClientHandler for Recorder {
    async fn handle(&self, req: Request) -> Response {
        self.seen.lock_or_recover().push(format!("{req:?}"));
        match req {
            Request::Ping => Response::Pong,
            Request::Topics => Response::Json(r#"["a.x","b.y"]"#.into()),
            Request::TopicCounts => Response::Json(
                r#"[{"topic":"a.x","first":0,"end":1},{"topic":"b.y","first":0,"end":2}]"#.into(),
            ),
            _ => Response::Ok,
        }
    }
}

impl Recorder {
    fn count(&self) -> usize {
        self.seen.lock_or_recover().len()
    }
}

async fn serve(auth: Option<Arc<Tokens>>) -> (ClientListener, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ListenerConfig {
        auth,
        ..ListenerConfig::default()
    };
    let listener = ClientListener::start(l, recorder.clone(), config).unwrap();
    (listener, recorder)
}

const STORAGE: &str = "0123456789abcdef0123456789abcdef";

/// Every command that writes (GET moves the shared cursor), on topic `t`.
fn writes(t: &str) -> Vec<String> {
    vec![
        format!("REGISTER {t}"),
        format!("REGISTER {t} RETAIN entries=5"),
        format!("PUT {t} hello"),
        format!("PUTB {t} 1\n5\nhello\n"),
        format!("GET {t}"),
        format!("CONFIG {t} RETAIN none"),
    ]
}

/// Every command that only reads a topic, on topic `t`.
fn topic_reads(t: &str) -> Vec<String> {
    vec![
        format!("STATE {t}"),
        format!("OFFSETS {t}"),
        format!("READ {t} 0"),
        format!("FETCH g {t}"),
        format!("COMMIT g {t} 0"),
        format!("SEEK g {t} 0"),
        format!("CONFIG {t}"),
    ]
}

/// Commands that name no topic.
fn global_reads() -> Vec<String> {
    ["TOPICS", "TOPICS COUNTS", "METRICS", "PING"]
        .map(String::from)
        .to_vec()
}

fn every_command() -> Vec<String> {
    let mut all = writes("a.x");
    all.extend(topic_reads("a.x"));
    all.extend(global_reads());
    all.push(format!("REPLACE-STORAGE 2 {STORAGE}"));
    all.push("REMOVE-NODE 2".into());
    all.push("NOSUCHVERB x".into());
    all
}

async fn answers(client: &Client, requests: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for r in requests {
        out.push(client.send_raw(r).await.expect("an answer"));
    }
    out
}

/// Asserts that no answer to `requests` is an `ERR`.
async fn assert_all_run(client: &Client, requests: &[String]) {
    for (req, answer) in requests.iter().zip(answers(client, requests).await) {
        assert!(!answer.starts_with("ERR"), "{req:?}: {answer}");
    }
}

async fn assert_answers_start_with(client: &Client, requests: &[String], prefix: &str) {
    for (req, answer) in requests.iter().zip(answers(client, requests).await) {
        assert!(answer.starts_with(prefix), "{req:?}: {answer}");
    }
}

#[tokio::test]
async fn given_auth_when_no_token_is_sent_should_refuse_every_command_and_do_nothing() {
    let (l, rec) = serve(Some(tokens())).await;
    let c = Client::new(l.local_addr().to_string());
    assert_answers_start_with(&c, &every_command(), "ERR authentication required").await;
    assert_eq!(rec.count(), 0, "nothing reached the handler");
}

#[tokio::test]
async fn given_auth_when_a_wrong_token_is_sent_should_fail_it_and_refuse_every_command() {
    let (l, rec) = serve(Some(tokens())).await;
    let c = Client::new(l.local_addr().to_string());
    for wrong in [
        "AUTH not-a-token-0123456789",
        "AUTH",
        &format!("AUTH {ADMIN}x"),
    ] {
        let answer = c.send_raw(wrong).await.unwrap();
        assert!(
            answer.starts_with("ERR authentication failed"),
            "{wrong:?}: {answer}"
        );
        assert!(!answer.contains(ADMIN), "{answer}");
    }
    assert_answers_start_with(&c, &every_command(), "ERR authentication required").await;
    // A failed AUTH after a good one takes the rights away again.
    assert_eq!(c.send_raw(&format!("AUTH {ADMIN}")).await.unwrap(), "OK");
    assert_eq!(c.send_raw("PING").await.unwrap(), "OK PONG");
    let failed = c.send_raw("AUTH wrong-wrong-wrong-wrong").await.unwrap();
    assert!(failed.starts_with("ERR authentication failed"), "{failed}");
    let after = c.send_raw("PUT a.x hello").await.unwrap();
    assert!(after.starts_with("ERR authentication required"), "{after}");
    assert_eq!(rec.count(), 1, "only the PING ran: {:?}", rec.seen);
}

#[tokio::test]
async fn given_a_write_token_should_run_every_command() {
    let (l, rec) = serve(Some(tokens())).await;
    let c = Client::new(l.local_addr().to_string()).with_auth(ADMIN);
    let all = every_command();
    let got = answers(&c, &all).await;
    for (req, answer) in all.iter().zip(&got) {
        if req.starts_with("NOSUCHVERB") {
            assert_eq!(answer, "ERR unknown command NOSUCHVERB", "{req:?}");
        } else {
            assert!(!answer.starts_with("ERR"), "{req:?}: {answer}");
        }
    }
    assert_eq!(rec.count(), all.len() - 1, "all but the unknown verb ran");
    assert_eq!(
        c.send_raw("TOPICS").await.unwrap(),
        r#"["a.x","b.y"]"#,
        "an unlimited token sees every topic"
    );
}

#[tokio::test]
async fn given_a_read_only_token_should_refuse_every_write_and_run_every_read() {
    let (l, rec) = serve(Some(tokens())).await;
    let c = Client::new(l.local_addr().to_string()).with_auth(READER);
    let mut refused = writes("a.x");
    refused.push(format!("REPLACE-STORAGE 2 {STORAGE}"));
    refused.push("REMOVE-NODE 2".into());
    assert_answers_start_with(
        &c,
        &refused,
        "ERR permission denied: this token is read-only",
    )
    .await;
    assert_eq!(rec.count(), 0, "no write reached the handler");
    let mut allowed = topic_reads("a.x");
    allowed.extend(global_reads());
    assert_all_run(&c, &allowed).await;
    assert_eq!(rec.count(), allowed.len());
}

#[tokio::test]
async fn given_a_prefix_limited_token_should_refuse_other_topics_and_filter_topics() {
    let (l, rec) = serve(Some(tokens())).await;
    let c = Client::new(l.local_addr().to_string()).with_auth(TENANT);
    let mut outside = writes("b.y");
    outside.extend(topic_reads("b.y"));
    assert_answers_start_with(
        &c,
        &outside,
        "ERR permission denied: this token is limited to topics starting with \"a.\"",
    )
    .await;
    let admin_only = c
        .send_raw(&format!("REPLACE-STORAGE 2 {STORAGE}"))
        .await
        .unwrap();
    assert!(
        admin_only.starts_with("ERR permission denied") && admin_only.contains("operator"),
        "{admin_only}"
    );
    let remove = c.send_raw("REMOVE-NODE 2").await.unwrap();
    assert!(
        remove.starts_with("ERR permission denied") && remove.contains("REMOVE-NODE needs"),
        "{remove}"
    );
    assert_eq!(rec.count(), 0, "nothing outside the prefix ran");

    let mut inside = writes("a.x");
    inside.extend(topic_reads("a.x"));
    inside.extend(["METRICS".to_string(), "PING".to_string()]);
    assert_all_run(&c, &inside).await;
    assert_eq!(rec.count(), inside.len());
    assert_eq!(c.send_raw("TOPICS").await.unwrap(), r#"["a.x"]"#);
    let counts = c.send_raw("TOPICS COUNTS").await.unwrap();
    assert!(
        counts.contains("a.x") && !counts.contains("b.y"),
        "{counts}"
    );

    // Read-only and limited: both limits hold.
    let r = Client::new(l.local_addr().to_string()).with_auth(TENANT_READER);
    let put = r.send_raw("PUT a.x hello").await.unwrap();
    assert!(put.starts_with("ERR permission denied"), "{put}");
    let other = r.send_raw("READ b.y 0").await.unwrap();
    assert!(other.starts_with("ERR permission denied"), "{other}");
    assert!(!r.send_raw("READ a.x 0").await.unwrap().starts_with("ERR"));
}

#[tokio::test]
async fn given_no_auth_configured_should_answer_auth_ok_and_serve_as_before() {
    let (l, rec) = serve(None).await;
    let plain = Client::new(l.local_addr().to_string());
    assert_eq!(plain.send_raw("PUT a.x hello").await.unwrap(), "OK");
    let with = Client::new(l.local_addr().to_string()).with_auth(ADMIN);
    assert_eq!(with.send_raw("PUT a.x hello").await.unwrap(), "OK");
    assert_eq!(plain.send_raw("AUTH anything").await.unwrap(), "OK");
    assert_eq!(rec.count(), 2, "AUTH itself never reaches the handler");
}

#[tokio::test]
async fn given_a_pipelined_auth_and_requests_should_run_them_in_order() {
    let (l, rec) = serve(Some(tokens())).await;
    let c = Client::new(l.local_addr().to_string());
    let pipeline = [
        "PUT a.x before".to_string(),
        format!("AUTH {READER}"),
        "PUT a.x read-only".to_string(),
        format!("AUTH {ADMIN}"),
        "PUT a.x now".to_string(),
    ];
    let got = c.send_many(&pipeline, 8).await;
    let got: Vec<String> = got.into_iter().map(Result::unwrap).collect();
    assert!(got[0].starts_with("ERR authentication required"), "{got:?}");
    assert_eq!(got[1], "OK");
    assert!(got[2].starts_with("ERR permission denied"), "{got:?}");
    assert_eq!(got[3..], ["OK", "OK"]);
    assert_eq!(rec.count(), 1);
}

#[tokio::test]
async fn given_a_client_with_auth_when_the_server_closes_its_connection_should_authenticate_again()
{
    let recorder = Arc::new(Recorder::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ListenerConfig {
        auth: Some(tokens()),
        idle_connection_timeout: Duration::from_millis(100),
        ..ListenerConfig::default()
    };
    let l = ClientListener::start(l, recorder.clone(), config).unwrap();
    let c = Client::new(l.local_addr().to_string()).with_auth(ADMIN);
    c.ping().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // the server closes it
    c.ping()
        .await
        .expect("a new connection, authenticated again");
    assert_eq!(recorder.count(), 2);
}

#[tokio::test]
async fn given_a_client_with_a_wrong_token_should_fail_with_the_servers_reason() {
    let (l, rec) = serve(Some(tokens())).await;
    let c = Client::new(l.local_addr().to_string()).with_auth("wrong-wrong-wrong-wrong");
    match c.put("a.x", "hello").await {
        Err(e @ ClientError::Server(_)) => {
            assert!(e.to_string().starts_with("authentication failed"), "{e}");
            assert!(!e.is_retryable() && !e.is_outcome_unknown(), "{e:?}");
        }
        other => panic!("expected the server's refusal, got {other:?}"),
    }
    assert_eq!(rec.count(), 0);
}

#[test]
fn given_the_blocking_client_with_auth_should_authenticate() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (l, rec) = rt.block_on(serve(Some(tokens())));
    let addr = l.local_addr().to_string();
    let c = walrus_client::blocking::Client::new(addr.clone())
        .unwrap()
        .with_auth(ADMIN);
    c.ping().expect("authenticated");
    let plain = walrus_client::blocking::Client::new(addr).unwrap();
    let refused = plain.ping().unwrap_err().to_string();
    assert!(refused.contains("authentication required"), "{refused}");
    assert_eq!(rec.count(), 1);
    drop((c, plain));
    rt.block_on(l.shutdown());
}
