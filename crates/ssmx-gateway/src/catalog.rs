//! Every document the gateway knows, behind one lookup: the AWS-owned ones (read-only), the
//! session documents of the documents directory, and the documents users create through the SSM
//! API, kept in SQLite with all their versions and a default version (RUNCOMMAND.md §2). The
//! preferences document is both: its version 1 is built in (or from the directory), the versions
//! UpdateDocument adds are stored, and its default version's inputs are what sessions start with.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension};
use serde_json::Value;
use ssmx_protocol::document::SessionDocument;

use crate::commands::documents::{self as command_documents, CommandDocument};
use crate::documents::{strip_arn, Documents, PreparedDocument, DEFAULT_DOCUMENT};
use crate::error::{ApiError, ErrorCode};
use crate::store::{from_millis, millis, Store, StoreError};

/// Tables of this module, created with the store's.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS documents (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    document_type TEXT NOT NULL,
    document_format TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS document_defaults (
    name TEXT PRIMARY KEY,
    default_version INTEGER NOT NULL
);
"#;

/// Largest document content accepted (AWS's limit for Command and Session documents).
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// The document types served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentType {
    /// Run Command documents (schema 1.2 or 2.x).
    Command,
    /// Session Manager documents (schema 1.0).
    Session,
}

impl DocumentType {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentType::Command => "Command",
            DocumentType::Session => "Session",
        }
    }

    /// Parses the API's `DocumentType` (absent: Command).
    pub fn parse(name: Option<&str>) -> Result<Self, ApiError> {
        match name.unwrap_or("Command") {
            "Command" => Ok(DocumentType::Command),
            "Session" => Ok(DocumentType::Session),
            other => Err(ApiError::new(
                ErrorCode::Validation,
                format!("DocumentType {other:?} is not served here (Command or Session)"),
            )),
        }
    }
}

/// How a document's content is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        }
    }

    /// Parses the API's `DocumentFormat` (absent: JSON).
    pub fn parse(name: Option<&str>) -> Result<Self, ApiError> {
        match name.unwrap_or("JSON") {
            "JSON" => Ok(Format::Json),
            "YAML" => Ok(Format::Yaml),
            other => Err(ApiError::new(
                ErrorCode::Validation,
                format!("DocumentFormat {other:?} is not supported (JSON or YAML)"),
            )),
        }
    }

    /// `value` written in this format.
    pub fn render(self, value: &Value) -> String {
        match self {
            Format::Json => serde_json::to_string_pretty(value).unwrap_or_default(),
            Format::Yaml => serde_yaml::to_string(value).unwrap_or_default(),
        }
    }
}

/// Who owns a document, as ListDocuments reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// AWS-owned: read-only.
    Amazon,
    /// The gateway's account: from the documents directory or created through the API.
    Account,
}

/// One version of a document, wherever it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Its name.
    pub name: String,
    /// This version's number.
    pub version: u32,
    /// The newest version.
    pub latest_version: u32,
    /// The version `$DEFAULT` means.
    pub default_version: u32,
    /// Command or Session.
    pub document_type: DocumentType,
    /// How its content was written.
    pub format: Format,
    /// The content as written.
    pub content: String,
    /// The content parsed.
    pub value: Value,
    /// AWS-owned, or the account's.
    pub owner: Owner,
    /// When this version was created (built-ins: the epoch).
    pub created_at: SystemTime,
    /// True when only this gateway's SQLite holds it (it may be updated and deleted).
    pub stored: bool,
}

impl Document {
    /// The `schemaVersion` of its content.
    pub fn schema_version(&self) -> &str {
        self.value
            .get("schemaVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// SHA-256 of the content, hex (the API's `Hash`).
    pub fn hash(&self) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            self.content.as_bytes(),
        ))
    }
}

/// Which version a request names: `$DEFAULT`, `$LATEST` or a number (absent: `$DEFAULT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The default version.
    Default,
    /// The newest version.
    Latest,
    /// That version.
    Number(u32),
}

