//! Size of a tenant's own collection: from the backend's statistics where it has them, else by a scan.
//!
//! Tried in order: the `$collStats` stage (summed over shards on a mongos), the `collStats` command (deprecated
//! in recent servers, still answered), then counting documents and their BSON sizes batch by batch. A backend
//! that reports no index sizes (an empty `indexSizes`, although every collection has an `_id` index) gets
//! [`Measure::NotReported`] rather than a zero it does not mean.

use std::time::Instant;

use bson::{RawArrayBuf, RawBsonRef, RawDocument};

use super::report::{Measure, Source};
use super::Progress;
use crate::lifecycle::client::{ClientError, ServiceClient};

/// What the backend says about one collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub documents: u64,
    pub data: Measure,
    pub index: Measure,
    pub source: Source,
}

/// Statistics of `db.collection`, by the first method the backend supports.
pub async fn collection_stats(
    client: &mut ServiceClient,
    db: &str,
    collection: &str,
    batch_size: i32,
    progress: &mut Progress<'_>,
) -> Result<Stats, ClientError> {
    let mut stage = RawArrayBuf::new();
    stage.push(bson::rawdoc! { "$collStats": { "storageStats": {} } });
    match stage_stats(client, db, collection, stage, batch_size).await {
        Ok(Some(stats)) => return Ok(stats),
        Ok(None) => {}
        Err(e) if e.is_unsupported() => {}
        Err(e) => return Err(e),
    }
    match client.command(db, bson::rawdoc! { "collStats": collection }).await {
        Ok(reply) => {
            if let Some(stats) = parse_storage_stats(&reply, Source::CollStats) {
                return Ok(stats);
            }
        }
        Err(e) if e.is_unsupported() => {}
        Err(e) => return Err(e),
    }
    scan(client, db, collection, batch_size, progress).await
}

/// `$collStats` documents (one per shard on a mongos) summed; `None` when they lack the numbers.
async fn stage_stats(
    client: &mut ServiceClient,
    db: &str,
    collection: &str,
    pipeline: RawArrayBuf,
    batch_size: i32,
) -> Result<Option<Stats>, ClientError> {
    let mut cursor = client.aggregate(db, collection, pipeline, batch_size).await?;
    let mut total: Option<Stats> = None;
    let mut complete = true;
    while let Some(batch) = cursor.next_batch(client).await? {
        for doc in batch {
            let parsed =
                doc.get_document("storageStats").ok().and_then(|s| parse_storage_stats(s, Source::CollStatsStage));
            match (parsed, total.as_mut()) {
                (None, _) => complete = false,
                (Some(s), None) => total = Some(s),
                (Some(s), Some(t)) => {
                    t.documents = t.documents.saturating_add(s.documents);
                    t.data = add(t.data, s.data);
                    t.index = add(t.index, s.index);
                }
            }
        }
    }
    Ok(total.filter(|_| complete))
}

fn add(a: Measure, b: Measure) -> Measure {
    match (a, b) {
        (Measure::Bytes(x), Measure::Bytes(y)) => Measure::Bytes(x.saturating_add(y)),
        _ => Measure::NotReported,
    }
}

/// `count`, `size` and `totalIndexSize` of a `collStats` reply or a `storageStats` document.
pub fn parse_storage_stats(doc: &RawDocument, source: Source) -> Option<Stats> {
    let documents = number(doc, "count")?;
    let data = number(doc, "size")?;
    let index_reported = matches!(doc.get("indexSizes"), Ok(Some(RawBsonRef::Document(d))) if !d.is_empty());
    let index = match number(doc, "totalIndexSize") {
        Some(n) if index_reported => Measure::Bytes(n),
        _ => Measure::NotReported,
    };
    Some(Stats { documents, data: Measure::Bytes(data), index, source })
}

/// A non-negative count or size, whichever numeric type the server chose.
fn number(doc: &RawDocument, key: &str) -> Option<u64> {
    match doc.get(key) {
        Ok(Some(RawBsonRef::Int32(n))) => u64::try_from(n).ok(),
        Ok(Some(RawBsonRef::Int64(n))) => u64::try_from(n).ok(),
        Ok(Some(RawBsonRef::Double(n))) if (0.0..1.8e19).contains(&n) => Some(n as u64),
        _ => None,
    }
}

/// Counts documents and BSON bytes batch by batch.
async fn scan(
    client: &mut ServiceClient,
    db: &str,
    collection: &str,
    batch_size: i32,
    progress: &mut Progress<'_>,
) -> Result<Stats, ClientError> {
    let mut cursor = client.find(db, collection, bson::rawdoc! {}, None, batch_size).await?;
    let started = Instant::now();
    let (mut documents, mut bytes) = (0_u64, 0_u64);
    while let Some(batch) = cursor.next_batch(client).await? {
        for doc in &batch {
            documents += 1;
            bytes = bytes.saturating_add(u64::try_from(doc.as_bytes().len()).unwrap_or(u64::MAX));
        }
        progress.scanned(client.backend(), &format!("{db}.{collection}"), documents, started);
    }
    Ok(Stats { documents, data: Measure::Bytes(bytes), index: Measure::NotReported, source: Source::Scan })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn storage_stats_are_read_whatever_the_number_types() {
        let mongod = rawdoc! { "count": 3, "size": 300_i64, "totalIndexSize": 8192.0, "indexSizes": { "_id_": 8192 } };
        assert_eq!(
            parse_storage_stats(&mongod, Source::CollStats),
            Some(Stats {
                documents: 3,
                data: Measure::Bytes(300),
                index: Measure::Bytes(8192),
                source: Source::CollStats
            })
        );
        // A backend that answers totalIndexSize 0 with no index listed does not know its index sizes.
        let partial = rawdoc! { "count": 3, "size": 300, "totalIndexSize": 0, "indexSizes": {} };
        assert_eq!(parse_storage_stats(&partial, Source::CollStats).map(|s| s.index), Some(Measure::NotReported));
        assert_eq!(parse_storage_stats(&rawdoc! { "count": -1, "size": 3 }, Source::CollStats), None);
        assert_eq!(parse_storage_stats(&rawdoc! { "size": 3 }, Source::CollStats), None);
    }
}
