//! A private PostgreSQL cluster for the fault cases that restart the database
//! or make it refuse connections: `initdb` and `pg_ctl` in a temp dir, on its
//! own port, so nothing happens to the shared server on 5432.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tokio_postgres::{error::SqlState, Client, NoTls};

use crate::{free_port, Backends};

pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    logs: PathBuf,
}

/// Connections that fill the cluster (see [`PrivatePostgres::refuse_connections`]);
/// dropping them (or [`Refusal::release`]) lets clients in again.
pub struct Refusal {
    held: Vec<Client>,
}

impl Refusal {
    /// How many connections were held to fill the cluster.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn release(self) {}
}

impl PrivatePostgres {
    /// `initdb` and start a cluster (trust auth, fsync off) allowing
    /// `max_connections` clients; its server log ends up in `logs/postgres.log`.
    pub fn start(logs: &Path, max_connections: u32) -> PrivatePostgres {
        let bin = newest_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("usersync-pg-")
            .tempdir()
            .expect("a temp dir for the private PostgreSQL cluster");
        // initdb refuses to run as root: the cluster belongs to `postgres`.
        run(Command::new("chown").args(["postgres:postgres"]).arg(dir.path()));
        let cluster = PrivatePostgres {
            port: free_port(),
            bin,
            dir,
            logs: logs.to_owned(),
        };
        cluster.as_postgres(
            "initdb",
            &[
                "-D",
                &cluster.data().display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let settings = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = {max_connections}\n",
            cluster.port,
            cluster.dir.path().display()
        );
        let conf = cluster.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("reading postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("writing postgresql.conf");
        cluster.pg_ctl(&["start"]);
        cluster
    }

    /// A superuser URL to this cluster's `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Backends with this cluster for PostgreSQL and `base`'s RabbitMQ.
    pub fn backends(&self, base: Backends) -> Backends {
        Backends {
            postgres_admin_url: self.admin_url(),
            ..base
        }
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server is back when it returns.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// Makes the cluster refuse new connections with `too many clients`:
    /// ends every other client's backend and holds every slot until the
    /// returned [`Refusal`] is dropped. Clients that reconnect meanwhile take
    /// slots back; they are ended again until only ours are left.
    pub async fn refuse_connections(&self) -> Refusal {
        let url = self.admin_url();
        let mut held: Vec<Client> = Vec::new();
        let mut ours: Vec<i32> = Vec::new();
        let mut slots = usize::MAX;
        // Until we hold every slot: an ended backend frees its slot a moment
        // after pg_terminate_backend returns, so "refused and nothing left to
        // end" alone could stop one short.
        while held.len() < slots {
            match tokio_postgres::connect(&url, NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    let row = client
                        .query_one(
                            "SELECT pg_backend_pid(), current_setting('max_connections')::int",
                            &[],
                        )
                        .await
                        .expect("reading a held connection's backend pid");
                    ours.push(row.get(0));
                    slots = usize::try_from(row.get::<_, i32>(1)).expect("max_connections");
                    held.push(client);
                }
                Err(err) if err.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) => {
                    let first = held
                        .first()
                        .expect("other clients filled the cluster before one connection could be held");
                    first
                        .execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE backend_type = 'client backend' AND pid <> ALL($1)",
                            &[&ours],
                        )
                        .await
                        .expect("ending the other clients' backends");
                }
                Err(err) => panic!("filling the private PostgreSQL on port {}: {err}", self.port),
            }
        }
        Refusal { held }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data().display().to_string();
        let log = self.log_file().display().to_string();
        let mut all = vec!["-D", &data, "-l", &log, "-w", "-t", "120"];
        all.extend_from_slice(args);
        self.as_postgres("pg_ctl", &all);
    }

    fn as_postgres(&self, program: &str, args: &[&str]) {
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir(self.dir.path()));
    }
}

impl Drop for PrivatePostgres {
    /// Stops the cluster at once and keeps its server log with the test's logs.
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::copy(self.log_file(), self.logs.join("postgres.log"));
    }
}

/// The newest of Debian's /usr/lib/postgresql/<version>/bin.
fn newest_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/<version>/bin/initdb (apt-get install postgresql)")
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("running {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
