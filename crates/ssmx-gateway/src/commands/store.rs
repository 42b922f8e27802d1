//! Run Command state in the gateway's SQLite database: one row per command, one per
//! (command, instance) invocation, written before SendCommand answers and updated by delivery and
//! the agents' replies, so commands in flight survive a gateway restart.

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension, Row};

use crate::store::{from_millis, millis, Store, StoreError};

/// Tables of this module, created with the store's.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    document_name TEXT NOT NULL,
    document_content TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    parameters TEXT NOT NULL,
    requested_parameters TEXT NOT NULL,
    instance_ids TEXT NOT NULL,
    targets TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    timeout_seconds INTEGER NOT NULL,
    max_concurrency TEXT NOT NULL,
    max_errors TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS commands_by_time ON commands(requested_at DESC, command_id);
CREATE TABLE IF NOT EXISTS invocations (
    command_id TEXT NOT NULL REFERENCES commands(command_id),
    instance_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT NOT NULL,
    response_code INTEGER NOT NULL DEFAULT -1,
    plugins TEXT NOT NULL DEFAULT '{}',
    dispatched_at INTEGER,
    acked INTEGER NOT NULL DEFAULT 0,
    last_sent_at INTEGER,
    PRIMARY KEY (command_id, instance_id)
);
"#;

/// A command as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandRecord {
    /// Its id (a UUID).
    pub command_id: String,
    /// Who sent it (user ARN).
    pub owner: String,
    /// The document's name.
    pub document_name: String,
    /// The document's content (JSON) as sent to the agents.
    pub document_content: String,
    /// SendCommand's Comment.
    pub comment: String,
    /// The resolved parameters (JSON object), as sent to the agents.
    pub parameters: String,
    /// The parameters as requested (JSON object of string lists), as the API reports them.
    pub requested_parameters: String,
    /// InstanceIds as requested (JSON array).
    pub instance_ids: String,
    /// Targets as requested (JSON array).
    pub targets: String,
    /// When it was sent.
    pub requested_at: SystemTime,
    /// Delivery deadline.
    pub expires_at: SystemTime,
    /// TimeoutSeconds (delivery timeout).
    pub timeout_seconds: u64,
    /// MaxConcurrency as given (`"50"`, `"10%"`).
    pub max_concurrency: String,
    /// MaxErrors as given (`"0"`, `"10%"`).
    pub max_errors: String,
    /// CancelCommand was called for every invocation.
    pub cancel_requested: bool,
}

/// One invocation as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvocationRecord {
    /// The command.
    pub command_id: String,
    /// The instance.
    pub instance_id: String,
    /// The order of dispatch (0 first).
    pub position: u32,
    /// The public Status.
    pub status: String,
    /// The public StatusDetails.
    pub status_details: String,
    /// The response code (−1 until a result arrives).
    pub response_code: i64,
    /// Plugin id → the agent's latest [`ssmx_protocol::command::PluginResult`] (JSON object).
    pub plugins: String,
    /// When the job was first sent to the agent.
    pub dispatched_at: Option<SystemTime>,
    /// The agent acknowledged the job.
    pub acked: bool,
    /// When the job was last sent.
    pub last_sent_at: Option<SystemTime>,
}

const COMMAND_COLUMNS: &str = "command_id, owner, document_name, document_content, comment, parameters, requested_parameters, instance_ids, targets, requested_at, expires_at, timeout_seconds, max_concurrency, max_errors, cancel_requested";
const INVOCATION_COLUMNS: &str = "command_id, instance_id, position, status, status_details, response_code, plugins, dispatched_at, acked, last_sent_at";

fn command_row(r: &Row<'_>) -> rusqlite::Result<CommandRecord> {
    Ok(CommandRecord {
        command_id: r.get(0)?,
        owner: r.get(1)?,
        document_name: r.get(2)?,
        document_content: r.get(3)?,
        comment: r.get(4)?,
        parameters: r.get(5)?,
        requested_parameters: r.get(6)?,
        instance_ids: r.get(7)?,
        targets: r.get(8)?,
        requested_at: from_millis(r.get(9)?),
        expires_at: from_millis(r.get(10)?),
        timeout_seconds: r.get::<_, i64>(11)?.max(0) as u64,
        max_concurrency: r.get(12)?,
        max_errors: r.get(13)?,
        cancel_requested: r.get::<_, i64>(14)? != 0,
    })
}

