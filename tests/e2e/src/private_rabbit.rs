//! A private RabbitMQ node for the fault cases that restart the broker: its
//! own node name, ports, data and log directories, from Debian's
//! `rabbitmq-server`, so a restart never touches the shared node on 5672.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::Command;

use crate::{free_port, poll_until, wait_for, Backends};

const BIN: &str = "/usr/lib/rabbitmq/bin";
/// A node boots in about 7 s on an idle machine; generous for a loaded one.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

pub struct PrivateRabbit {
    pub node: String,
    pub amqp_port: u16,
    pub management_port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    logs: PathBuf,
    starts: usize,
}

impl PrivateRabbit {
    /// Starts a node with the management plugin and waits until it serves.
    /// Its startup output goes to `logs` (`rabbitmq-<n>.log`), its own logs below the temp dir.
    pub async fn start(logs: &Path) -> PrivateRabbit {
        let dir = tempfile::Builder::new()
            .prefix("usersync-rabbit-")
            .tempdir()
            .expect("a temp dir for the private RabbitMQ node");
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let management_port = free_port();
        std::fs::write(dir.path().join("enabled_plugins"), "[rabbitmq_management].\n")
            .expect("writing enabled_plugins");
        // Queue figures every second (default 5 s), so the audit reads fresh depths.
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "management.tcp.port = {management_port}\nmanagement.tcp.ip = 127.0.0.1\n\
                 collect_statistics_interval = 1000\n"
            ),
        )
        .expect("writing rabbitmq.conf");
        // An empty env file instead of /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").expect("writing rabbitmq-env.conf");
        let mut node = PrivateRabbit {
            node: format!("usersync-fault-{id}@localhost"),
            amqp_port: free_port(),
            management_port,
            dist_port: free_port(),
            dir,
            logs: logs.to_owned(),
            starts: 0,
        };
        node.boot().await;
        node
    }

    /// Backends with this node for RabbitMQ and `base`'s PostgreSQL.
    pub fn backends(&self, base: Backends) -> Backends {
        Backends {
            amqp_addr: format!("127.0.0.1:{}", self.amqp_port),
            rabbitmq_api: format!("http://127.0.0.1:{}/api", self.management_port),
            ..base
        }
    }

    /// Stops the node (waits until its AMQP port is closed) and starts it
    /// again on the same data directory; waits until it serves.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    /// Stops the node and waits until its AMQP port is closed.
    pub async fn stop(&mut self) {
        let status = self
            .ctl()
            .arg("stop")
            .arg(self.pid_file())
            .stdout(Stdio::null())
            .status()
            .await
            .expect("running rabbitmqctl stop");
        assert!(status.success(), "rabbitmqctl -n {} stop failed", self.node);
        let port = self.amqp_port;
        wait_for(
            &format!("RabbitMQ node {} to close port {port}", self.node),
            Duration::from_secs(60),
            || async move { TcpStream::connect(("127.0.0.1", port)).is_err().then_some(()) },
        )
        .await;
    }

    async fn boot(&mut self) {
        self.starts += 1;
        let log_path = self.logs.join(format!("rabbitmq-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).expect("a log file for rabbitmq-server");
        let dir = self.dir.path();
        let mut command = Command::new(format!("{BIN}/rabbitmq-server"));
        command
            .envs(self.env())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log);
        // The node outlives this handle: stop() and Drop end it through rabbitmqctl.
        command.spawn().unwrap_or_else(|err| {
            panic!("starting {BIN}/rabbitmq-server (apt-get install rabbitmq-server): {err}")
        });
        // await_startup fails at once until the node registered with epmd: poll it.
        let ready = poll_until(BOOT_DEADLINE, || async {
            self.ctl()
                .args(["await_startup", "--timeout", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .ok()
                .filter(|status| status.success())
        })
        .await;
        assert!(
            ready.is_some(),
            "private RabbitMQ node {} did not start within {BOOT_DEADLINE:?}; see {}",
            self.node,
            log_path.display()
        );
        let api = format!("http://127.0.0.1:{}/api/overview", self.management_port);
        let http = reqwest::Client::new();
        wait_for(
            &format!("the management API of {} at {api}", self.node),
            Duration::from_secs(60),
            || async {
                http.get(&api)
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        )
        .await;
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            ("RABBITMQ_NODENAME", self.node.clone()),
            (
                "RABBITMQ_CONF_ENV_FILE",
                self.dir.path().join("rabbitmq-env.conf").display().to_string(),
            ),
        ]
    }

    fn ctl(&self) -> Command {
        let mut command = Command::new(format!("{BIN}/rabbitmqctl"));
        command.envs(self.env()).args(["-n", &self.node]);
        command
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("rabbitmq.pid")
    }
}

impl Drop for PrivateRabbit {
    /// Kills the node's own process (by the pid in its pid file, never by
    /// name): its data goes with the temp dir, so a clean stop would only cost
    /// seconds. Falls back to `rabbitmqctl stop` when there is no pid file yet.
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let pid = pid.trim().to_owned();
            let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
            // Gone (or a zombie) before the temp dir is removed, or a last
            // write would leave the dir behind.
            let stat = PathBuf::from(format!("/proc/{pid}/stat"));
            let running = || std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z "));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while running() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let _ = std::process::Command::new(format!("{BIN}/rabbitmqctl"))
            .envs(self.env())
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
