//! The harness of the end-to-end tests: starts a whole usersync stack as
//! separate processes, each test in its own database and RabbitMQ vhost.
//!
//! Needs PostgreSQL, RabbitMQ with the management plugin, Debian's
//! `python3-aiosmtpd` (Postfix's `smtp-sink` for a stack of [`MailServer::SmtpSink`]),
//! and the workspace binaries built (`cargo build --workspace --bins`);
//! `scripts/test` provides all of them.

use std::{
    future::Future,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const RABBITMQ_API: &str = "http://127.0.0.1:15672/api";
pub const PBX_TOKEN: &str = "e2e-pbx-token";
/// A fixed test key (32 bytes, base64).
pub const SECRET_KEY: &str = "dXNlcnN5bmMtZTJlLXRlc3Qta2V5LTMyLWJ5dGVzISE=";
/// Each service's PostgreSQL connections in a test stack (`DATABASE_POOL_SIZE`).
const STACK_POOL_SIZE: &str = "8";
pub mod audit;
pub mod inject;
pub mod maildir;
pub mod private_postgres;
pub mod private_rabbit;
pub mod sink;

pub use audit::{Audit, AuditReport, CaseRecord};
pub use private_postgres::PrivatePostgres;
pub use private_rabbit::PrivateRabbit;

/// Where a [`Stack`] finds PostgreSQL and RabbitMQ: the shared servers
/// ([`Backends::shared`]) or a private node and cluster a fault case may restart.
#[derive(Clone, Debug)]
pub struct Backends {
    /// A superuser URL to the `postgres` database; each stack's database sits next to it.
    pub postgres_admin_url: String,
    /// `host:port` of the AMQP listener (guest/guest).
    pub amqp_addr: String,
    /// The management API, e.g. `http://127.0.0.1:15672/api` (guest/guest).
    pub rabbitmq_api: String,
}

impl Backends {
    /// The PostgreSQL and RabbitMQ every other test shares.
    pub fn shared() -> Backends {
        Backends {
            postgres_admin_url: POSTGRES_ADMIN_URL.to_owned(),
            amqp_addr: "127.0.0.1:5672".to_owned(),
            rabbitmq_api: RABBITMQ_API.to_owned(),
        }
    }

    /// The URL of database `name` on this PostgreSQL.
    pub fn database_url(&self, name: &str) -> String {
        let (server, _) = self
            .postgres_admin_url
            .rsplit_once('/')
            .expect("postgres_admin_url ends in /<database>");
        format!("{server}/{name}")
    }
}

pub const SERVICES: [&str; 4] = [
    "usersync-fetcher",
    "usersync-differ",
    "usersync-applier",
    "usersync-notifier",
];

/// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(deadline, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// Polls `check` every 100 ms until it returns `Some`; `None` once `deadline` passed.
pub async fn poll_until<T, F, Fut>(deadline: Duration, check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_every(deadline, Duration::from_millis(100), check).await
}

/// Polls `check` every `every` until it returns `Some`; `None` once `deadline` passed.
pub async fn poll_every<T, F, Fut>(deadline: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Where the workspace's binaries are: next to the test binary's `deps` folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// A port free now and never handed out before in this process. The
/// kernel may give a just-released port to the next `bind(0)`, so two
/// tests starting servers at once could otherwise both be given it: one
/// server fails to bind, and its test talks to the other test's server.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A local port nothing listens on, held while this lives: the socket is bound
/// but never listens, so a connection there is refused, and it has no
/// SO_REUSEADDR, so no other socket (another test's server) is given the port.
pub struct ClosedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn reserve() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("a free port");
        let port = socket.local_addr().expect("its address").port();
        Self {
            port,
            _socket: socket,
        }
    }
}

/// A running simulator and its base URL.
pub struct Sim {
    pub url: String,
    _child: Child,
}

impl Sim {
    /// Starts a simulator on a free port and reads the address it prints.
    async fn start(name: &str, args: &[&str], logs: &Path) -> Sim {
        let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("a log file");
        let mut child = Command::new(binary(name))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{name} printed no address within 30 s"))
            .expect("reading the simulator's stdout")
            .unwrap_or_else(|| panic!("{name} exited before listening"));
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name} printed {line:?}, expected `listening on URL`"))
            .trim()
            .to_owned();
        Sim { url, _child: child }
    }
}

/// A running `usersync-api`: its base URL and an operator token.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    pub token: String,
}

