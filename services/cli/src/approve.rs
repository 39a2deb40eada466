//! `usersync approve-deletions ID`: lets the next run carry out the deletions
//! the mass-deletion guard held back, and asks for that run now.

use usersync_bus::Bus;
use usersync_runtime::amqp_url;
use usersync_store::Store;

pub async fn approve_deletions(store: &Store, id: &str) -> anyhow::Result<()> {
    let bus = Bus::connect(&amqp_url(), "usersync-cli").await?;
    let approval = usersync_admin::approve::approve_deletions(store, &bus, id).await?;
    println!("{}", approval.message);
    Ok(())
}
