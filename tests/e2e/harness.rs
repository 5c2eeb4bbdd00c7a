//! Running the real binary in a scratch directory of its own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory; every `tandem` run in it uses its own lake and bus there.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    common: Vec<String>,
    bus: Option<String>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
            common: Vec::new(),
            bus: None,
        }
    }

    /// The same scratch directory with its bus at `url` (a Fluvio topic) instead of a
    /// `local://` bus inside it.
    pub fn with_bus(mut self, url: String) -> Scratch {
        self.bus = Some(url);
        self
    }

    /// The bus every command uses.
    pub fn bus_url(&self) -> String {
        self.bus
            .clone()
            .unwrap_or_else(|| format!("local://{}", self.path("bus").display()))
    }

    /// The same scratch directory, with `args` (`--config`, `--set`, …) after every command's.
    pub fn with_args(mut self, args: &[&str]) -> Scratch {
        self.common = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn lake_url(&self) -> String {
        format!("file://{}", self.path("lake").display())
    }

    /// A `tandem` command with the lake and bus inside the scratch directory and JSON logs.
    pub fn tandem(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tandem"));
        c.args(args)
            .args(&self.common)
            .current_dir(self.dir.path())
            .env("TANDEM__LAKE__URL", self.lake_url())
            .env("TANDEM__BUS__URL", self.bus_url())
            .env("TANDEM__LOG__FORMAT", "json")
            .env_remove("TANDEM_CONFIG");
        c
    }

    /// Runs `tandem args` to completion, feeding `stdin`.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .tandem(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tandem binary starts");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Runs and expects success; returns standard output.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "tandem {args:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A long-running `tandem` (serve, demo) listening on `port`; killed if dropped unstopped.
pub struct Listening {
    child: Child,
    pub port: u16,
}

impl Listening {
    /// Starts `cmd` (standard error kept for [`Listening::stop`]) and waits until `port`
    /// accepts connections, failing after `patience`.
    pub fn start(mut cmd: Command, port: u16, patience: Duration) -> Listening {
        let what = format!("{cmd:?}");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tandem binary starts");
        let mut l = Listening { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = l.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = l.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("{what} exited with {status} before listening:\n{err}");
            }
            assert!(
                start.elapsed() < patience,
                "{what} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        l
    }

    /// SIGTERM; whether it exited cleanly, and what it printed on standard error.
    pub fn stop(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (self.child.wait().unwrap().success(), err)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last line of standard output, as JSON (the summary line of generate/ingest).
pub fn summary(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("a summary line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary `{line}` is not JSON: {e}"))
}

/// Rows in every event file of a lake, read independently of the CLI.
pub fn lake_rows(url: &str) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake = tandem_common::lake::Lake::open(url).unwrap();
        lake.read_events()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows() as u64)
            .sum()
    })
}

/// Rows of one Parquet file, read from its footer.
pub fn parquet_rows(path: &std::path::Path) -> u64 {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader.metadata().file_metadata().num_rows() as u64
}

/// A long-running `tandem` without a port (`stream run`, `stream archive`); killed if dropped
/// unstopped.
pub struct Running {
    child: Child,
    what: String,
}

impl Running {
    /// Starts `cmd` with its standard output and error kept.
    pub fn start(mut cmd: Command) -> Running {
        let what = format!("{cmd:?}");
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tandem binary starts");
        Running { child, what }
    }

    /// Panics (with what it printed) when it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("{} exited with {status}:\n{err}", self.what);
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; asserts a clean exit and returns its summary line.
    pub fn stop(mut self) -> serde_json::Value {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{} exited with {} after SIGTERM:\n{}",
            self.what,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        summary(&String::from_utf8(out.stdout).unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the wall clock is past the next whole second: with one-second epochs, every
/// event ingested before the call is then below the latest possible cutoff.
pub fn next_epoch() {
    let ms = tandem_common::event::now_ms();
    std::thread::sleep(Duration::from_millis((1_000 - ms % 1_000 + 50) as u64));
}
