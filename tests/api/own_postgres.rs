//! A PostgreSQL server of one test's own, for tests that kill or restart a shard's
//! server (the shared cluster's servers serve every other test and are never touched).
//! As root the server runs as the `postgres` system user, as `scripts/cluster.sh` does.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

fn bindir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/cluster.sh install)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with bin/postgres")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl OwnPostgres {
    /// initdb in a fresh directory and start the server on a free port (blocking: a few
    /// seconds).
    pub fn start() -> Self {
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("sw-own-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("data dir");
        let server = Self { port: free_port(), dir, bin: bindir(), as_postgres };
        if as_postgres {
            server.run(Command::new("chown").args(["postgres:", server.dir.to_str().expect("path")]));
        }
        let data = server.data();
        server.pg("initdb", &["-D", &data, "-U", "shardwallet", "--auth=trust", "-E", "UTF8", "--no-locale"]);
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 100\nfsync = off\n",
            server.port
        );
        server.append(&Path::new(&data).join("postgresql.conf"), &conf);
        server.append(&Path::new(&data).join("pg_hba.conf"), "host all all 127.0.0.1/32 trust\n");
        let log = server.dir.join("server.log").display().to_string();
        server.pg("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"]);
        server
    }

    /// `postgres://shardwallet@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://shardwallet@127.0.0.1:{}/{db}", self.port)
    }

    /// What `kill -9` of the postmaster and a start do to clients: `pg_ctl restart -m
    /// immediate` drops every connection at once, without a shutdown checkpoint, and
    /// the server recovers from its WAL.
    pub fn restart_immediately(&self) {
        let log = self.dir.join("server.log").display().to_string();
        self.pg("pg_ctl", &["-D", &self.data(), "-l", &log, "-m", "immediate", "-w", "-t", "60", "restart"]);
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn append(&self, file: &Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(file).expect("open conf");
        f.write_all(text.as_bytes()).expect("write conf");
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        // pg_ctl and initdb fail when they cannot read the current directory.
        command.args(args).current_dir(&self.dir);
        self.run(&mut command);
    }

    fn run(&self, command: &mut Command) {
        let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
        assert!(
            out.status.success(),
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let _ = command.args(["-D", &data, "-m", "immediate", "-w", "stop"]).current_dir(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
