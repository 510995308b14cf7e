//! A small service client for operator tools: commands and batched cursors over one backend connection opened
//! with the policy's service credentials.
//!
//! It owns: running a command with a deadline and turning `{ok: 0}` into a [`ClientError`] that keeps the
//! server's code; reading a cursor batch by batch (`find` or `aggregate`, then `getMore`, and `killCursors` when
//! the reader stops early) so that no collection is ever held in memory; and the catalog listings the tools
//! need (databases, collections, indexes).
//!
//! Use: [`ServiceClient::connect`] with a policy backend and [`Timeouts::from_limits`]; [`ServiceClient::command`]
//! for one command (`{ok: 0}` comes back as [`ClientError::Command`] with the server's code); or
//! [`ServiceClient::find`] / [`ServiceClient::aggregate`] for a [`Cursor`], then `next_batch(&mut client)` until
//! it returns `None`, or [`Cursor::close`] to stop early.
//!
//! It must never: hold more than one batch of a cursor, retry a command that may have reached the backend, keep
//! using a connection after a timeout (a late reply would answer the wrong request), or put a service password
//! in an error (errors name the backend by its policy name and carry the server's code and message).

use std::time::Duration;

use bson::{RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::backend::BackendTarget;
use crate::config::Limits;

/// Documents per batch when the caller has no better idea: small enough to bound memory, large enough that
/// round trips do not dominate a scan.
pub const DEFAULT_BATCH_SIZE: i32 = 1000;

/// Empty batches in a row after which an open non-tailable cursor is given up on: a server that keeps a
/// cursor open without ever returning documents would otherwise hold the reader forever.
const MAX_EMPTY_BATCHES: u32 = 100;

/// Longest server message kept in an error, so a server cannot flood the operator's terminal.
const MAX_MESSAGE_CHARS: usize = 300;

/// Server error codes meaning "this server does not have that command, stage or option": an operator tool
/// then reports the item as not supported instead of failing.
const UNSUPPORTED_CODES: &[i32] = &[
    59,    // CommandNotFound
    115,   // CommandNotSupported
    168,   // InvalidPipelineOperator
    238,   // NotImplemented
    40324, // unrecognised pipeline stage name
];

/// What can go wrong talking to a backend.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The backend could not be reached, authenticated against, or broke mid-command.
    #[error("backend {backend}: {detail}")]
    Unavailable { backend: String, detail: String },
    /// The backend did not answer in time; the connection is no longer used.
    #[error("backend {backend}: {command} on {namespace} did not answer within {timeout_ms} ms")]
    Timeout { backend: String, command: String, namespace: String, timeout_ms: u128 },
    /// The backend answered `{ok: 0}`.
    #[error("backend {backend}: {command} on {namespace} failed: {code_name} ({code}): {message}")]
    Command { backend: String, command: String, namespace: String, code: i32, code_name: String, message: String },
    /// The backend answered `ok` with a reply of an unexpected shape.
    #[error("backend {backend}: {command} on {namespace}: unexpected reply: {detail}")]
    Reply { backend: String, command: String, namespace: String, detail: String },
    /// The caller asked for something this client refuses to send (e.g. a name containing NUL).
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// Whether the server said it does not support the command, stage or option (a partial implementation
    /// of the protocol, or an older server): the item can be reported as not available rather than failing.
    pub fn is_unsupported(&self) -> bool {
        match self {
            Self::Command { code, message, .. } => {
                let message = message.to_ascii_lowercase();
                UNSUPPORTED_CODES.contains(code)
                    || message.contains("no such command")
                    || message.contains("not supported")
                    || message.contains("unrecognized")
                    || message.contains("not implemented")
            }
            _ => false,
        }
    }
}

/// Deadlines for connecting and for each command, normally the policy's `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
}

impl Timeouts {
    pub fn from_limits(limits: &Limits) -> Self {
        Self { connect: limits.backend_connect_timeout(), command: limits.backend_timeout() }
    }
}

