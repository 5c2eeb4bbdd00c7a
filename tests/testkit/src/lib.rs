//! What Tandem's tests and demos stand on: a synthetic storefront ([`generate`], also the
//! binary's `generate` and `demo`), and real servers owned by a test — a `redis-server`, a Redis
//! Cluster or a Fluvio cluster — plus store doubles that fail or restart on cue.
//!
//! [`RedisServer::start`] runs `redis-server` on a free loopback port with its own temporary
//! directory and nothing persisted; dropping it stops the server and removes the directory. Tests
//! therefore run in parallel, leave nothing behind, and never touch a Redis that happens to run
//! on 6379. [`RedisCluster::start`] forms a cluster of three such servers. [`RestartingRedis`]
//! is a store whose server restarts empty at a chosen call; [`FluvioCluster`] one SC and one SPU.
//!
//! A dev-dependency of every crate (a normal one of the `tandem` binary, for the generator).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod faulty;
mod fluvio;
pub mod generate;
mod restarting;
pub use faulty::FaultyStore;
pub use fluvio::{FluvioCluster, FluvioTls, fluvio_bin};
pub use restarting::{RestartAfter, RestartingRedis};

/// A `redis-server` owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    tls: bool,
    /// The cluster bus port of a cluster node.
    bus_port: Option<u16>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Cluster,
    Tls,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`. Panics with the reason when it cannot
    /// (no `redis-server` on the PATH: `make test` installs it).
    pub fn start() -> RedisServer {
        Self::spawn(Mode::Plain)
    }

    /// A server that speaks only TLS, with a self-signed certificate made by `openssl`; its
    /// [`url`](Self::url) is `rediss://…/#insecure` (the certificate is not checked).
    pub fn start_tls() -> RedisServer {
        Self::spawn(Mode::Tls)
    }

    fn spawn(mode: Mode) -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let port = free_port();
            if mode == Mode::Tls {
                make_certificate(dir.path());
            }
            let bus_port = (mode == Mode::Cluster).then(free_port);
            match launch(mode, port, bus_port, dir.path()) {
                Ok(child) => {
                    return RedisServer {
                        child,
                        port,
                        dir,
                        tls: mode == Mode::Tls,
                        bus_port,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start redis-server: {last_error}");
    }

    /// Kills the server (SIGKILL) and starts it again on the same port: a Redis without
    /// persistence restarted, empty.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mode = match (self.tls, self.bus_port.is_some()) {
            (true, _) => Mode::Tls,
            (false, true) => Mode::Cluster,
            (false, false) => Mode::Plain,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match launch(mode, self.port, self.bus_port, self.dir.path()) {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                // The port may linger for a moment.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot restart redis-server: {e}"),
            }
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://127.0.0.1:<port>/#insecure` for a TLS server.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}/#insecure", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// The server's working directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` on `port` in `dir`, nothing persisted, and waits until it answers.
fn launch(
    mode: Mode,
    port: u16,
    bus_port: Option<u16>,
    dir: &std::path::Path,
) -> Result<Child, String> {
    let mut cmd = Command::new("redis-server");
    if mode == Mode::Tls {
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-auth-clients", "no"])
            .args(["--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem"])
            .args(["--tls-ca-cert-file", "cert.pem"]);
    } else {
        cmd.args(["--port", &port.to_string()]);
    }
    if let Some(bus_port) = bus_port {
        // The cluster bus port is set, not left at port + 10000 (which may be taken).
        cmd.args(["--cluster-enabled", "yes", "--cluster-port"])
            .arg(bus_port.to_string())
            .args(["--cluster-node-timeout", "5000"]);
    }
    let child = cmd
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot start redis-server ({e}); install it (apt-get install redis-server) or run `make test`"
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("redis-server exited with {status}: {err}"));
        }
        let up = match mode {
            Mode::Tls => tls_ping(port),
            _ => ping(port).is_ok(),
        };
        if up {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("redis-server did not answer PING within 10s".into())
}

/// A Redis Cluster of three primaries without replicas, owned by a test: three
/// [`RedisServer`]s in cluster mode, each given a third of the slots, introduced to each other.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the servers and waits until every node sees the whole cluster up (all slots
    /// served, three nodes known). Panics with the reason when it cannot.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::spawn(Mode::Cluster)).collect();
        let n = nodes.len();
        for (i, node) in nodes.iter().enumerate() {
            let (first, last) = (i * 16_384 / n, (i + 1) * 16_384 / n - 1);
            cli(
                node.port(),
                &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()],
            );
            cli(
                node.port(),
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            );
        }
        for node in &nodes[1..] {
            cli(
                node.port(),
                &[
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    &nodes[0].port().to_string(),
                    &nodes[0].bus_port.expect("a cluster node").to_string(),
                ],
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let infos: Vec<String> = nodes
                .iter()
                .map(|s| cli(s.port(), &["CLUSTER", "INFO"]))
                .collect();
            let up = infos.iter().all(|i| {
                i.contains("cluster_state:ok")
                    && i.contains("cluster_slots_assigned:16384")
                    && i.contains(&format!("cluster_known_nodes:{n}"))
            });
            if up {
                return RedisCluster { nodes };
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not form within 30 s: {infos:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+cluster://127.0.0.1:<port>,…`, every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Deletes every key on every node.
    pub fn flush(&self) {
        for node in &self.nodes {
            cli(node.port(), &["FLUSHALL"]);
        }
    }
}

/// Runs `redis-cli -p <port> <args>` and returns what it printed; panics when it fails.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-cli ({e}); install it (apt-get install redis-tools) or run `make test`")
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.starts_with("ERR") && !text.starts_with("(error)"),
        "redis-cli -p {port} {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A self-signed certificate for `127.0.0.1`, `cert.pem` and `key.pem` in `dir`, by `openssl`.
fn make_certificate(dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}) to make a test certificate"));
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `PING` over TLS with `redis-cli --tls --insecure`.
fn tls_ping(port: u16) -> bool {
    Command::new("redis-cli")
        .args([
            "--tls",
            "--insecure",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "PING",
        ])
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Sends `PING` in RESP and expects `+PONG`.
pub fn ping(port: u16) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    if &buf == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&buf)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_cleans_up() {
        let server = RedisServer::start();
        assert_ne!(server.port(), 6379);
        ping(server.port()).expect("PONG");
        let (port, dir) = (server.port(), server.dir().to_path_buf());
        assert!(dir.is_dir());
        drop(server);
        assert!(ping(port).is_err(), "the server is gone after drop");
        assert!(!dir.exists(), "its directory is removed");
    }

    #[test]
    fn a_cluster_forms_and_cleans_up() {
        let cluster = RedisCluster::start();
        let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
        assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
        let slots = cli(ports[0], &["CLUSTER", "SLOTS"]);
        for p in &ports {
            assert!(slots.contains(&p.to_string()), "{slots}");
        }
        drop(cluster);
        assert!(ports.iter().all(|p| ping(*p).is_err()));
    }

    #[test]
    fn two_servers_run_side_by_side() {
        let a = RedisServer::start();
        let b = RedisServer::start();
        assert_ne!(a.port(), b.port());
        ping(a.port()).unwrap();
        ping(b.port()).unwrap();
    }
}