impl Version {
    /// Parses the API's `DocumentVersion`.
    pub fn parse(given: Option<&str>) -> Result<Self, ApiError> {
        match given {
            None | Some("$DEFAULT") => Ok(Version::Default),
            Some("$LATEST") => Ok(Version::Latest),
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(Version::Number)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidDocumentVersion,
                        format!("DocumentVersion {n:?} must be $DEFAULT, $LATEST or a number"),
                    )
                }),
        }
    }
}

/// Parses content written in `format` and checks it is a valid document of `document_type`.
pub fn parse_content(
    content: &str,
    format: Format,
    document_type: DocumentType,
) -> Result<Value, ApiError> {
    let invalid = |msg: String| ApiError::new(ErrorCode::InvalidDocumentContent, msg);
    if content.len() > MAX_CONTENT_BYTES {
        return Err(invalid(format!(
            "content is {} bytes; at most {MAX_CONTENT_BYTES} are allowed",
            content.len()
        )));
    }
    let value: Value = match format {
        Format::Json => serde_json::from_str(content).map_err(|e| invalid(e.to_string()))?,
        Format::Yaml => serde_yaml::from_str(content).map_err(|e| invalid(e.to_string()))?,
    };
    if !value.is_object() {
        return Err(invalid("content must be an object".into()));
    }
    let schema = value
        .get("schemaVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let bad_schema = |want: &str| {
        ApiError::new(
            ErrorCode::InvalidDocumentSchemaVersion,
            format!(
                "schemaVersion {schema:?} is not valid for a {} document ({want})",
                document_type.as_str()
            ),
        )
    };
    match document_type {
        DocumentType::Command => {
            match schema {
                "1.2" if value.get("runtimeConfig").is_some_and(Value::is_object) => {}
                "2.0" | "2.2" if value.get("mainSteps").is_some_and(Value::is_array) => {}
                "1.2" => return Err(invalid("schema 1.2 needs a runtimeConfig object".into())),
                "2.0" | "2.2" => return Err(invalid("schema 2.x needs a mainSteps list".into())),
                _ => return Err(bad_schema("1.2, 2.0 or 2.2")),
            }
            command_documents::check_parameter_definitions(&value).map_err(invalid)?;
        }
        DocumentType::Session => {
            if schema != "1.0" {
                return Err(bad_schema("1.0"));
            }
            let document: SessionDocument =
                serde_json::from_value(value.clone()).map_err(|e| invalid(e.to_string()))?;
            Documents::check(document).map_err(invalid)?;
        }
    }
    Ok(value)
}

/// Names users may not give their documents (AWS reserves them).
pub fn reserved_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["aws", "amazon", "amzn"]
        .iter()
        .any(|prefix| lower.starts_with(prefix))
}

/// The document called `name` at `version`, from any source; InvalidDocument when there is
/// none.
pub fn find(
    store: &Store,
    session_documents: &Documents,
    name: &str,
    version: Version,
) -> Result<Document, ApiError> {
    let name = strip_arn(name);
    let missing = || {
        ApiError::new(
            ErrorCode::InvalidDocument,
            format!("document {name} does not exist"),
        )
    };
    if let Some(mut document) = read_only(session_documents, name) {
        if let Some((latest, default)) = updated_preferences(store, name)? {
            // Version 1 is the built-in (or directory) content, later ones are stored.
            document.latest_version = latest;
            document.default_version = default;
            let number = match version {
                Version::Default => default,
                Version::Latest => latest,
                Version::Number(n) => n,
            };
            if number == 1 {
                return Ok(document);
            }
            return store
                .document_version(name, number, latest, default)?
                .ok_or_else(|| no_version(name, number));
        }
        return match version {
            Version::Default | Version::Latest | Version::Number(1) => Ok(document),
            Version::Number(n) => Err(no_version(name, n)),
        };
    }
    let (latest, default) = store.document_versions(name)?.ok_or_else(missing)?;
    let number = match version {
        Version::Default => default,
        Version::Latest => latest,
        Version::Number(n) => n,
    };
    store
        .document_version(name, number, latest, default)?
        .ok_or_else(|| no_version(name, number))
}

