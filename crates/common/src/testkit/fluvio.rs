//! A real Fluvio cluster owned by a test: one SC and one SPU on free loopback ports, with their
//! data in a temporary directory, stopped on drop.
//!
//! Fluvio's server (`fluvio-run`) is not published to crates.io, so it is built once per machine
//! from Fluvio's source (`make deps`) into `~/.cache/tandem-fluvio/src/target/release`, beside a
//! small admin helper (`cluster-setup`) that registers the SPU with the SC and reads partition
//! high watermarks. `TANDEM_FLUVIO_BIN` names another directory holding both.
//!
//! The processes can be killed (`SIGKILL`) and started again one at a time, on the same ports
//! and data, for fault tests.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The SPU's id, as registered with the SC.
const SPU_ID: &str = "5001";

/// A Fluvio cluster (one SC, one SPU) owned by a test.
pub struct FluvioCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    sc_public: u16,
    sc_private: u16,
    spu_public: u16,
    spu_private: u16,
    sc: Option<Child>,
    spu: Option<Child>,
}

/// Where `fluvio-run` and `cluster-setup` are: `TANDEM_FLUVIO_BIN`, or the per-machine build.
/// Panics with what to do when they are missing.
pub fn fluvio_bin() -> PathBuf {
    let dir = match std::env::var_os("TANDEM_FLUVIO_BIN") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tandem-fluvio/src/target/release"),
    };
    for exe in ["fluvio-run", "cluster-setup"] {
        assert!(
            dir.join(exe).is_file(),
            "no Fluvio server at {}: `make deps` builds it once per machine (or set \
             TANDEM_FLUVIO_BIN to a directory holding fluvio-run and cluster-setup)",
            dir.join(exe).display()
        );
    }
    dir
}

impl FluvioCluster {
    /// Starts the SC, registers the SPU, starts the SPU and waits until both listen. Panics
    /// with the reason (and the servers' logs) when it cannot.
    pub fn start() -> FluvioCluster {
        let mut c = FluvioCluster {
            bin: fluvio_bin(),
            dir: tempfile::tempdir().expect("temp dir for Fluvio"),
            sc_public: free_port(),
            sc_private: free_port(),
            spu_public: free_port(),
            spu_private: free_port(),
            sc: None,
            spu: None,
        };
        c.start_sc();
        let out = Command::new(c.bin.join("cluster-setup"))
            .arg(c.addr())
            .args(["spu", SPU_ID])
            .arg(format!("127.0.0.1:{}", c.spu_public))
            .arg(format!("127.0.0.1:{}", c.spu_private))
            .output()
            .expect("cluster-setup runs");
        assert!(
            out.status.success(),
            "registering the SPU failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.start_spu();
        c
    }

    /// The SC's public address, `127.0.0.1:PORT` (what clients connect to).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.sc_public)
    }

    /// `fluvio://127.0.0.1:PORT/TOPIC`.
    pub fn url(&self, topic: &str) -> String {
        format!("fluvio://{}/{topic}", self.addr())
    }

    /// The cluster's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the SC (again) on its ports and data, and waits until it listens.
    pub fn start_sc(&mut self) {
        assert!(self.sc.is_none(), "the SC is running");
        let child = Command::new(self.bin.join("fluvio-run"))
            .arg("sc")
            .arg("--local")
            .arg(self.dir.path().join("sc"))
            .arg("--bind-public")
            .arg(format!("127.0.0.1:{}", self.sc_public))
            .arg("--bind-private")
            .arg(format!("127.0.0.1:{}", self.sc_private))
            .stdout(Stdio::null())
            .stderr(self.log("sc"))
            .spawn()
            .expect("fluvio-run starts");
        self.sc = Some(child);
        self.wait_listening("sc", self.sc_public);
        self.wait_listening("sc", self.sc_private);
    }

    /// Starts the SPU (again) on its ports and data, and waits until it listens.
    pub fn start_spu(&mut self) {
        assert!(self.spu.is_none(), "the SPU is running");
        let child = Command::new(self.bin.join("fluvio-run"))
            .args(["spu", "-i", SPU_ID])
            .arg("-p")
            .arg(format!("127.0.0.1:{}", self.spu_public))
            .arg("-v")
            .arg(format!("127.0.0.1:{}", self.spu_private))
            .arg("--sc-addr")
            .arg(format!("127.0.0.1:{}", self.sc_private))
            .arg("--log-base-dir")
            .arg(self.dir.path().join("spu"))
            .stdout(Stdio::null())
            .stderr(self.log("spu"))
            .spawn()
            .expect("fluvio-run starts");
        self.spu = Some(child);
        self.wait_listening("spu", self.spu_public);
    }

    /// Kills the SPU with SIGKILL (as a crash would) and waits for it to be gone.
    pub fn kill_spu(&mut self) {
        if let Some(mut c) = self.spu.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the SC with SIGKILL and waits for it to be gone.
    pub fn kill_sc(&mut self) {
        if let Some(mut c) = self.sc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Each partition's high watermark of `topic` as the SC last heard it from the SPU (it lags
    /// produces by up to a few seconds), in partition order.
    pub fn high_watermarks(&self, topic: &str) -> Vec<u64> {
        let out = Command::new(self.bin.join("cluster-setup"))
            .arg(self.addr())
            .args(["hw", topic])
            .output()
            .expect("cluster-setup runs");
        assert!(
            out.status.success(),
            "cluster-setup hw {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut marks: Vec<(u32, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.split_once(" hw=")?;
                let p = name.rsplit_once('-')?.1.parse().ok()?;
                let hw = rest.split_whitespace().next()?.parse().ok()?;
                Some((p, hw))
            })
            .collect();
        marks.sort_unstable();
        marks.into_iter().map(|(_, hw)| hw).collect()
    }

    /// What a server wrote to its log so far (for failure messages).
    pub fn log_text(&self, which: &str) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join(format!("{which}.log"))) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn log(&self, which: &str) -> Stdio {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{which}.log")))
            .expect("a log file for the Fluvio server");
        Stdio::from(f)
    }

    fn wait_listening(&mut self, which: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let child = match which {
                "sc" => self.sc.as_mut(),
                _ => self.spu.as_mut(),
            }
            .expect("started");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "fluvio-run {which} exited with {status}:\n{}",
                    self.log_text(which)
                );
            }
            assert!(
                Instant::now() < deadline,
                "fluvio-run {which} does not listen on {port} after 30 s:\n{}",
                self.log_text(which)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FluvioCluster {
    fn drop(&mut self) {
        self.kill_spu();
        self.kill_sc();
    }
}
