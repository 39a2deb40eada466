//! Postfix's `smtp-sink`: a real SMTP server we did not write, one C process,
//! fast enough for scripts/bench's 200,000 welcome mails (aiosmtpd, the
//! tests' server, takes about 200 mails a second, so it, not the notifier,
//! would be what such a figure measures). It stores each mail in a file of
//! its own, `<dump>/<YYYYmmddHHMMSS>/<random hex>`: smtp-sink's lines
//! (`X-Client-Addr`, `X-Client-Proto`, `X-Helo-Args`, `X-Mail-Args`, one
//! `X-Rcpt-Args` per recipient, a three-line `Received` header), then the
//! message as sent, then an empty line, all in LF lines. The file is created
//! at MAIL FROM, named for that second, and closed before the reply to the
//! final dot.
//!
//! `scripts/services-up` unpacks it from Debian's postfix package into
//! `target/tools/postfix` (not installed: that would set up a mail system on
//! port 25) unless `/usr/sbin/smtp-sink` exists.

use std::{
    collections::HashMap,
    ffi::OsString,
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::free_port;

/// Sessions smtp-sink serves at once (`-m`, its default) and its listen
/// backlog: the notifier's pool (32) and the bench's floor (32) fit many times.
const MAX_SESSIONS: &str = "256";
/// A per-second folder whose modification time is this old gets no more
/// mails: its second is over.
const SETTLED: Duration = Duration::from_secs(2);

/// A running smtp-sink (a stack of [`crate::MailServer::SmtpSink`] holds
/// one too), killed when dropped.
pub struct SmtpSink {
    pub port: u16,
    /// Where it stores what it receives (see [`stored_mails`], [`DumpCounter`]).
    pub dump: PathBuf,
    _child: Child,
    _tmp: tempfile::TempDir,
}

impl SmtpSink {
    /// Starts smtp-sink on a free port, storing into a new temporary folder
    /// and logging to `log`; returns once it listens.
    pub async fn start(log: &Path) -> SmtpSink {
        SmtpSink::start_on(free_port(), log).await
    }

    /// As [`SmtpSink::start`], on `port`.
    pub async fn start_on(port: u16, log: &Path) -> SmtpSink {
        let tmp = dump_folder();
        let dump = tmp.path().join("dump");
        let child = start(port, &dump, log).await;
        SmtpSink {
            port,
            dump,
            _child: child,
            _tmp: tmp,
        }
    }
}

/// A new folder for a dump: in memory (`/dev/shm`) where the machine has
/// one with [`SHM_NEEDED`] free (a container's is 64 MB by default), else a
/// temporary folder. smtp-sink writes each mail to a file of its own, so on
/// the disk its speed followed the disk's (the floor 3,700 to 19,100 mails/s
/// in one day's runs, up to half the CPU time waiting for I/O), and its
/// writes shared the disk with the database's commits. A mail server of its
/// own would not share the database's disk.
fn dump_folder() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if free_bytes(shm).is_some_and(|free| free >= SHM_NEEDED) {
        if let Ok(folder) = tempfile::Builder::new().prefix("usersync-sink").tempdir_in(shm) {
            return folder;
        }
    }
    tempfile::tempdir().expect("a temp dir")
}

/// Room for the full bench's two dumps of 200,000 mails (a few KB each) with
/// plenty to spare.
const SHM_NEEDED: u64 = 4 << 30;

/// Bytes an unprivileged process may still write under `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(path).ok()?;
    Some(stats.f_bavail * stats.f_frsize)
}

/// Where smtp-sink is, and the folder of the libraries it needs when it was
/// unpacked rather than installed.
fn binary() -> (PathBuf, Option<PathBuf>) {
    let installed = PathBuf::from("/usr/sbin/smtp-sink");
    if installed.exists() {
        return (installed, None);
    }
    // Where scripts/services-up unpacks it: the workspace's target/tools.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/postfix");
    let unpacked = root.join("usr/sbin/smtp-sink");
    assert!(
        unpacked.exists(),
        "Postfix's smtp-sink is missing (neither /usr/sbin/smtp-sink nor {}): run scripts/services-up, \
         which unpacks it from Debian's postfix package",
        unpacked.display()
    );
    (unpacked, Some(root.join("usr/lib/postfix")))
}