fn no_version(name: &str, number: u32) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidDocumentVersion,
        format!("document {name} has no version {number}"),
    )
}

/// The preferences document ([`DEFAULT_DOCUMENT`]) is the one document that is both loaded at
/// start and changeable through the API, as the account's Session Manager preferences are on
/// AWS: true for its name.
pub fn is_preferences(name: &str) -> bool {
    strip_arn(name) == DEFAULT_DOCUMENT
}

/// The latest and default version of the preferences document once it has been updated
/// through the API (`name` being it); None otherwise.
fn updated_preferences(store: &Store, name: &str) -> Result<Option<(u32, u32)>, StoreError> {
    match is_preferences(name) {
        true => store.document_versions(name),
        false => Ok(None),
    }
}

/// The preferences sessions start with when their default version is one stored here.
fn stored_preferences(
    store: &Store,
    session_documents: &Documents,
) -> Result<Option<SessionDocument>, ApiError> {
    let document = find(store, session_documents, DEFAULT_DOCUMENT, Version::Default)?;
    if !document.stored {
        return Ok(None);
    }
    serde_json::from_value(document.value)
        .map(Some)
        .map_err(|e| ApiError::new(ErrorCode::InvalidDocument, e.to_string()))
}

/// Resolves StartSession's `DocumentName` (absent: the preferences document) and `Parameters`,
/// against the session documents loaded at start or a stored Session document's default version,
/// under the preferences' default version.
pub fn prepare_session(
    store: &Store,
    session_documents: &Documents,
    name: Option<&str>,
    given: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<PreparedDocument, ApiError> {
    let preferences = stored_preferences(store, session_documents)?;
    let preference_inputs = preferences.as_ref().map(|p| p.inputs.clone());
    let name = strip_arn(name.unwrap_or(DEFAULT_DOCUMENT));
    if let Some(updated) = preferences.filter(|_| is_preferences(name)) {
        return session_documents.prepare_document(name, updated, given, preference_inputs);
    }
    if session_documents.get(name).is_some() {
        return session_documents.prepare_under(Some(name), given, preference_inputs);
    }
    let document = find(store, session_documents, name, Version::Default)?;
    if document.document_type != DocumentType::Session {
        return Err(ApiError::new(
            ErrorCode::InvalidDocument,
            format!("document {name} is not a Session document"),
        ));
    }
    let content: SessionDocument = serde_json::from_value(document.value)
        .map_err(|e| ApiError::new(ErrorCode::InvalidDocument, e.to_string()))?;
    session_documents.prepare_document(name, content, given, preference_inputs)
}

/// The Command document SendCommand names, at the version it names.
pub fn command_document(
    store: &Store,
    session_documents: &Documents,
    name: &str,
    version: Option<&str>,
) -> Result<CommandDocument, ApiError> {
    let document = find(store, session_documents, name, Version::parse(version)?)?;
    if document.document_type != DocumentType::Command {
        return Err(ApiError::new(
            ErrorCode::InvalidDocument,
            format!("document {} is not a Command document", document.name),
        ));
    }
    Ok(CommandDocument {
        name: document.name,
        content: document.value,
    })
}

/// A document that is not in the database: AWS-owned, or from the documents directory.
fn read_only(session_documents: &Documents, name: &str) -> Option<Document> {
    let (document_type, value, owner) = if let Some(doc) = command_documents::builtin(name) {
        (DocumentType::Command, doc.content, Owner::Amazon)
    } else {
        let doc = session_documents.get(name)?;
        let owner = match name.starts_with("AWS-") {
            true => Owner::Amazon,
            false => Owner::Account,
        };
        let value = serde_json::to_value(doc).ok()?;
        (DocumentType::Session, value, owner)
    };
    Some(Document {
        name: name.to_owned(),
        version: 1,
        latest_version: 1,
        default_version: 1,
        document_type,
        format: Format::Json,
        content: Format::Json.render(&value),
        value,
        owner,
        created_at: UNIX_EPOCH,
        stored: false,
    })
}

/// Names of every document, sorted, each with its default version.
pub fn all(store: &Store, session_documents: &Documents) -> Result<Vec<Document>, ApiError> {
    let mut names: Vec<String> = command_documents::builtin_names()
        .iter()
        .map(|n| n.to_string())
        .chain(session_documents.names().into_iter().map(str::to_owned))
        .chain(store.document_names()?)
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .map(|name| find(store, session_documents, name, Version::Default))
        .collect()
}

impl Store {
    /// Adds a version of a stored document: version 1 (and the default) of a new one, or the
    /// next version of an existing one (of the preferences document, version 2 and the default
    /// first). Returns the new version's number.
    pub fn add_document_version(
        &self,
        name: &str,
        document_type: DocumentType,
        format: Format,
        content: &str,
        now: SystemTime,
    ) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let latest: Option<u32> = tx.query_row(
            "SELECT MAX(version) FROM documents WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )?;
        // The preferences document's version 1 is built in; the stored ones follow it.
        let first = if is_preferences(name) { 2 } else { 1 };
        let version = latest.map_or(first, |v| v + 1);
        tx.execute(
            "INSERT INTO documents (name, version, document_type, document_format, content, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, version, document_type.as_str(), format.as_str(), content, millis(now)],
        )?;
        if version == first {
            tx.execute(
                "INSERT OR REPLACE INTO document_defaults (name, default_version) VALUES (?1, ?2)",
                params![name, version],
            )?;
        }
        tx.commit()?;
        Ok(version)
    }

    /// The latest and the default version of a stored document, if it exists (1 the latest when
    /// no version is stored: the preferences document's built-in one).
    pub fn document_versions(&self, name: &str) -> Result<Option<(u32, u32)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT (SELECT MAX(version) FROM documents WHERE name = ?1), default_version FROM document_defaults WHERE name = ?1",
                params![name],
                |r| Ok((r.get::<_, Option<u32>>(0)?.unwrap_or(1), r.get(1)?)),
            )
            .optional()?)
    }

    fn document_version(
        &self,
        name: &str,
        version: u32,
        latest_version: u32,
        default_version: u32,
    ) -> Result<Option<Document>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT document_type, document_format, content, created_at FROM documents WHERE name = ?1 AND version = ?2",
                params![name, version],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((document_type, format, content, created_at)) = row else {
            return Ok(None);
        };
        let document_type = match document_type.as_str() {
            "Session" => DocumentType::Session,
            _ => DocumentType::Command,
        };
        let format = match format.as_str() {
            "YAML" => Format::Yaml,
            _ => Format::Json,
        };
        let value = match format {
            Format::Json => serde_json::from_str(&content).unwrap_or_default(),
            Format::Yaml => serde_yaml::from_str(&content).unwrap_or_default(),
        };
        Ok(Some(Document {
            name: name.to_owned(),
            version,
            latest_version,
            default_version,
            document_type,
            format,
            content,
            value,
            owner: Owner::Account,
            created_at: from_millis(created_at),
            stored: true,
        }))
    }

    /// Names of the stored documents.
    pub fn document_names(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name FROM document_defaults ORDER BY name")?;
        let names = stmt.query_map([], |r| r.get(0))?;
        Ok(names.collect::<Result<_, _>>()?)
    }

    /// Makes `version` the default of a stored document.
    pub fn set_default_document_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE document_defaults SET default_version = ?2 WHERE name = ?1",
            params![name, version],
        )?;
        Ok(())
    }

    /// Deletes one version of a stored document, or all of them (and its tags).
    pub fn delete_document(&self, name: &str, version: Option<u32>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        match version {
            Some(v) => {
                tx.execute(
                    "DELETE FROM documents WHERE name = ?1 AND version = ?2",
                    params![name, v],
                )?;
            }
            None => {
                tx.execute("DELETE FROM documents WHERE name = ?1", params![name])?;
                tx.execute(
                    "DELETE FROM document_defaults WHERE name = ?1",
                    params![name],
                )?;
                tx.execute(
                    "DELETE FROM tags WHERE resource_type = 'Document' AND resource_id = ?1",
                    params![name],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
