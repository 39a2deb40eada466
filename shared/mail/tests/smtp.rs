//! Sending through a real SMTP server (Debian's `python3-aiosmtpd`) when the
//! machine has one, and the error classes of a failed send.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use usersync_mail::{MailConfig, MailError, Mailer, OutgoingMail, DEFAULT_SMTP_CONNECTIONS};

const PYTHON: &str = "/usr/bin/python3";
const FROM: &str = "Usersync <noreply@localhost>";

/// Stops the SMTP server this test started, even when an assertion fails.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn aiosmtpd_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A port free now and not given to another test of this binary: tests
/// run at once, and the kernel may hand a just-released port out again, so
/// one test's server could fail to bind and the test talk to another's.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `check` until it yields a value or the deadline passes.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh aiosmtpd with `handler` (see [`start_aiosmtpd`]) writing to a
/// Maildir in a temp dir, and a mailer with `connections` sending to it.
fn mailer_with_server(handler: &str, connections: usize) -> (ServerProcess, tempfile::TempDir, Mailer) {
    assert!(
        aiosmtpd_available(),
        "python3-aiosmtpd is not installed: run scripts/services-up (or apt-get install -y python3-aiosmtpd)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start_aiosmtpd(port, handler, &dir.path().join("Maildir"));
    let mailer = Mailer::new(&MailConfig {
        smtp_url: format!("smtp://127.0.0.1:{port}"),
        from: FROM.into(),
        connections,
    })
    .unwrap();
    (server, dir, mailer)
}

/// aiosmtpd with `handler`, aiosmtpd's own or one of the project's
/// (`tests/smtp/usersync_smtp.py`).
fn start_aiosmtpd(port: u16, handler: &str, maildir: &Path) -> ServerProcess {
    let project_handlers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/smtp");
    let child = Command::new(PYTHON)
        .env("PYTHONPATH", project_handlers)
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", handler])
        .arg(maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = ServerProcess(child);
    wait_for("the SMTP server to listen", Duration::from_secs(15), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    server
}

fn delivered_files(maildir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(maildir.join("new")) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The unfolded value of a header in a raw message, if present.
fn header(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next().unwrap_or(raw);
    let head = head.split("\n\n").next().unwrap_or(head);
    let mut lines = head.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.eq_ignore_ascii_case(name) {
            let mut value = value.trim().to_string();
            while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            }
            return Some(value);
        }
    }
    None
}

/// The Subject as Python's mail parser decodes it: an independent RFC 2047 check.
fn decoded_subject(message_file: &Path) -> String {
    let script = "import sys, email.header as h, email; \
        m = email.message_from_file(open(sys.argv[1], encoding='ascii')); \
        sys.stdout.write(str(h.make_header(h.decode_header(m['Subject']))))";
    let output = Command::new(PYTHON)
        .args(["-c", script])
        .arg(message_file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn welcome_mail(to: &str) -> OutgoingMail {
    OutgoingMail {
        message_id: "created:acme:u1".into(),
        to: to.into(),
        subject: "Välkommen".into(),
        text: "Hej Åsa!\n\nDitt nummer är +46812345678.\n".into(),
        html: "<p>Hej Åsa!</p>".into(),
    }
}

#[tokio::test]
async fn sends_a_complete_message_to_a_real_smtp_server() {
    let (_server, dir, mailer) = mailer_with_server("aiosmtpd.handlers.Mailbox", DEFAULT_SMTP_CONNECTIONS);
    let maildir = dir.path().join("Maildir");

    mailer
        .send(&welcome_mail("Åsa Öberg <asa@acme.example>"))
        .await
        .unwrap();

    let file = wait_for("the message in Maildir/new", Duration::from_secs(10), || {
        delivered_files(&maildir).pop()
    });
    let raw = std::fs::read_to_string(&file).unwrap();

    let subject = header(&raw, "Subject").expect("Subject header");
    assert!(subject.is_ascii(), "subject must be encoded: {subject}");
    assert!(subject.to_ascii_lowercase().starts_with("=?utf-8?"), "{subject}");
    assert!(subject.ends_with("?="), "{subject}");
    assert_eq!(decoded_subject(&file), "Välkommen");
    assert_eq!(header(&raw, "From").as_deref(), Some(FROM));
    assert_eq!(
        header(&raw, "Message-ID").as_deref(),
        Some("<created:acme:u1@usersync>")
    );
    assert!(
        header(&raw, "Date").is_some_and(|date| date.contains(':')),
        "{raw}"
    );
    let content_type = header(&raw, "Content-Type").expect("Content-Type header");
    assert!(
        content_type.starts_with("multipart/alternative"),
        "{content_type}"
    );
    assert!(raw.contains("text/plain"), "{raw}");
    assert!(raw.contains("text/html"), "{raw}");
    assert_eq!(delivered_files(&maildir).len(), 1);
}

#[tokio::test]
async fn closed_port_is_a_temporary_failure() {
    let mailer = Mailer::new(&MailConfig {
        smtp_url: format!("smtp://127.0.0.1:{}", free_port()),
        from: FROM.into(),
        connections: DEFAULT_SMTP_CONNECTIONS,
    })
    .unwrap();
    let err = mailer.send(&welcome_mail("asa@acme.example")).await.unwrap_err();
    assert!(matches!(err, MailError::Temporary(_)), "{err:?}");
}

#[tokio::test]
async fn invalid_recipient_is_a_permanent_failure() {
    let mailer = Mailer::new(&MailConfig {
        smtp_url: format!("smtp://127.0.0.1:{}", free_port()),
        from: FROM.into(),
        connections: DEFAULT_SMTP_CONNECTIONS,
    })
    .unwrap();
    let err = mailer.send(&welcome_mail("not an address")).await.unwrap_err();
    assert!(matches!(err, MailError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn bad_configuration_is_refused_up_front() {
    let bad_url = Mailer::new(&MailConfig {
        smtp_url: "gopher://mail.example".into(),
        from: FROM.into(),
        connections: DEFAULT_SMTP_CONNECTIONS,
    });
    assert!(matches!(bad_url, Err(MailError::Config(_))));
    let bad_from = Mailer::new(&MailConfig {
        smtp_url: "smtp://127.0.0.1:25".into(),
        from: "nobody".into(),
        connections: DEFAULT_SMTP_CONNECTIONS,
    });
    assert!(matches!(bad_from, Err(MailError::Config(_))));
}

#[tokio::test]
async fn debug_output_hides_smtp_credentials() {
    let mailer = Mailer::new(&MailConfig {
        smtp_url: "smtps://user:hunter2@mail.example:465".into(),
        from: FROM.into(),
        connections: DEFAULT_SMTP_CONNECTIONS,
    })
    .unwrap();
    let printed = format!("{mailer:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("noreply@localhost"));
}

#[tokio::test]
async fn a_transaction_dropped_before_its_data_sends_nothing_and_is_not_reused() {
    let (_server, dir, mailer) = mailer_with_server("aiosmtpd.handlers.Mailbox", DEFAULT_SMTP_CONNECTIONS);
    let maildir = dir.path().join("Maildir");
    // Up to the server's 354: the session waits for data that never comes.
    drop(mailer.prepare(&welcome_mail("asa@acme.example")).await.unwrap());
    let second = OutgoingMail {
        message_id: "created:acme:u2".into(),
        ..welcome_mail("bo@acme.example")
    };
    mailer.send(&second).await.unwrap();

    let file = wait_for("the message in Maildir/new", Duration::from_secs(10), || {
        delivered_files(&maildir).pop()
    });
    let raw = std::fs::read_to_string(&file).unwrap();
    // Had the dropped session been reused, its DATA would have swallowed this mail's commands.
    assert_eq!(
        header(&raw, "Message-ID").as_deref(),
        Some("<created:acme:u2@usersync>"),
        "{raw}"
    );
    assert_eq!(delivered_files(&maildir).len(), 1);
}

/// How a scripted peer saw the envelope of the one mail it took.
#[derive(Debug)]
struct EnvelopeSeen {
    /// MAIL FROM, RCPT TO and DATA, in the order they came.
    commands: Vec<String>,
    /// Whether a command arrived while one before it was still unanswered
    /// (always, once a pipelined envelope is answered).
    sent_ahead: bool,
}

/// A peer that speaks just enough SMTP to show how a client sends the
/// envelope of one mail. Offering PIPELINING, it answers MAIL FROM and RCPT
/// TO only once DATA has come too, so a client that waits for an answer
/// before its next command never gets one.
fn envelope_peer(offer_pipelining: bool) -> (u16, std::thread::JoinHandle<EnvelopeSeen>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(b"220 peer ESMTP\r\n").unwrap();
        let mut seen = EnvelopeSeen {
            commands: Vec::new(),
            sent_ahead: false,
        };
        let mut unanswered = Vec::new();
        let mut buffer = Vec::new();
        let mut in_data = false;
        loop {
            let mut chunk = [0; 4096];
            let read = stream.read(&mut chunk).unwrap();
            assert!(read > 0, "the client closed the session mid-mail: {seen:?}");
            buffer.extend_from_slice(&chunk[..read]);
            if in_data {
                if buffer.ends_with(b"\r\n.\r\n") {
                    stream.write_all(b"250 2.0.0 queued\r\n").unwrap();
                    return seen;
                }
                continue;
            }
            while let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(buffer.drain(..end + 2).collect()).unwrap();
                let verb = line[..4.min(line.len())].to_ascii_uppercase();
                if !unanswered.is_empty() || (!offer_pipelining && !buffer.is_empty()) {
                    seen.sent_ahead = true;
                }
                match verb.as_str() {
                    "EHLO" if offer_pipelining => stream
                        .write_all(b"250-peer\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                        .unwrap(),
                    "EHLO" => stream.write_all(b"250-peer\r\n250 8BITMIME\r\n").unwrap(),
                    "MAIL" | "RCPT" => {
                        seen.commands.push(line.trim_end().to_owned());
                        if offer_pipelining {
                            unanswered.push("250 2.1.0 ok\r\n");
                        } else {
                            stream.write_all(b"250 2.1.0 ok\r\n").unwrap();
                        }
                    }
                    "DATA" => {
                        seen.commands.push(line.trim_end().to_owned());
                        for answer in unanswered.drain(..) {
                            stream.write_all(answer.as_bytes()).unwrap();
                        }
                        stream.write_all(b"354 go ahead\r\n").unwrap();
                        in_data = true;
                    }
                    _ => stream.write_all(b"502 5.5.2 not here\r\n").unwrap(),
                }
            }
        }
    });
    (port, peer)
}

/// Sends a welcome mail to asa@acme.example; `stuck` says why it did not
/// end within 15 s.
async fn send_within_15_s(mailer: &Mailer, stuck: &str) {
    tokio::time::timeout(
        Duration::from_secs(15),
        mailer.send(&welcome_mail("asa@acme.example")),
    )
    .await
    .expect(stuck)
    .unwrap();
}

/// Sends one mail to an [`envelope_peer`] and returns what it saw; the send
/// must end within 15 s.
async fn send_to_envelope_peer(offer_pipelining: bool) -> EnvelopeSeen {
    let (port, peer) = envelope_peer(offer_pipelining);
    let mailer = Mailer::new(&MailConfig {
        smtp_url: format!("smtp://127.0.0.1:{port}"),
        from: FROM.into(),
        connections: 1,
    })
    .unwrap();
    send_within_15_s(
        &mailer,
        "the send did not end: with PIPELINING offered, the client waited for an answer to MAIL FROM before sending RCPT TO and DATA",
    )
    .await;
    peer.join().unwrap()
}

#[tokio::test]
async fn a_server_that_offers_pipelining_gets_the_envelope_in_one_write() {
    // The peer answers nothing before DATA: a send that ends was pipelined.
    let seen = send_to_envelope_peer(true).await;
    assert_eq!(
        seen.commands,
        [
            "MAIL FROM:<noreply@localhost>",
            "RCPT TO:<asa@acme.example>",
            "DATA"
        ],
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_server_that_does_not_offer_pipelining_gets_one_command_at_a_time() {
    let seen = send_to_envelope_peer(false).await;
    assert_eq!(seen.commands.len(), 3, "{seen:?}");
    assert!(
        !seen.sent_ahead,
        "a command came before the answer to the one before: {seen:?}"
    );
}

#[tokio::test]
async fn a_pipelined_envelope_with_a_refused_recipient_fails_for_good_and_the_next_mail_goes_out() {
    // Offers PIPELINING, and refuses `bounce...` at RCPT TO. One connection:
    // the next mail goes out only once the refused one's session has left
    // the pool.
    let (_server, dir, mailer) = mailer_with_server("usersync_smtp.Scripted", 1);
    let maildir = dir.path().join("Maildir");

    let refused = mailer
        .send(&welcome_mail("bounce@acme.example"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, MailError::Permanent(ref why) if why.contains("550")),
        "{refused:?}"
    );
    send_within_15_s(&mailer, "the next mail waited for the refused one's connection").await;

    let file = wait_for("the message in Maildir/new", Duration::from_secs(10), || {
        delivered_files(&maildir).pop()
    });
    let raw = std::fs::read_to_string(&file).unwrap();
    assert_eq!(header(&raw, "To").as_deref(), Some("asa@acme.example"), "{raw}");
    assert_eq!(delivered_files(&maildir).len(), 1);
}
