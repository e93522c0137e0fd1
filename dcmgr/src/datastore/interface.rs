//! Interfaces (vifs) as stored, with their security group memberships.

use crate::db;

/// The interfaces of an instance, in position order.
pub async fn ids_of_instance(tx: &mut db::Tx<'_>, instance: &str) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as("SELECT id FROM vifs WHERE instance_id = $1 ORDER BY position")
        .bind(instance)
        .fetch_all(&mut **tx)
        .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}
