//! The Redis kv backend against a real `redis-server` (Debian package
//! `redis-server`), started here on a free loopback port with its own
//! directory and no persistence: atomic incr under concurrency, the TTL set
//! only at creation, namespaces kept apart, errors (not hangs) while Redis
//! is down and recovery once it is back.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::config::StateConfig;
use sluice::state::StateBackend;
use sluice_spool::Spool;

struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start_on(port: u16) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: install the Debian package redis-server (tests/install-peers.sh)");
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn backend(url: String, spool: &Spool) -> StateBackend {
    let config = StateConfig::Redis {
        url,
        key_prefix: "test:".into(),
    };
    StateBackend::open(&config, spool).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incr_is_atomic_and_namespaced() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let state = backend(redis.url(), &spool);
    let kv = state.kv("ratelimit").unwrap();

    // 16 tasks on two separate clients (two "nodes") x 100 increments.
    let other = backend(redis.url(), &spool).kv("ratelimit").unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let kv = if i % 2 == 0 {
            kv.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                kv.incr("hits", 1, Some(3600)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(kv.incr("hits", 0, None).await.unwrap(), 1600);
    assert_eq!(kv.get("hits").await.unwrap().unwrap(), b"1600");

    // Another namespace (and one with a ':' that could collide) sees nothing.
    let greylist = state.kv("greylist").unwrap();
    assert_eq!(greylist.get("hits").await.unwrap(), None);
    let tricky = state.kv("rate").unwrap();
    kv.set("x:y", b"1", None).await.unwrap();
    assert_eq!(tricky.get("limit:x:y").await.unwrap(), None);
    let colon = state.kv("ratelimit:x").unwrap();
    assert_eq!(colon.get("y").await.unwrap(), None);

    // set/get/delete, binary values.
    greylist.set("k", b"\x00\xffv", None).await.unwrap();
    assert_eq!(greylist.get("k").await.unwrap().unwrap(), b"\x00\xffv");
    greylist.delete("k").await.unwrap();
    greylist.delete("k").await.unwrap();
    assert_eq!(greylist.get("k").await.unwrap(), None);
    greylist.set("gone", b"v", Some(0)).await.unwrap();
    assert_eq!(greylist.get("gone").await.unwrap(), None);

    // A non-counter is an error, not a panic.
    greylist.set("text", b"abc", None).await.unwrap();
    assert!(greylist.incr("text", 1, None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_set_at_creation_only_and_expires() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let kv = backend(redis.url(), &spool).kv("ratelimit").unwrap();

    assert_eq!(kv.incr("window", 1, Some(1)).await.unwrap(), 1);
    // A later TTL does not extend the window: the counter still goes.
    assert_eq!(kv.incr("window", 1, Some(3600)).await.unwrap(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while kv.get("window").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "1 s counter still alive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kv.incr("window", 1, Some(3600)).await.unwrap(), 1);

    kv.set("short", b"v", Some(1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while kv.get("short").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "1 s value still alive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_while_down_and_recovers() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let kv = backend(redis.url(), &spool).kv("ratelimit").unwrap();
    assert_eq!(kv.incr("n", 1, None).await.unwrap(), 1);

    redis.stop();
    let started = Instant::now();
    let err = kv.incr("n", 1, None).await.unwrap_err().to_string();
    assert!(err.contains("redis INCR n"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a down Redis must fail, not hang"
    );

    // Back (empty, no persistence): the manager reconnects by itself.
    let _again = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match kv.incr("n", 1, None).await {
            Ok(n) => {
                assert_eq!(n, 1);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
