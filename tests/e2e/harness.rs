//! Running the real binary in a scratch directory of its own.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A scratch directory; every `tandem` run in it uses its own lake and bus there.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
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
            .current_dir(self.dir.path())
            .env("TANDEM__LAKE__URL", self.lake_url())
            .env(
                "TANDEM__BUS__URL",
                format!("local://{}", self.path("bus").display()),
            )
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