/// The SMTP server a [`Stack`]'s notifier sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailServer {
    /// Debian's aiosmtpd, storing into a Maildir: what the tests read
    /// ([`Stack::mails`], [`Stack::decoded_mails`], the scripted handlers of tests/smtp).
    Aiosmtpd,
    /// Postfix's smtp-sink, for mail in bulk (see [`sink`]): read its dump
    /// with [`sink::DumpCounter`] and [`sink::stored_mails`].
    SmtpSink,
}

/// A whole stack: simulators, SMTP server, the four services, own database and vhost.
pub struct Stack {
    pub name: String,
    pub database_url: String,
    pub amqp_url: String,
    pub vhost: String,
    pub graph: Sim,
    pub pbx: Sim,
    pub smtp_port: u16,
    pub mail_server: MailServer,
    /// Where the SMTP server stores what it receives: aiosmtpd's Maildir, or
    /// smtp-sink's dump folder.
    pub maildir: PathBuf,
    pub logs: PathBuf,
    pub http: reqwest::Client,
    /// More environment for every process of the stack (see [`Stack::start_with`]).
    pub extra_env: Vec<(&'static str, String)>,
    /// Each service replica started, with its `/metrics` URL.
    pub metrics: Vec<(String, String)>,
    /// The PostgreSQL and RabbitMQ this stack runs on.
    pub backends: Backends,
    /// Behind a mutex only so [`Stack::exited_services`] can look from `&self` (inside a wait).
    services: std::sync::Mutex<Vec<Child>>,
    _smtp: SmtpProcess,
    _tmp: tempfile::TempDir,
}

/// The stack's SMTP server, stopped when dropped.
enum SmtpProcess {
    Aiosmtpd { _child: Child },
    SmtpSink { _sink: sink::SmtpSink },
}

impl Stack {
    pub async fn start(test: &str) -> Stack {
        Stack::start_with(test, Vec::new()).await
    }

