use anyhow::Context;

use crate::{Result, Store};

impl Store {
    /// Whether a mail with this deterministic id was already sent.
    pub async fn mail_sent(&self, id: &str) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT 1 FROM sent_mails WHERE id = $1", &[&id])
            .await
            .context("checking sent mails")?;
        Ok(row.is_some())
    }

    pub async fn record_mail_sent(&self, id: &str, tenant_id: &str, recipient: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO sent_mails (id, tenant_id, recipient) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&id, &tenant_id, &recipient],
            )
            .await
            .context("recording a sent mail")?;
        Ok(())
    }
}