/// Starts smtp-sink on 127.0.0.1:`port`, storing each mail under `dump`
/// (created) and logging to `log`; returns once it listens. As root it
/// runs as `nobody` (smtp-sink insists), so `dump` is made writable by
/// anyone and its parent (a temp dir, 0700) passable.
async fn start(port: u16, dump: &Path, log: &Path) -> Child {
    let (program, libraries) = binary();
    std::fs::create_dir_all(dump).expect("the sink's dump folder");
    // SAFETY: geteuid(2) only reads the process's effective user id.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::fs::set_permissions(dump, std::fs::Permissions::from_mode(0o777))
            .expect("opening the dump folder to nobody");
        let parent = dump.parent().expect("the dump folder's parent");
        let mode = std::fs::metadata(parent)
            .expect("the dump's parent")
            .permissions()
            .mode();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o011))
            .expect("letting nobody through to the dump folder");
    }
    let log_file = std::fs::File::create(log).expect("a log file");
    let mut command = Command::new(&program);
    if let Some(libraries) = libraries {
        command.env("LD_LIBRARY_PATH", libraries);
    }
    if root {
        command.args(["-u", "nobody"]);
    }
    // `/` ends the folder part: smtp-sink appends a random hex name.
    let template = format!("{}/%Y%m%d%H%M%S/", dump.display());
    let mut child = command
        .args(["-h", "usersync-bench", "-m", MAX_SESSIONS, "-d", &template])
        .arg(format!("127.0.0.1:{port}"))
        .arg(MAX_SESSIONS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", program.display()));
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "smtp-sink exited ({status}) before listening on port {port}: {}",
                std::fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "smtp-sink did not listen on port {port} within 30 s (log: {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// Counts the mails in a dump, cheaply enough to poll while 200,000 arrive
/// on a machine whose cores the notifier needs: the count of a per-second
/// folder whose second is over (2 s after its last change) is kept,
/// so a poll lists the top folder and only the last few seconds' folders.
/// A mail counts from its MAIL FROM (its file is created then): up to one a
/// session may still be on its way.
pub struct DumpCounter {
    dump: PathBuf,
    settled: HashMap<OsString, u64>,
    settled_mails: u64,
}

impl DumpCounter {
    pub fn new(dump: &Path) -> DumpCounter {
        DumpCounter {
            dump: dump.to_owned(),
            settled: HashMap::new(),
            settled_mails: 0,
        }
    }

    /// The mails in the dump now.
    pub fn count(&mut self) -> u64 {
        let Ok(folders) = std::fs::read_dir(&self.dump) else {
            return self.settled_mails;
        };
        let mut recent = 0;
        for folder in folders.flatten() {
            let name = folder.file_name();
            if self.settled.contains_key(&name) {
                continue;
            }
            // Its age is read before its files are: a folder already settled
            // then has them all.
            let settled = folder
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age >= SETTLED));
            let mails = std::fs::read_dir(folder.path()).map_or(0, |files| files.count() as u64);
            if settled {
                self.settled.insert(name, mails);
                self.settled_mails += mails;
            } else {
                recent += mails;
            }
        }
        self.settled_mails + recent
    }
}

/// One mail as smtp-sink stored it, its lines taken off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMail {
    /// When smtp-sink finished writing it (the file's modification time):
    /// just before its 250 to the final dot.
    pub stored_at: SystemTime,
    /// The envelope: MAIL FROM's address (`None` for `<>`) and each RCPT TO's.
    pub from: Option<String>,
    pub to: Vec<String>,
    /// The message as the client sent it before the final `CRLF . CRLF`, in
    /// CRLF lines, dot-stuffing undone: what lettre's `send` takes to send it again.
    pub message: String,
}

