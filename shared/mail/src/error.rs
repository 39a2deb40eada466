/// Why a mail could not be rendered or sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// 4xx reply, connection refused/reset, timeouts: retry later.
    #[error("temporary mail failure: {0}")]
    Temporary(String),
    /// The message data went to the server but no reply came (the connection
    /// broke or timed out after it): the server may have the mail, so it is
    /// not sent again.
    #[error("the message data was sent but the server's reply never came: {0}")]
    Unconfirmed(String),
    /// 5xx reply, invalid address: do not retry.
    #[error("permanent mail failure: {0}")]
    Permanent(String),
    /// Bad SMTP URL or sender, a broken template, or a context it cannot render.
    #[error("mail configuration: {0}")]
    Config(String),
}