    /// A stack whose processes all get `extra_env` too.
    pub async fn start_with(test: &str, extra_env: Vec<(&'static str, String)>) -> Stack {
        Stack::start_on(test, Backends::shared(), extra_env).await
    }

    /// A stack on other PostgreSQL and RabbitMQ servers (a [`PrivatePostgres`],
    /// a [`PrivateRabbit`]), whose processes all get `extra_env` too.
    pub async fn start_on(test: &str, backends: Backends, extra_env: Vec<(&'static str, String)>) -> Stack {
        Stack::start_serving(test, backends, extra_env, MailServer::Aiosmtpd).await
    }

    /// Like [`Stack::start_with`], with Postfix's smtp-sink as its SMTP server
    /// instead of aiosmtpd (see [`MailServer::SmtpSink`]).
    pub async fn start_with_sink(test: &str, extra_env: Vec<(&'static str, String)>) -> Stack {
        Stack::start_serving(test, Backends::shared(), extra_env, MailServer::SmtpSink).await
    }

    async fn start_serving(
        test: &str,
        backends: Backends,
        extra_env: Vec<(&'static str, String)>,
        mail_server: MailServer,
    ) -> Stack {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let name = format!("{test}_{suffix}");
        let tmp = tempfile::tempdir().expect("a temp dir");
        let logs = workspace_target().join("e2e-logs").join(&name);
        std::fs::create_dir_all(&logs).expect("the log folder");
        let http = reqwest::Client::new();
        let vhost = format!("usersync-e2e-{name}");
        create_vhost_on(&http, &backends.rabbitmq_api, &vhost).await;
        let smtp_port = free_port();
        let (maildir, smtp) = match mail_server {
            MailServer::Aiosmtpd => {
                let maildir = tmp.path().join("Maildir");
                let smtp = start_smtp(smtp_port, &maildir, &logs).await;
                (maildir, SmtpProcess::Aiosmtpd { _child: smtp })
            }
            MailServer::SmtpSink => {
                let sink = sink::SmtpSink::start_on(smtp_port, &logs.join("smtp.log")).await;
                (sink.dump.clone(), SmtpProcess::SmtpSink { _sink: sink })
            }
        };
        let graph = Sim::start("usersync-graph-sim", &[], &logs).await;
        let pbx = Sim::start("usersync-pbx-sim", &["--token", PBX_TOKEN], &logs).await;
        let mut stack = Stack {
            database_url: backends.database_url(&format!("usersync_e2e_{name}")),
            amqp_url: format!("amqp://guest:guest@{}/{vhost}", backends.amqp_addr),
            name,
            vhost,
            graph,
            pbx,
            smtp_port,
            mail_server,
            maildir,
            logs,
            http,
            extra_env,
            metrics: Vec::new(),
            backends,
            services: std::sync::Mutex::new(Vec::new()),
            _smtp: smtp,
            _tmp: tmp,
        };
        for service in SERVICES {
            stack.start_service(service).await;
        }
        stack
    }

    /// The environment every usersync process of this stack gets.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.database_url.clone()),
            ("AMQP_URL", self.amqp_url.clone()),
            ("GRAPH_BASE_URL", format!("{}/v1.0", self.graph.url)),
            ("ENTRA_LOGIN_URL", self.graph.url.clone()),
            ("PBX_API_URL", self.pbx.url.clone()),
            ("PBX_API_TOKEN", PBX_TOKEN.to_owned()),
            ("SMTP_URL", format!("smtp://127.0.0.1:{}", self.smtp_port)),
            ("MAIL_FROM", "Usersync <noreply@usersync.test>".to_owned()),
            ("USERSYNC_SECRET_KEY", SECRET_KEY.to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("USERSYNC_CLOCK_FILE", self.clock_file().display().to_string()),
            // Two stacks run at once (one per core): capped pools keep both
            // well under PostgreSQL's default 100 connections. A test may set its own.
            ("DATABASE_POOL_SIZE", STACK_POOL_SIZE.to_owned()),
        ]
        .into_iter()
        .chain(self.extra_env.iter().cloned())
        .collect()
    }

    /// Starts one more replica of a service and waits until it is healthy.
    pub async fn start_service(&mut self, service: &str) {
        self.start_service_with(service, &[]).await;
    }

    /// Like [`Stack::start_service`], with more environment variables.
    pub async fn start_service_with(&mut self, service: &str, extra_env: &[(&str, &str)]) {
        let index = self.services.get_mut().expect("the services' lock").len();
        let log =
            std::fs::File::create(self.logs.join(format!("{service}-{index}.log"))).expect("a log file");
        let metrics_port = free_port();
        let child = Command::new(binary(service))
            .envs(self.env())
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {service}: {err}"));
        self.services.get_mut().expect("the services' lock").push(child);
        self.metrics.push((
            service.to_owned(),
            format!("http://127.0.0.1:{metrics_port}/metrics"),
        ));
        let url = format!("http://127.0.0.1:{metrics_port}/healthz");
        let http = self.http.clone();
        let logs = self.logs.clone();
        wait_for(
            &format!("{service} to be healthy (logs in {})", logs.display()),
            Duration::from_secs(60),
            || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    http.get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    /// Starts a `usersync-api` replica (after the services, so its index
    /// follows theirs), waits until it is healthy, and hands out its base URL
    /// with an operator token (scope `all`).
    pub async fn start_api(&mut self) -> Api {
        self.start_api_with(&[]).await
    }

    /// Like [`Stack::start_api`], with more environment variables (`API_BODY_LIMIT`, …).
    pub async fn start_api_with(&mut self, extra_env: &[(&str, &str)]) -> Api {
        self.start_api_at(free_port(), extra_env).await
    }

    /// Like [`Stack::start_api_with`], on a port chosen before the stack
    /// started: the fetcher must know the API's address (`USERSYNC_PUBLIC_URL`)
    /// from its start, to register it with Graph.
    pub async fn start_api_at(&mut self, port: u16, extra_env: &[(&str, &str)]) -> Api {
        let url = format!("http://127.0.0.1:{port}");
        let index = self.services.get_mut().expect("the services' lock").len();
        let log =
            std::fs::File::create(self.logs.join(format!("usersync-api-{index}.log"))).expect("a log file");
        let child = Command::new(binary("usersync-api"))
            .envs(self.env())
            .env("API_ADDR", format!("127.0.0.1:{port}"))
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting usersync-api: {err}"));
        self.services.get_mut().expect("the services' lock").push(child);
        self.metrics
            .push(("usersync-api".to_owned(), format!("{url}/metrics")));
        let healthz = format!("{url}/healthz");
        let http = self.http.clone();
        wait_for(
            &format!("usersync-api to be healthy (logs in {})", self.logs.display()),
            Duration::from_secs(60),
            || {
                let http = http.clone();
                let healthz = healthz.clone();
                async move {
                    http.get(&healthz)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
        let token = self.api_token(None).await.1;
        Api { url, token }
    }

    /// A new API token from `usersync api-token create` (`None`: `--all`): (id, token).
    pub async fn api_token(&self, tenant: Option<&str>) -> (String, String) {
        let args: Vec<&str> = match tenant {
            Some(id) => vec!["api-token", "create", "--tenant", id, "--json"],
            None => vec!["api-token", "create", "--all", "--json"],
        };
        let created = self.cli_json(&args).await;
        (
            created["id"].as_str().expect("a token id").to_owned(),
            created["token"].as_str().expect("a token").to_owned(),
        )
    }

    /// Runs the operator CLI with this stack's environment; returns (success, stdout, stderr).
    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut command = Command::new(binary("usersync"));
        command
            .args(args)
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("running usersync");
        if let Some(text) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(text.as_bytes()).await.expect("writing stdin");
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().await.expect("usersync output");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs the CLI and parses its JSON output; panics with stderr when it fails.
    pub async fn cli_json(&self, args: &[&str]) -> Value {
        let (ok, stdout, stderr) = self.cli(args, None).await;
        assert!(ok, "usersync {args:?} failed: {stderr}");
        serde_json::from_str(&stdout)
            .unwrap_or_else(|err| panic!("usersync {args:?} printed no JSON ({err}): {stdout}"))
    }

    pub async fn graph_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        call(&self.http, method, &format!("{}{path}", self.graph.url), body).await
    }

    pub async fn pbx_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        call(&self.http, method, &format!("{}{path}", self.pbx.url), body).await
    }

    /// Every message the SMTP server has received, raw (aiosmtpd only).
    pub fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.aiosmtpd_maildir().join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .collect()
    }

    /// How many mails the SMTP server has received, without reading them
    /// (aiosmtpd moves a mail into `new/` whole, once written).
    pub fn mail_count(&self) -> u64 {
        std::fs::read_dir(self.aiosmtpd_maildir().join("new")).map_or(0, |entries| entries.count() as u64)
    }
}

impl Stack {
    /// aiosmtpd's Maildir; a stack on smtp-sink has none (read its dump with [`sink`]).
    pub fn aiosmtpd_maildir(&self) -> &Path {
        assert_eq!(
            self.mail_server,
            MailServer::Aiosmtpd,
            "stack {} sends to smtp-sink: read its dump with usersync_e2e::sink",
            self.name
        );
        &self.maildir
    }

    /// SIGKILLs the service process started `index`-th (the four of
    /// [`SERVICES`] are 0 to 3, replicas follow) and waits until it is gone.
    pub async fn kill_service(&mut self, index: usize) {
        let child = &mut self.services.get_mut().expect("the services' lock")[index];
        child.kill().await.expect("killing the service");
    }

    /// SIGTERMs the service process started `index`-th (a graceful stop) and
    /// returns its exit status, failing the test if it has not exited within `deadline`.
    pub async fn terminate_service(&mut self, index: usize, deadline: Duration) -> std::process::ExitStatus {
        let child = &mut self.services.get_mut().expect("the services' lock")[index];
        let pid = child.id().expect("the service is still running");
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill(2) only sends a signal, to a child this stack started and still owns.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            sent,
            0,
            "sending SIGTERM to service {index}: {}",
            std::io::Error::last_os_error()
        );
        tokio::time::timeout(deadline, child.wait())
            .await
            .unwrap_or_else(|_| panic!("service {index} did not exit within {deadline:?} of SIGTERM"))
            .expect("waiting for the service")
    }

    /// Each service process started, in start order, with its pid while it runs
    /// (the benchmark reads their peak memory from `/proc`).
    pub fn service_pids(&self) -> Vec<(String, Option<u32>)> {
        let services = self.services.lock().expect("the services' lock");
        services
            .iter()
            .zip(&self.metrics)
            .map(|(child, (name, _))| (name.clone(), child.id()))
            .collect()
    }

    /// The service processes that ended on their own (not killed by the
    /// test), as `name-index: status`: a wait can stop early when one did.
    pub fn exited_services(&self) -> Vec<String> {
        let mut services = self.services.lock().expect("the services' lock");
        services
            .iter_mut()
            .zip(&self.metrics)
            .enumerate()
            .filter_map(|(index, (child, (name, _)))| {
                let status = child.try_wait().ok()??;
                // A SIGKILL from kill_service is the test's doing.
                use std::os::unix::process::ExitStatusExt;
                (status.signal() != Some(9)).then(|| format!("{name}-{index}: {status}"))
            })
            .collect()
    }
}

impl Drop for Stack {
    /// Stops the processes and removes the vhost (quorum queues hold memory),
    /// and the database unless the test failed: then it is kept for a look.
    fn drop(&mut self) {
        let services = match self.services.get_mut() {
            Ok(services) => services,
            Err(poisoned) => poisoned.into_inner(),
        };
        for child in services {
            let _ = child.start_kill();
        }
        remove_resources_on(
            &self.backends,
            &self.vhost,
            &format!("usersync_e2e_{}", self.name),
            &self.logs,
        );
    }
}

/// A test's teardown: removes its vhost (quorum queues hold memory) and its
/// database, unless the test is failing: then the database is kept for a look.
pub fn remove_test_resources(vhost: &str, database: &str, logs: &Path) {
    remove_resources_on(&Backends::shared(), vhost, database, logs);
}

fn remove_resources_on(backends: &Backends, vhost: &str, database: &str, logs: &Path) {
    let _ = std::process::Command::new("curl")
        .args(["-fsS", "-o", "/dev/null", "-u", "guest:guest", "-X", "DELETE"])
        .arg(format!("{}/vhosts/{vhost}", backends.rabbitmq_api))
        .status();
    if std::thread::panicking() {
        eprintln!(
            "kept database {database} and logs in {} for inspection",
            logs.display()
        );
        return;
    }
    let _ = std::process::Command::new("psql")
        .arg(&backends.postgres_admin_url)
        .args([
            "-qc",
            &format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
        ])
        .status();
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("{method} {url}: {err}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{method} {url}: {status} {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// The workspace's `target/` folder (logs of the e2e tests go below it).
pub fn workspace_target() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors().nth(3).expect("target/").to_path_buf()
}

async fn create_vhost_on(http: &reqwest::Client, api: &str, vhost: &str) {
    let put = |path: String, body: Value| {
        http.put(format!("{api}{path}"))
            .basic_auth("guest", Some("guest"))
            .json(&body)
            .send()
    };
    let response = put(format!("/vhosts/{vhost}"), json!({}))
        .await
        .unwrap_or_else(|err| {
            panic!(
                "the RabbitMQ management API at {api} (rabbitmq-plugins enable rabbitmq_management): {err}"
            )
        });
    assert!(
        response.status().is_success(),
        "creating vhost {vhost}: {}",
        response.status()
    );
    let response = put(
        format!("/permissions/{vhost}/guest"),
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await
    .expect("setting vhost permissions");
    assert!(
        response.status().is_success(),
        "permissions on {vhost}: {}",
        response.status()
    );
}

/// Debian's aiosmtpd: a real SMTP server that stores what it receives in a Maildir.
async fn start_smtp(port: u16, maildir: &Path, logs: &Path) -> Child {
    let log = std::fs::File::create(logs.join("smtp.log")).expect("a log file");
    let python = std::env::var("USERSYNC_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned());
    let child = Command::new(&python)
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(maildir)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| {
            panic!("starting aiosmtpd with {python} (apt-get install python3-aiosmtpd): {err}")
        });
    wait_for(
        "the SMTP server to listen",
        Duration::from_secs(30),
        || async move { TcpStream::connect(("127.0.0.1", port)).ok() },
    )
    .await;
    child
}

impl Stack {
    /// The file every process of this stack reads "now" from (see `usersync_runtime::clock`);
    /// absent until a test sets the time.
    pub fn clock_file(&self) -> PathBuf {
        self._tmp.path().join("clock")
    }

    /// Moves the clock of every process of the stack to `rfc3339`.
    pub fn set_clock(&self, rfc3339: &str) {
        write_clock_file(&self.clock_file(), rfc3339);
    }
}

/// Sets the instant in a clock file (see `usersync_runtime::clock`) in one
/// step: written beside it and renamed over it. A file truncated and then
/// written could be read empty in between, and a process that reads no
/// instant takes the system's time, years away from the test's.
pub fn write_clock_file(path: &Path, rfc3339: &str) {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".part");
    std::fs::write(&partial, rfc3339).expect("writing the clock file");
    std::fs::rename(&partial, path).expect("placing the clock file");
}

/// A RabbitMQ vhost for a test that starts only some services itself (the
/// caller deletes it when done, as [`Stack`] does).
pub async fn test_vhost(http: &reqwest::Client, vhost: &str) {
    create_vhost_on(http, RABBITMQ_API, vhost).await;
}

impl Stack {
    /// Runs one SQL query in the stack's database; returns psql's unaligned
    /// rows (`|` between columns, one row a line).
    pub fn sql(&self, query: &str) -> String {
        let output = std::process::Command::new("psql")
            .arg(&self.database_url)
            .args(["-XAtqc", query])
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "psql {query}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}
