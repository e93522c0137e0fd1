//! Accounts and their API tokens as stored.

use crate::db;
use vdc_schema::id::AccountId;

/// Locks the account's row as the first write of a transaction: decisions over all of
/// an account's resources of a kind (no two networks overlap) run one after the other.
pub async fn lock(tx: &mut db::Tx<'_>, account: &AccountId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE accounts SET lock_seq = lock_seq + 1 WHERE id = $1")
        .bind(account.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
