//! `usersync approve-deletions ID`: lets the next run carry out the deletions
//! the mass-deletion guard held back, and asks for that run now.

use usersync_store::Store;

pub async fn approve_deletions(store: &Store, id: &str) -> anyhow::Result<()> {
    store.require_tenant(id, None).await?;
    let held = store.held_deletions(id).await?;
    if held == 0 {
        // An approval left lying around would wave through a later mass deletion.
        println!("no deletions of {id} are held: nothing to approve");
        return Ok(());
    }
    store.approve_deletions(id).await?;
    println!(
        "approved: the next run of {id} deletes the users the guard held ({held} held now); \
         users back in the directory by then are kept"
    );
    crate::operate::resync(store, id, false, None).await?;
    Ok(())
}
