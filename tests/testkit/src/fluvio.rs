//! A real Fluvio cluster owned by a test: one SC and one SPU on free loopback ports, with their
//! data in a temporary directory, stopped on drop.
//!
//! Fluvio's server (`fluvio-run`) is not published to crates.io, so it is built once per machine
//! from Fluvio's source (`make deps`) into `~/.cache/tandem-fluvio/src/target/release`, beside a
//! small admin helper (`cluster-setup`) that registers the SPU with the SC and reads partition
//! high watermarks. `TANDEM_FLUVIO_BIN` names another directory holding both.
//!
//! The processes can be killed (`SIGKILL`) and started again one at a time, on the same ports
//! and data, for fault tests. [`FluvioCluster::start_tls`] starts one whose public ports speak
//! only TLS and ask for a client certificate, all made by `openssl` for the test.

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
    /// With TLS: the plaintext public ports the servers keep beside their TLS ones (the SC's is
    /// what the admin helper uses).
    plain: Option<(u16, u16)>,
    tls: Option<FluvioTls>,
    sc: Option<Child>,
    spu: Option<Child>,
}

/// The certificates of a TLS cluster (PEM files): the servers' certificate is valid for
/// `domain` and `*.domain` (Fluvio's client checks an SPU as `custom-spu-<id>.<domain>`).
#[derive(Debug, Clone)]
pub struct FluvioTls {
    /// The name to check the servers' certificates against.
    pub domain: String,
    /// The CA certificate that signed the servers' and the client's.
    pub ca_cert: PathBuf,
    /// A client certificate the servers accept.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
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
        Self::spawn(false)
    }

    /// As [`start`](Self::start), with TLS on the public ports and client certificates
    /// required ([`tls`](Self::tls) has the files a client needs).
    pub fn start_tls() -> FluvioCluster {
        Self::spawn(true)
    }

    fn spawn(tls: bool) -> FluvioCluster {
        // A free port can be taken by another process between the choice and the bind: a
        // server that finds its port in use is started again on new ones.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_spawn(tls) {
                Ok(c) => return c,
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("Fluvio could not get free ports five times:\n{last}");
    }

    fn try_spawn(tls: bool) -> Result<FluvioCluster, String> {
        let dir = tempfile::tempdir().expect("temp dir for Fluvio");
        let tls = tls.then(|| make_certificates(dir.path()));
        let mut c = FluvioCluster {
            bin: fluvio_bin(),
            dir,
            sc_public: free_port(),
            sc_private: free_port(),
            spu_public: free_port(),
            spu_private: free_port(),
            plain: tls.is_some().then(|| (free_port(), free_port())),
            tls,
            sc: None,
            spu: None,
        };
        c.try_start_sc()?;
        let out = Command::new(c.bin.join("cluster-setup"))
            .arg(c.admin_addr())
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
        c.try_start_spu()?;
        Ok(c)
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

    /// The certificates, for a TLS cluster.
    pub fn tls(&self) -> Option<&FluvioTls> {
        self.tls.as_ref()
    }

    /// Where the admin helper reaches the SC: its plaintext public port.
    fn admin_addr(&self) -> String {
        match self.plain {
            Some((sc, _)) => format!("127.0.0.1:{sc}"),
            None => self.addr(),
        }
    }

    /// The TLS arguments of a server, with its plaintext public port.
    fn tls_args(&self, plain: Option<u16>) -> Vec<String> {
        let (Some(t), Some(plain)) = (&self.tls, plain) else {
            return Vec::new();
        };
        let d = self.dir.path().join("tls");
        vec![
            "--tls".into(),
            "--server-cert".into(),
            d.join("server.crt").display().to_string(),
            "--server-key".into(),
            d.join("server.key").display().to_string(),
            "--enable-client-cert".into(),
            "--ca-cert".into(),
            t.ca_cert.display().to_string(),
            "--bind-non-tls-public".into(),
            format!("127.0.0.1:{plain}"),
        ]
    }

    /// Starts the SC (again) on its ports and data, and waits until it listens.
    pub fn start_sc(&mut self) {
        self.try_start_sc().unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_start_sc(&mut self) -> Result<(), String> {
        assert!(self.sc.is_none(), "the SC is running");
        let child = Command::new(self.bin.join("fluvio-run"))
            .arg("sc")
            .arg("--local")
            .arg(self.dir.path().join("sc"))
            .arg("--bind-public")
            .arg(format!("127.0.0.1:{}", self.sc_public))
            .arg("--bind-private")
            .arg(format!("127.0.0.1:{}", self.sc_private))
            .args(self.tls_args(self.plain.map(|p| p.0)))
            .stdout(Stdio::null())
            .stderr(self.log("sc"))
            .spawn()
            .expect("fluvio-run starts");
        self.sc = Some(child);
        self.wait_listening("sc", self.sc_public)?;
        self.wait_listening("sc", self.sc_private)
    }

    /// Starts the SPU (again) on its ports and data, and waits until it listens.
    pub fn start_spu(&mut self) {
        self.try_start_spu().unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_start_spu(&mut self) -> Result<(), String> {
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
            .args(self.tls_args(self.plain.map(|p| p.1)))
            .stdout(Stdio::null())
            .stderr(self.log("spu"))
            .spawn()
            .expect("fluvio-run starts");
        self.spu = Some(child);
        self.wait_listening("spu", self.spu_public)
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
            .arg(self.admin_addr())
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

    /// Waits until server `which` listens on `port`; its log when it exited instead.
    fn wait_listening(&mut self, which: &str, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let child = match which {
                "sc" => self.sc.as_mut(),
                _ => self.spu.as_mut(),
            }
            .expect("started");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "fluvio-run {which} exited with {status}:\n{}",
                    self.log_text(which)
                ));
            }
            assert!(
                Instant::now() < deadline,
                "fluvio-run {which} does not listen on {port} after 30 s:\n{}",
                self.log_text(which)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for FluvioCluster {
    fn drop(&mut self) {
        self.kill_spu();
        self.kill_sc();
    }
}

/// A CA, a server certificate for `fluvio.test` and `*.fluvio.test`, and a client certificate,
/// made with `openssl` in `dir/tls`.
fn make_certificates(dir: &Path) -> FluvioTls {
    let d = dir.join("tls");
    std::fs::create_dir_all(&d).expect("a directory for the certificates");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&d)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}) to make test certificates"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tandem-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    for (name, cn, ext) in [
        (
            "server",
            "fluvio.test",
            "subjectAltName=DNS:fluvio.test,DNS:*.fluvio.test\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "tandem", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n{ext}"),
        )
        .expect("an openssl extension file");
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }
    FluvioTls {
        domain: "fluvio.test".into(),
        ca_cert: d.join("ca.crt"),
        cert: d.join("client.crt"),
        key: d.join("client.key"),
    }
}
