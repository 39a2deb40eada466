//! The floor for the notifier's throughput: a plain client sending the same
//! rendered welcome mails (the bench's users, in Swedish) through the same
//! crate and connection pool to the same server, `--concurrency` at once,
//! with no database and no bus. Prints mails per second.
//!
//!   cargo run --release -p usersync-mail --example smtp_floor -- \
//!       --host 127.0.0.1 --port 1025 --count 10000 --concurrency 32 [--company "Acme AB"]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use usersync_mail::{Language, MailConfig, MailKind, Mailer, OutgoingMail, Templates};

struct Args {
    host: String,
    port: u16,
    count: usize,
    concurrency: usize,
    company: String,
}

fn args() -> Args {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 1025,
        count: 10_000,
        concurrency: 32,
        company: "Acme AB".into(),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{flag} {value:?} is not a number"))
        };
        match flag.as_str() {
            "--host" => args.host = value.clone(),
            "--port" => args.port = number() as u16,
            "--count" => args.count = number(),
            "--concurrency" => args.concurrency = number().max(1),
            "--company" => args.company = value.clone(),
            other => panic!("unknown flag {other}: --host, --port, --count, --concurrency, --company"),
        }
    }
    args
}

/// The welcome mail of the bench's user `i`, as the notifier renders it.
fn welcome(templates: &Templates, company: &str, i: usize) -> OutgoingMail {
    let context = json!({
        "first_name": "Användare", "surname": i.to_string(), "alias": format!("user{i}"),
        "pstn_fixed": format!("4681{i:07}"), "email": format!("user{i}@bench.example"),
        "company_name": company,
    });
    let rendered = templates
        .render(MailKind::Welcome, Language::Sv, &context)
        .expect("the built-in welcome template renders");
    OutgoingMail {
        message_id: format!("welcome.floor.bench-{i}"),
        to: format!("user{i}@bench.example"),
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    let templates = Arc::new(Templates::load(None).expect("the built-in templates"));
    let mailer = Mailer::new(&MailConfig {
        smtp_url: format!("smtp://{}:{}", args.host, args.port),
        from: "Usersync <noreply@bench.test>".into(),
        connections: args.concurrency,
    })
    .expect("the mailer");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (mailer, templates, next) = (mailer.clone(), Arc::clone(&templates), Arc::clone(&next));
            let (count, company) = (args.count, args.company.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    // Rendered per send, as the notifier does.
                    let mail = welcome(&templates, &company, i);
                    mailer.send(&mail).await.expect("the server takes the mail");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("a sender");
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} mails sent in {seconds:.1} s at concurrency {}: {:.0} mails/s",
        args.count,
        args.concurrency,
        args.count as f64 / seconds
    );
}
