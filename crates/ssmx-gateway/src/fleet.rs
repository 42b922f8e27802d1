//! The fleet's life cycle in the gateway's SQLite database: activations listed and deleted,
//! managed instances deregistered (RUNCOMMAND.md §5).

use std::time::SystemTime;

use rusqlite::params;

use crate::store::{from_millis, Store, StoreError};

/// Tables of this module, created with the store's. A deleted activation keeps its row (the
/// instances it registered refer to it) and is listed here.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deleted_activations (
    activation_id TEXT PRIMARY KEY REFERENCES activations(activation_id)
);
"#;

/// An activation as DescribeActivations reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivationRecord {
    /// Its id.
    pub activation_id: String,
    /// Free text.
    pub description: String,
    /// Name given to the instances it registers.
    pub default_instance_name: String,
    /// Informational IAM role.
    pub iam_role: String,
    /// Registrations allowed.
    pub registration_limit: u32,
    /// Registrations made.
    pub registrations: u32,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it stops registering.
    pub expires_at: SystemTime,
}

impl Store {
    /// Activations not deleted, oldest first.
    pub fn activations(&self) -> Result<Vec<ActivationRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT activation_id, description, default_instance_name, iam_role, registration_limit, registrations, created_at, expires_at
             FROM activations
             WHERE activation_id NOT IN (SELECT activation_id FROM deleted_activations)
             ORDER BY created_at, activation_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ActivationRecord {
                activation_id: r.get(0)?,
                description: r.get(1)?,
                default_instance_name: r.get(2)?,
                iam_role: r.get(3)?,
                registration_limit: r.get(4)?,
                registrations: r.get(5)?,
                created_at: from_millis(r.get(6)?),
                expires_at: from_millis(r.get(7)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes an activation: it registers nothing more; instances it registered stay. False
    /// when there is no such activation (or it was deleted before).
    pub fn delete_activation(&self, activation_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM activations WHERE activation_id = ?1)",
            params![activation_id],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(false);
        }
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO deleted_activations (activation_id) VALUES (?1)",
            params![activation_id],
        )?;
        Ok(inserted == 1)
    }

    /// True when the activation was deleted.
    pub fn activation_deleted(&self, activation_id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM deleted_activations WHERE activation_id = ?1)",
            params![activation_id],
            |r| r.get(0),
        )?)
    }

    /// Removes a managed instance, its credentials, its registered key and its tags. False when there is none.
    pub fn deregister_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for table in crate::onprem::INSTANCE_TABLES {
            tx.execute(
                &format!("DELETE FROM {table} WHERE instance_id = ?1"),
                params![instance_id],
            )?;
        }
        let removed = tx.execute(
            "DELETE FROM instances WHERE instance_id = ?1",
            params![instance_id],
        )?;
        tx.execute(
            "DELETE FROM tags WHERE resource_type = 'ManagedInstance' AND resource_id = ?1",
            params![instance_id],
        )?;
        tx.commit()?;
        Ok(removed == 1)
    }
}