/// Every mail in the dump. A file still being written (MAIL FROM seen, the
/// final dot not yet) is read again, for up to `wait`.
pub fn stored_mails(dump: &Path, wait: Duration) -> anyhow::Result<Vec<StoredMail>> {
    let mut pending = Vec::new();
    for folder in std::fs::read_dir(dump).with_context(|| format!("reading {}", dump.display()))? {
        for file in std::fs::read_dir(folder?.path())? {
            pending.push(file?.path());
        }
    }
    let mut mails = Vec::with_capacity(pending.len());
    let started = Instant::now();
    loop {
        let mut unfinished = Vec::new();
        for path in pending {
            let stored_at = std::fs::metadata(&path)?.modified()?;
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            match parse(&text).with_context(|| format!("{}", path.display()))? {
                Some((from, to, message)) => mails.push(StoredMail {
                    stored_at,
                    from,
                    to,
                    message,
                }),
                None => unfinished.push(path),
            }
        }
        if unfinished.is_empty() {
            return Ok(mails);
        }
        if started.elapsed() >= wait {
            bail!(
                "{} mails in {} still unfinished after {wait:?}, e.g. {}",
                unfinished.len(),
                dump.display(),
                unfinished[0].display()
            );
        }
        pending = unfinished;
        std::thread::sleep(Duration::from_millis(100));
    }
}

type Parsed = (Option<String>, Vec<String>, String);

/// A dump file's envelope and message; `None` while it is unfinished. A
/// finished one ends with the line break before the final dot and the one
/// after it (smtp-sink keeps every byte but CRs and that dot).
fn parse(text: &str) -> anyhow::Result<Option<Parsed>> {
    let Some(text) = text.strip_suffix("\n\n") else {
        return Ok(None);
    };
    let (mut from, mut to) = (None, Vec::new());
    let mut lines = text.split('\n');
    loop {
        let Some(line) = lines.next() else {
            bail!("no Received header from smtp-sink");
        };
        if let Some(args) = line.strip_prefix("X-Mail-Args: ") {
            from = Some(address(args)?);
        } else if let Some(args) = line.strip_prefix("X-Rcpt-Args: ") {
            to.extend(address(args)?);
        } else if line.starts_with("Received: ") {
            break;
        } else if !["X-Client-Addr: ", "X-Client-Proto: ", "X-Helo-Args: "]
            .iter()
            .any(|prefix| line.starts_with(prefix))
        {
            bail!("{line:?} is not one of smtp-sink's lines");
        }
    }
    let Some(from) = from else {
        bail!("no X-Mail-Args line");
    };
    // The Received header's continuation lines are smtp-sink's too.
    let message = lines
        .skip_while(|line| line.starts_with('\t'))
        .collect::<Vec<_>>()
        .join("\r\n");
    Ok(Some((from, to, message)))
}

/// The address of `<address> [parameters]`; `None` for `<>`.
fn address(args: &str) -> anyhow::Result<Option<String>> {
    let Some(inner) = args.strip_prefix('<').and_then(|rest| rest.split_once('>')) else {
        bail!("{args:?} is not <address>");
    };
    Ok((!inner.0.is_empty()).then(|| inner.0.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = "X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: [127.0.0.1]\n\
        X-Mail-Args: <noreply@usersync.test> BODY=8BITMIME\nX-Rcpt-Args: <a@b.example>\n\
        X-Rcpt-Args: <c@d.example>\nReceived: from [127.0.0.1] ([127.0.0.1])\n\
        \tby usersync-bench (smtp-sink) with ESMTP id 01b2189b;\n\tSun,  6 Dec 2026 21:12:26 +0000 (UTC)\n\
        Subject: hi\nFrom: x@y\n\nline1\n.dotline\nend\n\n";

    #[test]
    fn a_stored_mail_is_its_envelope_and_the_message_as_sent() {
        let (from, to, message) = parse(STORED).unwrap().unwrap();
        assert_eq!(from.as_deref(), Some("noreply@usersync.test"));
        assert_eq!(to, ["a@b.example", "c@d.example"]);
        assert_eq!(
            message,
            "Subject: hi\r\nFrom: x@y\r\n\r\nline1\r\n.dotline\r\nend"
        );
    }

    #[test]
    fn a_mail_still_being_written_is_unfinished() {
        let cut = &STORED[..STORED.len() - 1];
        assert_eq!(parse(cut).unwrap(), None);
        assert_eq!(parse("X-Client-Addr: 127.0.0.1\n").unwrap(), None);
    }

    #[test]
    fn a_file_not_from_smtp_sink_is_an_error() {
        assert!(parse("Subject: hi\n\nbody\n\n").is_err());
    }
}