fn invocation_row(r: &Row<'_>) -> rusqlite::Result<InvocationRecord> {
    Ok(InvocationRecord {
        command_id: r.get(0)?,
        instance_id: r.get(1)?,
        position: r.get::<_, i64>(2)?.max(0) as u32,
        status: r.get(3)?,
        status_details: r.get(4)?,
        response_code: r.get(5)?,
        plugins: r.get(6)?,
        dispatched_at: r.get::<_, Option<i64>>(7)?.map(from_millis),
        acked: r.get::<_, i64>(8)? != 0,
        last_sent_at: r.get::<_, Option<i64>>(9)?.map(from_millis),
    })
}

impl Store {
    /// How many invocations are in each status.
    pub fn invocation_status_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM invocations GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a new command and its invocations (all Pending) in one transaction.
    pub fn insert_command(
        &self,
        command: &CommandRecord,
        instance_ids: &[String],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO commands ({COMMAND_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
            params![
                command.command_id,
                command.owner,
                command.document_name,
                command.document_content,
                command.comment,
                command.parameters,
                command.requested_parameters,
                command.instance_ids,
                command.targets,
                millis(command.requested_at),
                millis(command.expires_at),
                command.timeout_seconds as i64,
                command.max_concurrency,
                command.max_errors,
                i64::from(command.cancel_requested),
            ],
        )?;
        for (position, instance) in instance_ids.iter().enumerate() {
            tx.execute(
                "INSERT INTO invocations (command_id, instance_id, position, status, status_details) VALUES (?1, ?2, ?3, 'Pending', 'Pending')",
                params![command.command_id, instance, position as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One command.
    pub fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE command_id = ?1"),
                params![command_id],
                command_row,
            )
            .optional()?)
    }

    /// Commands, newest first, `offset`/`limit` paged; only those with an invocation on
    /// `instance_id` when given.
    pub fn commands(
        &self,
        instance_id: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COMMAND_COLUMNS} FROM commands WHERE ?1 IS NULL OR command_id IN (SELECT command_id FROM invocations WHERE instance_id = ?1) ORDER BY requested_at DESC, command_id LIMIT ?2 OFFSET ?3"
        ))?;
        let rows = stmt.query_map(
            params![instance_id, limit as i64, offset as i64],
            command_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The invocations of a command, in dispatch order.
    pub fn invocations(&self, command_id: &str) -> Result<Vec<InvocationRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {INVOCATION_COLUMNS} FROM invocations WHERE command_id = ?1 ORDER BY position"
        ))?;
        let rows = stmt.query_map(params![command_id], invocation_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many invocations of the command have not been sent to their node yet (and are not
    /// final): the ones a finished invocation may let through.
    pub fn undispatched(&self, command_id: &str) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM invocations WHERE command_id = ?1 AND dispatched_at IS NULL AND status IN ('Pending', 'Delayed', 'InProgress')",
            params![command_id],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// One invocation.
    pub fn invocation(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> Result<Option<InvocationRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {INVOCATION_COLUMNS} FROM invocations WHERE command_id = ?1 AND instance_id = ?2"),
                params![command_id, instance_id],
                invocation_row,
            )
            .optional()?)
    }

    /// Commands with an invocation not finished yet (for delivery after a restart and deadlines).
    pub fn unfinished_command_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT command_id FROM invocations WHERE status IN ('Pending', 'InProgress', 'Delayed', 'Cancelling')",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes an invocation's state back.
    pub fn update_invocation(&self, inv: &InvocationRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE invocations SET status = ?3, status_details = ?4, response_code = ?5, plugins = ?6, dispatched_at = ?7, acked = ?8, last_sent_at = ?9 WHERE command_id = ?1 AND instance_id = ?2",
            params![
                inv.command_id,
                inv.instance_id,
                inv.status,
                inv.status_details,
                inv.response_code,
                inv.plugins,
                inv.dispatched_at.map(millis),
                i64::from(inv.acked),
                inv.last_sent_at.map(millis),
            ],
        )?;
        Ok(())
    }

    /// Marks a command as cancelled by its sender.
    pub fn set_cancel_requested(&self, command_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE commands SET cancel_requested = 1 WHERE command_id = ?1",
            params![command_id],
        )?;
        Ok(())
    }
}
