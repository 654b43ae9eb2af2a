//! Dependencies of the fault suite's own: a PostgreSQL cluster (`initdb` into a temp dir, its
//! own port, run as the `postgres` user when the tests run as root), a Redis server on a free
//! port, and ferry itself as a real `ferry serve` process. Never the machine's shared
//! instances; each is stopped on drop, by its own data directory or pid.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Child;
use uuid::Uuid;

/// A free TCP port on loopback (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn running_as_root() -> bool {
    output_of("id", &["-u"]).as_deref() == Some("0")
}

/// The newest PostgreSQL server binaries installed from Debian packages.
fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// A PostgreSQL cluster of one test.
pub struct Postgres {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl Postgres {
    /// `initdb` and start a cluster on a free port.
    pub fn start_new() -> Self {
        let root = std::env::temp_dir().join(format!("ferry-faults-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).expect("temp dir");
        let as_postgres = running_as_root();
        if as_postgres {
            // initdb refuses to run as root; the cluster belongs to the postgres user.
            let uid: u32 = output_of("id", &["-u", "postgres"])
                .and_then(|u| u.parse().ok())
                .expect("a postgres user (Debian's postgresql package creates it)");
            std::os::unix::fs::chown(&root, Some(uid), None).expect("chown temp dir");
        }
        let data = root.join("data");
        let postgres = Self {
            bin: postgres_bin_dir(),
            root,
            data,
            port: free_port(),
            as_postgres,
        };
        let data_dir = postgres.data.to_string_lossy().into_owned();
        postgres.run(
            "initdb",
            &[
                "-D",
                &data_dir,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let settings = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 100\nshared_buffers = 32MB\n",
            postgres.port, data_dir
        );
        std::fs::write(postgres.data.join("postgresql.auto.conf"), settings)
            .expect("write settings");
        postgres.start();
        postgres
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data_dir = self.data.to_string_lossy().into_owned();
        let log = self
            .root
            .join("postgres.log")
            .to_string_lossy()
            .into_owned();
        let mut all = vec!["-D", &data_dir, "-l", &log, "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    pub fn start(&self) {
        self.pg_ctl(&["start"]);
    }

    /// Fast shutdown: clients are disconnected, open transactions roll back.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    pub fn restart_fast(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data_dir = self.data.to_string_lossy().into_owned();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data_dir, "stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A Redis server of one test.
pub struct Redis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Redis {
    pub fn start_new() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.start();
        redis
    }

    pub fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `ferry serve` (all roles) as a child process, logging to a file.
pub struct Ferry {
    pub child: Child,
    pub address: String,
    pub log: PathBuf,
}

impl Ferry {
    pub async fn start(postgres: &Postgres, redis: &Redis, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("ferry-faults-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .arg("serve")
            .env("DATABASE_URL", postgres.url("ferry"))
            .env("REDIS_URL", redis.url())
            .env("FERRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,sqlx=warn,apalis=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("ferry starts");
        let ferry = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
        };
        ferry.wait_ready(Duration::from_secs(60)).await;
        ferry
    }

    pub async fn wait_ready(&self, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            let ready = client
                .get(format!("{}/readyz", self.address))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ferry not ready within {within:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