/// One authenticated connection to one backend, for operator tools.
pub struct ServiceClient {
    backend: String,
    conn: Option<crate::backend::BackendConn>,
    timeout: Duration,
}

impl ServiceClient {
    /// Connects to the writable member of `target` and authenticates with its service credentials.
    pub async fn connect(target: &BackendTarget, timeouts: Timeouts) -> Result<Self, ClientError> {
        let backend = target.spec.name.clone();
        let conn = target
            .connect(timeouts.connect)
            .await
            .map_err(|e| ClientError::Unavailable { backend: backend.clone(), detail: detail_of(&e) })?;
        Ok(Self { backend, conn: Some(conn), timeout: timeouts.command })
    }

    /// The backend's name in the policy.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Runs `body` on database `db` and returns the reply of an `ok` command; `{ok: 0}` is
    /// [`ClientError::Command`]. `body` must not carry `$db`.
    pub async fn command(&mut self, db: &str, body: RawDocumentBuf) -> Result<RawDocumentBuf, ClientError> {
        let command = body.iter().next().and_then(Result::ok).map_or_else(String::new, |(k, _)| k.as_str().to_owned());
        let namespace = match body.get_str(&command) {
            Ok(collection) => format!("{db}.{collection}"),
            Err(_) => db.to_owned(),
        };
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.unavailable("connection closed after an earlier failure"));
        };
        let reply = match tokio::time::timeout(self.timeout, conn.command(db, body)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.conn = None;
                return Err(self.unavailable(&detail_of(&e)));
            }
            Err(_) => {
                // A reply may still arrive and would be read as the answer to the next request.
                self.conn = None;
                return Err(ClientError::Timeout {
                    backend: self.backend.clone(),
                    command,
                    namespace,
                    timeout_ms: self.timeout.as_millis(),
                });
            }
        };
        if is_ok(&reply) {
            return Ok(reply);
        }
        let code = match reply.get("code") {
            Ok(Some(RawBsonRef::Int32(c))) => c,
            Ok(Some(RawBsonRef::Int64(c))) => i32::try_from(c).unwrap_or(-1),
            Ok(Some(RawBsonRef::Double(c))) if c.fract() == 0.0 && c.abs() < 2e9 => c as i32,
            _ => -1,
        };
        Err(ClientError::Command {
            backend: self.backend.clone(),
            command,
            namespace,
            code,
            code_name: reply.get_str("codeName").unwrap_or("UnknownError").to_owned(),
            message: reply.get_str("errmsg").unwrap_or("").chars().take(MAX_MESSAGE_CHARS).collect(),
        })
    }

    /// Names of the backend's databases.
    pub async fn list_database_names(&mut self) -> Result<Vec<String>, ClientError> {
        let reply = self.command("admin", bson::rawdoc! { "listDatabases": 1, "nameOnly": true }).await?;
        let bad = |detail: &str| self.reply_error("listDatabases", "admin", detail);
        let databases = reply.get_array("databases").map_err(|_| bad("no databases array"))?;
        let mut names = Vec::new();
        for entry in databases {
            let name = entry
                .ok()
                .and_then(|e| e.as_document())
                .and_then(|d| d.get_str("name").ok())
                .ok_or_else(|| bad("a database entry without a name"))?;
            names.push(name.to_owned());
        }
        Ok(names)
    }

    /// The collections and views of `db` with their options, read through a cursor.
    pub async fn list_collections(&mut self, db: &str) -> Result<Vec<CollectionInfo>, ClientError> {
        let body = bson::rawdoc! { "listCollections": 1, "cursor": { "batchSize": DEFAULT_BATCH_SIZE } };
        let reply = self.command(db, body).await?;
        let mut cursor = Cursor::open(self, "listCollections", db, "$cmd.listCollections", &reply, DEFAULT_BATCH_SIZE)?;
        let mut out = Vec::new();
        while let Some(batch) = cursor.next_batch(self).await? {
            for spec in batch {
                let name = spec
                    .get_str("name")
                    .map_err(|_| self.reply_error("listCollections", db, "an entry without a name"))?
                    .to_owned();
                // Absent in servers before 3.4: every entry was then a collection.
                let kind = spec.get_str("type").unwrap_or("collection").to_owned();
                let options = spec.get_document("options").map_or_else(|_| RawDocumentBuf::new(), |o| o.to_owned());
                out.push(CollectionInfo { name, kind, options });
            }
        }
        Ok(out)
    }

    /// The index specifications of `db.collection` (`key`, `name`, and options such as `unique`,
    /// `expireAfterSeconds`, `partialFilterExpression`, `collation`), as the server lists them.
    pub async fn list_indexes(&mut self, db: &str, collection: &str) -> Result<Vec<RawDocumentBuf>, ClientError> {
        let body = bson::rawdoc! { "listIndexes": collection, "cursor": { "batchSize": DEFAULT_BATCH_SIZE } };
        let reply = self.command(db, body).await?;
        let mut cursor = Cursor::open(self, "listIndexes", db, collection, &reply, DEFAULT_BATCH_SIZE)?;
        let mut out = Vec::new();
        while let Some(batch) = cursor.next_batch(self).await? {
            out.extend(batch);
        }
        Ok(out)
    }

    /// Opens a `find` cursor on `db.collection` returning `batch_size` documents per batch.
    pub async fn find(
        &mut self,
        db: &str,
        collection: &str,
        filter: RawDocumentBuf,
        projection: Option<RawDocumentBuf>,
        batch_size: i32,
    ) -> Result<Cursor, ClientError> {
        let mut body = bson::rawdoc! { "find": collection, "filter": filter, "batchSize": batch_size.max(1) };
        if let Some(projection) = projection {
            body.append(bson::cstr!("projection"), projection);
        }
        let reply = self.command(db, body).await?;
        Cursor::open(self, "find", db, collection, &reply, batch_size)
    }

    /// Like [`ServiceClient::find`] with an explicit `collation` (e.g. `{locale: "simple"}`, so that a
    /// collection's default collation never loosens the filter).
    pub async fn find_collated(
        &mut self,
        db: &str,
        collection: &str,
        filter: RawDocumentBuf,
        collation: RawDocumentBuf,
        batch_size: i32,
    ) -> Result<Cursor, ClientError> {
        let body = bson::rawdoc! {
            "find": collection,
            "filter": filter,
            "collation": collation,
            "batchSize": batch_size.max(1),
        };
        let reply = self.command(db, body).await?;
        Cursor::open(self, "find", db, collection, &reply, batch_size)
    }

    /// Opens an `aggregate` cursor on `db.collection` returning `batch_size` documents per batch.
    pub async fn aggregate(
        &mut self,
        db: &str,
        collection: &str,
        pipeline: RawArrayBuf,
        batch_size: i32,
    ) -> Result<Cursor, ClientError> {
        let body = bson::rawdoc! {
            "aggregate": collection,
            "pipeline": pipeline,
            "cursor": { "batchSize": batch_size.max(1) },
        };
        let reply = self.command(db, body).await?;
        Cursor::open(self, "aggregate", db, collection, &reply, batch_size)
    }

    fn unavailable(&self, detail: &str) -> ClientError {
        ClientError::Unavailable { backend: self.backend.clone(), detail: detail.to_owned() }
    }

    fn reply_error(&self, command: &str, namespace: &str, detail: &str) -> ClientError {
        ClientError::Reply {
            backend: self.backend.clone(),
            command: command.to_owned(),
            namespace: namespace.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// One entry of `listCollections`.
#[derive(Debug, Clone)]
pub struct CollectionInfo {
    pub name: String,
    /// `collection`, `view` or `timeseries`.
    pub kind: String,
    /// Creation options as the server reports them (`capped`, `validator`, `collation`, ...).
    pub options: RawDocumentBuf,
}

/// A server cursor read one batch at a time. It borrows no client: pass the [`ServiceClient`] of the same
/// backend to each call, so the connection stays free for other commands between batches. A cursor dropped
/// before it is exhausted stays open on the server until the server's idle timeout; call [`Cursor::close`]
/// when stopping early.
#[derive(Debug)]
pub struct Cursor {
    backend: String,
    db: String,
    collection: String,
    id: i64,
    /// The batch that came with the opening reply, handed out by the first `next_batch`.
    first: Option<Vec<RawDocumentBuf>>,
    command: &'static str,
    /// Sent with every getMore: without it the server fills batches up to 16 MiB.
    batch_size: i32,
    empty_batches: u32,
}

impl Cursor {
    /// Reads the `cursor` of an opening reply (`find`, `aggregate`, `listCollections`, `listIndexes`).
    fn open(
        client: &ServiceClient,
        command: &'static str,
        db: &str,
        collection: &str,
        reply: &RawDocument,
        batch_size: i32,
    ) -> Result<Self, ClientError> {
        let namespace = format!("{db}.{collection}");
        let bad = |detail: &str| client.reply_error(command, &namespace, detail);
        let cursor = reply.get_document("cursor").map_err(|_| bad("no cursor document"))?;
        let id = cursor_id(cursor).ok_or_else(|| bad("no cursor id"))?;
        let batch = documents(cursor, "firstBatch").map_err(|d| bad(&d))?;
        // getMore names the collection the server reports (an aggregate may run on another namespace).
        let collection = cursor
            .get_str("ns")
            .ok()
            .and_then(|ns| ns.split_once('.'))
            .filter(|(ns_db, _)| *ns_db == db)
            .map_or(collection, |(_, c)| c)
            .to_owned();
        Ok(Self {
            backend: client.backend.clone(),
            db: db.to_owned(),
            collection,
            id,
            first: Some(batch),
            command,
            batch_size: batch_size.max(1),
            empty_batches: 0,
        })
    }

    /// The server's cursor id (0 once the server has closed it).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Whether the server has closed the cursor (everything has been or is about to be handed out).
    pub fn is_exhausted(&self) -> bool {
        self.id == 0 && self.first.is_none()
    }

    /// The next batch, or `None` once the cursor is exhausted. Batches may be empty only while the server
    /// keeps the cursor open.
    pub async fn next_batch(&mut self, client: &mut ServiceClient) -> Result<Option<Vec<RawDocumentBuf>>, ClientError> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        if self.id == 0 {
            return Ok(None);
        }
        self.check_client(client)?;
        let collection = self.collection.clone();
        let body = bson::rawdoc! { "getMore": self.id, "collection": collection, "batchSize": self.batch_size };
        let reply = match client.command(&self.db, body).await {
            Ok(reply) => reply,
            Err(e) => {
                // The server closes a cursor whose getMore failed; nothing left to kill.
                self.id = 0;
                return Err(e);
            }
        };
        let namespace = format!("{}.{}", self.db, self.collection);
        let bad = |detail: &str| client.reply_error("getMore", &namespace, detail);
        let cursor = reply.get_document("cursor").map_err(|_| bad("no cursor document"))?;
        self.id = cursor_id(cursor).ok_or_else(|| bad("no cursor id"))?;
        let batch = documents(cursor, "nextBatch").map_err(|d| bad(&d))?;
        if batch.is_empty() && self.id != 0 {
            self.empty_batches += 1;
            if self.empty_batches > MAX_EMPTY_BATCHES {
                let error =
                    bad(&format!("{MAX_EMPTY_BATCHES} empty batches in a row from an open {} cursor", self.command));
                let _ = self.kill(client).await;
                return Err(error);
            }
        } else {
            self.empty_batches = 0;
        }
        Ok(Some(batch))
    }

    /// Releases the server cursor if it is still open (`killCursors`). Call it when stopping before the end.
    pub async fn close(mut self, client: &mut ServiceClient) -> Result<(), ClientError> {
        self.first = None;
        if self.id == 0 {
            return Ok(());
        }
        self.check_client(client)?;
        self.kill(client).await
    }

    async fn kill(&mut self, client: &mut ServiceClient) -> Result<(), ClientError> {
        let id = std::mem::take(&mut self.id);
        let mut ids = RawArrayBuf::new();
        ids.push(id);
        let collection = self.collection.clone();
        client.command(&self.db, bson::rawdoc! { "killCursors": collection, "cursors": ids }).await.map(|_| ())
    }

    fn check_client(&self, client: &ServiceClient) -> Result<(), ClientError> {
        if client.backend == self.backend {
            Ok(())
        } else {
            Err(ClientError::Usage(format!(
                "a cursor of backend {} read through a client of backend {}",
                self.backend, client.backend
            )))
        }
    }
}

/// The cursor id, whichever integer type the server chose.
fn cursor_id(cursor: &RawDocument) -> Option<i64> {
    match cursor.get("id") {
        Ok(Some(RawBsonRef::Int64(id))) => Some(id),
        Ok(Some(RawBsonRef::Int32(id))) => Some(i64::from(id)),
        _ => None,
    }
}

/// The documents of a batch array; anything but documents in it is a malformed reply.
fn documents(cursor: &RawDocument, key: &str) -> Result<Vec<RawDocumentBuf>, String> {
    let array = cursor.get_array(key).map_err(|_| format!("no {key} array"))?;
    let mut out = Vec::new();
    for item in array {
        match item {
            Ok(RawBsonRef::Document(doc)) => out.push(doc.to_owned()),
            Ok(_) => return Err(format!("{key} holds something other than a document")),
            Err(e) => return Err(format!("{key} is malformed: {e}")),
        }
    }
    Ok(out)
}

fn is_ok(body: &RawDocument) -> bool {
    match body.get("ok") {
        Ok(Some(RawBsonRef::Double(v))) => v == 1.0,
        Ok(Some(RawBsonRef::Int32(v))) => v == 1,
        Ok(Some(RawBsonRef::Int64(v))) => v == 1,
        Ok(Some(RawBsonRef::Boolean(v))) => v,
        _ => false,
    }
}

/// The operator-facing detail of a backend failure: the log detail (which names hosts, never passwords), or
/// the error's own text when it has none.
fn detail_of(e: &crate::error::ProxyError) -> String {
    match e.log_detail() {
        "" => e.to_string(),
        detail => detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn cursor_ids_and_batches_are_read_without_trusting_the_shape() {
        let cursor = rawdoc! { "id": 7_i64, "ns": "app.orders", "firstBatch": [{ "_id": 1 }, { "_id": 2 }] };
        assert_eq!(cursor_id(&cursor), Some(7));
        assert_eq!(documents(&cursor, "firstBatch").unwrap().len(), 2);
        assert!(documents(&cursor, "nextBatch").is_err());
        let bad = rawdoc! { "id": "7", "firstBatch": [1, 2] };
        assert_eq!(cursor_id(&bad), None);
        assert!(documents(&bad, "firstBatch").is_err());
    }

    #[test]
    fn ok_follows_the_server_number_types() {
        assert!(is_ok(&rawdoc! { "ok": 1.0 }));
        assert!(is_ok(&rawdoc! { "ok": 1 }));
        assert!(!is_ok(&rawdoc! { "ok": 0.0 }));
        assert!(!is_ok(&rawdoc! { "errmsg": "x" }));
    }

    #[test]
    fn unsupported_commands_are_told_apart_from_failures() {
        let error = |code: i32, message: &str| ClientError::Command {
            backend: "main".into(),
            command: "collStats".into(),
            namespace: "app.orders".into(),
            code,
            code_name: String::new(),
            message: message.into(),
        };
        assert!(error(59, "no such command: 'collStats'").is_unsupported());
        assert!(error(-1, "Unrecognized pipeline stage name: '$collStats'").is_unsupported());
        assert!(!error(13, "not authorized on app to execute command").is_unsupported());
        assert!(!ClientError::Usage("x".into()).is_unsupported());
    }
}
