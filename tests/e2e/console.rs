//! The web console (`/` on `--metrics-addr`) in a real browser: Debian's
//! chromium, headless, driven over WebDriver (chromedriver) by Python's
//! selenium, against a real 3-node cluster.
//!
//! CI installs chromium, chromium-driver and python3-selenium (.ci/run);
//! without them this test fails and says what to install, it never skips.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{free_port, serial, Cluster, ClusterOptions};

/// Opens the console, waits for three healthy nodes and the topic with one
/// entry, prints `READY <json>`; after a line on stdin (the test PUT a
/// second entry) waits for the page to show it, prints `UPDATED <json>`.
/// Any failure: a traceback on stderr and a non-zero exit.
const DRIVE: &str = r##"
import json, sys, tempfile
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, topic = sys.argv[1], sys.argv[2]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
# The machine has no network: without these chromium stalls on its own
# background traffic.
for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage",
             "--user-data-dir=" + tempfile.mkdtemp(prefix="walrus-console-")]:
    opts.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.set_page_load_timeout(30)
    driver.get(url)
    wait = WebDriverWait(driver, 30)

    # One script call reads the whole page at one moment: the page rebuilds
    # its rows every poll, so element handles kept between calls go stale.
    SNAPSHOT = """
      function text(sel, root) { var e = (root || document).querySelector(sel); return e ? e.textContent : null; }
      var topicRow = document.querySelector('#topics tbody tr[data-topic="' + arguments[0] + '"]');
      return {
        nodes: Array.prototype.map.call(document.querySelectorAll('#nodes tbody tr'), function (r) {
          return {id: r.getAttribute('data-node'), role: text('.role', r), health: text('.health', r)};
        }),
        end: topicRow ? text('.end', topicRow) : null,
        segments: topicRow ? Array.prototype.map.call(topicRow.querySelectorAll('.seg'), function (s) { return s.textContent; }) : [],
        newest: text('#tail tbody tr td.entry'),
        leader: text('#leader'),
        term: text('#term'),
        rate: text('[data-rate="requests"] b'),
        tail_images: document.querySelectorAll('#tail img').length,
        title: document.title
      };
    """

    def page_state():
        return driver.execute_script(SNAPSHOT, topic)

    def nodes():
        return page_state()["nodes"]

    def topic_end():
        return page_state()["end"]

    def newest():
        return page_state()["newest"]

    wait.until(lambda d: len(nodes()) == 3
               and all(n["health"].startswith("up") for n in nodes())
               and topic_end() == "1")
    Select(driver.find_element(By.ID, "tail-topic")).select_by_value(topic)
    wait.until(lambda d: newest() is not None)
    print("READY " + json.dumps(page_state()), flush=True)

    sys.stdin.readline()
    wait.until(lambda d: topic_end() == "2" and "second" in (newest() or ""))
    print("UPDATED " + json.dumps(page_state()), flush=True)
finally:
    driver.quit()
"##;

/// The JSON after `prefix` on the next line the driver prints.
fn expect_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, prefix: &str) -> Value {
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("the browser driver ended before printing {prefix}"))
        .expect("reading the browser driver's output");
    let json = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix}…, the driver printed {line:?}"));
    serde_json::from_str(json).expect("the driver prints JSON")
}

fn fail(what: &str, driver_stderr: std::thread::JoinHandle<String>) -> ! {
    panic!(
        "{what}; the browser driver said:\n{}",
        driver_stderr.join().unwrap_or_default()
    )
}

/// Fails (never skips) when the browser or its driver is missing.
fn check_browser_installed() {
    for path in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: apt-get install -y chromium chromium-driver python3-selenium"
        );
    }
    let selenium = Command::new("/usr/bin/python3")
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        selenium,
        "/usr/bin/python3 has no selenium: apt-get install -y python3-selenium"
    );
}

#[tokio::test]
async fn given_a_three_node_cluster_when_its_console_is_opened_in_chromium_should_show_the_nodes_the_topic_and_a_new_put(
) {
    check_browser_installed();
    let _serial = serial().await;
    let mut opts = ClusterOptions::default();
    let addrs: Vec<String> = (1..=3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    for (id, addr) in (1..=3).zip(&addrs) {
        opts.node_env
            .insert(id, vec![("WALRUS_METRICS_ADDR".into(), addr.clone())]);
    }
    let cluster = Cluster::start(3, opts).await;
    let topic = "console-topic";
    cluster.register(1, topic).await;
    cluster
        .client(1)
        .put(topic, "first entry")
        .await
        .expect("PUT");

    // Node 2's console: a follower's view of the cluster.
    let url = format!("http://{}/", addrs[1]);
    let mut driver = Command::new("/usr/bin/python3")
        .args(["-c", DRIVE, &url, topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the browser driver");
    let mut stdin = driver.stdin.take().expect("stdin was piped");
    let stdout = driver.stdout.take().expect("stdout was piped");
    let mut stderr = driver.stderr.take().expect("stderr was piped");
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(90)).ok());

    let Some(Ok(line)) = lines.next() else {
        let _ = driver.wait();
        fail(
            "the console never showed 3 healthy nodes and the topic",
            err_reader,
        )
    };
    let ready: Value = serde_json::from_str(line.strip_prefix("READY ").unwrap_or("null"))
        .unwrap_or_else(|_| panic!("expected READY <json>, got {line:?}"));
    assert_eq!(ready["title"], "Walrus console");
    let nodes = ready["nodes"].as_array().expect("nodes");
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"], "{ready}");
    let leader = cluster.leader(2).await.expect("a leader").to_string();
    assert_eq!(ready["leader"], leader.as_str());
    let roles: Vec<&str> = nodes.iter().filter_map(|n| n["role"].as_str()).collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "leader").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(
        roles.iter().filter(|r| **r == "follower").count(),
        2,
        "{roles:?}"
    );
    assert!(ready["term"].as_str().is_some_and(|t| t != "–"), "{ready}");
    assert_eq!(ready["newest"], "first entry");
    let segments = ready["segments"].as_array().expect("segments");
    assert_eq!(segments.len(), 1, "{ready}");
    assert_eq!(
        segments[0], "1: open 1 @1 +2,3",
        "segment 1, led by node 1, copied to 2 and 3 (the default factor on 3 nodes)"
    );

    // Markup in an entry must show as text, not become an element.
    let second = "<img src=x onerror=\"document.title='pwned'\"> second";
    cluster
        .client(3)
        .put(topic, second)
        .await
        .expect("the second PUT");
    writeln!(stdin, "put").expect("telling the driver");
    let updated = match lines.next() {
        Some(Ok(line)) if line.starts_with("UPDATED ") => {
            expect_line(&mut std::iter::once(Ok(line)), "UPDATED ")
        }
        _ => {
            let _ = driver.wait();
            fail("the console did not show the second PUT", err_reader)
        }
    };
    assert_eq!(updated["end"], "2", "{updated}");
    assert_eq!(updated["newest"], second, "the entry's text, as it was PUT");
    assert_eq!(
        updated["tail_images"], 0,
        "an entry's markup became an element"
    );
    assert_eq!(updated["title"], "Walrus console", "an entry's script ran");
    assert_eq!(updated["segments"][0], "1: open 2 @1 +2,3");
    let status = driver.wait().expect("the driver exits");
    assert!(
        status.success(),
        "{}",
        err_reader.join().unwrap_or_default()
    );
}
