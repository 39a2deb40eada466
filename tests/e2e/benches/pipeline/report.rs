//! The table, the machine it ran on, and docs/performance.md.

use std::{fmt::Write, path::Path, process::Command};

/// One line of the table. `ratio` is measured / floor where a floor exists.
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub floor: String,
    pub ratio: Option<f64>,
    pub target: String,
    /// None: printed for context, no target.
    pub pass: Option<bool>,
    /// `--quick` fails when `ratio` is above this.
    pub guard: f64,
}

impl Row {
    pub fn new(figure: impl Into<String>, target: impl Into<String>) -> Row {
        Row {
            figure: figure.into(),
            measured: String::new(),
            floor: "—".into(),
            ratio: None,
            target: target.into(),
            pass: None,
            guard: crate::QUICK_GUARD,
        }
    }

    /// A figure that could not be measured, and why: always a miss.
    pub fn missed(mut self, why: impl Into<String>) -> Row {
        self.measured = format!("not measured: {}", why.into());
        self.pass = Some(false);
        self
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| figure | measured | floor | ratio | target | pass |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for row in rows {
        let ratio = row.ratio.map_or("—".to_owned(), |r| format!("{r:.2}×"));
        let pass = match row.pass {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "context",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {} | {pass} |",
            row.figure, row.measured, row.floor, row.target
        );
    }
    out
}

/// CPU, cores, memory, OS, the servers' versions and the date, as a list.
pub async fn machine(http: &reqwest::Client, rabbitmq_api: &str, postgres_url: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os = os_release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = output("uname", &["-r"]);
    let postgres = output("psql", &[postgres_url, "-XAtqc", "SHOW server_version"]);
    let rabbitmq = match http
        .get(format!("{rabbitmq_api}/overview"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
    {
        Ok(reply) => reply
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|overview| overview["rabbitmq_version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into()),
        Err(_) => "unknown".into(),
    };
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    format!(
        "- CPU: {cpu}, {cores} cores\n- memory: {:.1} GiB\n- OS: {os}, Linux {kernel}\n\
         - PostgreSQL {postgres}, RabbitMQ {rabbitmq}\n- date: {date}\n",
        memory_kib / 1024.0 / 1024.0
    )
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Everything below this line in docs/performance.md is written by hand and
/// kept when the benchmark writes the file again.
const NOTES_MARKER: &str = "<!-- Written by hand below this line; scripts/bench keeps it. -->";

/// Writes the generated part of the report to `path`, keeping the hand-written notes.
pub fn write(path: &Path, generated: &str) -> std::io::Result<()> {
    let kept = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.split_once(NOTES_MARKER).map(|(_, notes)| notes.to_owned()))
        .unwrap_or_else(|| "\n".into());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{generated}\n{NOTES_MARKER}{kept}"))
}
