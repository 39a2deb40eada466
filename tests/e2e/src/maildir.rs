//! The stack's received mails decoded (headers, text and HTML parts) by
//! tests/smtp/read_maildir.py: bodies are quoted-printable or base64 on the
//! wire, so a search of the raw files can miss what a reader sees.

use std::path::Path;

use serde_json::Value;

use crate::Stack;

impl Stack {
    /// Every received mail as read_maildir.py prints it: `to`, `subject`,
    /// `message_id`, `text`, `html`, ...
    pub fn decoded_mails(&self) -> Vec<Value> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../smtp/read_maildir.py");
        let output = std::process::Command::new("python3")
            .arg(&script)
            .arg(self.aiosmtpd_maildir())
            .output()
            .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
        assert!(
            output.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        match serde_json::from_slice(&output.stdout) {
            Ok(Value::Array(mails)) => mails,
            other => panic!("{} printed no JSON list: {other:?}", script.display()),
        }
    }
}
