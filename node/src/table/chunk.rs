//! The chunk codec: how a slice of a table's rows is stored in the hot store.
//!
//! A chunk is stored under two keys (see [`super::keys`]):
//!
//! - its **data**: one Arrow IPC stream holding one record batch, with LZ4-compressed buffers. Columnar and
//!   compressed, so a scan decodes only the columns it projects, at memory speed;
//! - its **index entry** ([`ChunkMeta`]): the row count, the data's size, when it was written, and per column the null
//!   count, minimum and maximum. Index entries are small and all of them are held in memory, so a query prunes chunks
//!   without reading them, and tiering and retention judge their age without reading them either.
//!
//! Index entry layout (little-endian): `b'Q' 4u8 rows:u64 data_bytes:u64 written_ms:u64 txn:u64 visible_from:u64
//! removed_by:u64 columns:u32 null_count:u64*columns` followed by an Arrow IPC stream of a two-row batch (row 0:
//! minimums, row 1: maximums; NULL where unknown). `written_ms` is milliseconds since the Unix epoch. `txn` and
//! `visible_from` say when the chunk's rows become visible, `removed_by` when they stop being (see
//! [`ChunkMeta::visible`]). Version 1 entries, written before chunks carried their age, lack it and read as 0:
//! tiering by age takes them at once, retention never drops them. Version 1 and 2 entries lack `txn` and
//! `visible_from` and read as 0: visible to every reader. Entries before version 4 lack `removed_by` and read as 0.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use datafusion_functions_aggregate_common::min_max::{MaxAccumulator, MinAccumulator};

use crate::error::{Error, Result};

const INDEX_MAGIC: u8 = b'Q';
const INDEX_VERSION: u8 = 4;

/// What the index entry of a chunk says about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChunkMeta {
    /// Rows in the chunk.
    pub(crate) rows: u64,
    /// Bytes of the chunk's encoded data.
    pub(crate) data_bytes: u64,
    /// When the chunk was written, in milliseconds since the Unix epoch (0: before chunks carried their age).
    pub(crate) written_ms: u64,
    /// The statement spanning shards that wrote the chunk (0: none). Until the shard's log settles it, the chunk is
    /// visible only once the metadata group recorded that statement's commit.
    pub(crate) txn: u64,
    /// The metadata version at which the chunk's rows became visible, once settled (the commit decision of the
    /// statement that wrote them; 0: at once, or not settled yet): a reader whose snapshot is older does not see
    /// them.
    pub(crate) visible_from: u64,
    /// The statement spanning shards that removes the chunk (0: none), until the shard's log settles it: the chunk
    /// stays visible to every reader that does not see that statement's commit. Once settled, a committed removal
    /// deletes the chunk and an aborted one clears the mark.
    pub(crate) removed_by: u64,
    /// Per column: NULLs in the chunk.
    pub(crate) null_counts: Vec<u64>,
    /// Per column: the minimum, or a NULL scalar when unknown.
    pub(crate) min: Vec<ScalarValue>,
    /// Per column: the maximum, or a NULL scalar when unknown.
    pub(crate) max: Vec<ScalarValue>,
}

/// The rows from which a chunk's columns are compressed.
const COMPRESS_FROM_ROWS: usize = 256;

/// Encodes a batch as chunk data.
pub(crate) fn encode_data(batch: &RecordBatch) -> Result<Vec<u8>> {
    // A chunk of few rows is written uncompressed: LZ4 saves little on a few rows, and its frame encoder sets up tables
    // of tens of KiB for every buffer of every column, which costs a single-row INSERT more than the rest of its
    // encoding. Readers see from each message whether it is compressed.
    let compression = (batch.num_rows() >= COMPRESS_FROM_ROWS).then_some(CompressionType::LZ4_FRAME);
    let options = IpcWriteOptions::default().try_with_compression(compression)?;
    let mut writer = StreamWriter::try_new_with_options(Vec::new(), &batch.schema(), options)?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// Decodes chunk data, keeping only the columns in `projection` (all when `None`).
///
/// `rows` is the row count from the chunk's index entry, used for an empty projection (`count(*)`), which needs no
/// column and so reads no data.
pub(crate) fn decode_data(
    bytes: &[u8],
    projection: Option<&[usize]>,
    projected_schema: &SchemaRef,
    location: impl Fn() -> String,
) -> Result<RecordBatch> {
    let corrupt = |detail: String| Error::Corrupt { location: location(), detail };
    let mut reader = StreamReader::try_new(Cursor::new(bytes), projection.map(|p| p.to_vec()))
        .map_err(|e| corrupt(format!("chunk data header: {e}")))?;
    let batch = reader
        .next()
        .ok_or_else(|| corrupt("chunk data holds no batch".into()))?
        .map_err(|e| corrupt(format!("chunk data batch: {e}")))?;
    // The stored field names are the table's at write time; return the table's current schema object so that
    // DataFusion sees exactly the schema it planned with.
    RecordBatch::try_new_with_options(
        Arc::clone(projected_schema),
        batch.columns().to_vec(),
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| corrupt(format!("chunk data does not match the table schema: {e}")))
}

/// Computes the index entry of a batch about to be stored in `data_bytes` bytes at `written_ms`.
pub(crate) fn compute_meta(batch: &RecordBatch, data_bytes: u64, written_ms: u64) -> ChunkMeta {
    let mut null_counts = Vec::with_capacity(batch.num_columns());
    let mut min = Vec::with_capacity(batch.num_columns());
    let mut max = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        null_counts.push(column.null_count() as u64);
        min.push(column_min_max(column, field.data_type(), true));
        max.push(column_min_max(column, field.data_type(), false));
    }
    ChunkMeta {
        rows: batch.num_rows() as u64,
        data_bytes,
        written_ms,
        txn: 0,
        visible_from: 0,
        removed_by: 0,
        null_counts,
        min,
        max,
    }
}

impl ChunkMeta {
    /// Whether a reader at metadata version `snapshot` (`None`: the latest, a statement changing rows on the shard's
    /// primary) sees the chunk; `decision` says what the metadata group decided of a statement spanning shards:
    /// `Some((commit, version))`, or `None` while undecided or forgotten.
    ///
    /// A settled chunk, or one of no such statement, is visible from its `visible_from` on; one whose statement is
    /// not settled in the shard's log yet is visible only once its commit is recorded, at or before the snapshot. A
    /// chunk whose statement is undecided, aborted or forgotten unsettled is seen by nobody (its part is removed, or
    /// settled, by the shard's primary). A chunk a statement removes (`removed_by`, not settled yet) is no longer
    /// seen once that statement's commit is recorded at or before the snapshot.
    pub(crate) fn visible(&self, snapshot: Option<u64>, decision: impl Fn(u64) -> Option<(bool, u64)>) -> bool {
        if self.removed_by != 0
            && let Some((true, version)) = decision(self.removed_by)
            && snapshot.is_none_or(|s| version <= s)
        {
            return false;
        }
        let from = if !self.pending_part() {
            self.visible_from
        } else {
            match decision(self.txn) {
                Some((true, version)) => version,
                _ => return false,
            }
        };
        snapshot.is_none_or(|s| from <= s)
    }

    /// A digest of what the chunk is, the same on every copy of it: its rows, size, write time, statement and column
    /// statistics (not its settlement, which a copy may be behind on). A chunk of the same number and another digest
    /// is another chunk (a shard that lost every in-sync copy numbers its chunks anew).
    pub(crate) fn digest(&self) -> u64 {
        fn mix(hash: u64, bytes: &[u8]) -> u64 {
            bytes.iter().fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
        }
        let words =
            [self.rows, self.data_bytes, self.written_ms, self.txn].into_iter().chain(self.null_counts.iter().copied());
        let hash = words.fold(0xcbf2_9ce4_8422_2325, |h, w| mix(h, &w.to_le_bytes()));
        self.min.iter().chain(&self.max).fold(hash, |h, s| mix(mix(h, s.to_string().as_bytes()), &[0]))
    }

    /// Whether the chunk is added or removed by a statement spanning shards that the shard's log has not settled
    /// yet.
    pub(crate) fn unsettled(&self) -> bool {
        self.pending_part() || self.removed_by != 0
    }

    /// Whether the chunk is added by a statement spanning shards that the shard's log has not settled yet.
    pub(crate) fn pending_part(&self) -> bool {
        self.txn != 0 && self.visible_from == 0
    }

    /// The statements spanning shards, not settled yet, that add or remove the chunk.
    pub(crate) fn pending_txns(&self) -> impl Iterator<Item = u64> {
        [self.pending_part().then_some(self.txn), (self.removed_by != 0).then_some(self.removed_by)]
            .into_iter()
            .flatten()
    }
}

/// Returns the minimum (or maximum) of a column, or a NULL scalar when the type has no order we track.
fn column_min_max(column: &ArrayRef, data_type: &arrow::datatypes::DataType, want_min: bool) -> ScalarValue {
    let null = || ScalarValue::try_from(data_type).unwrap_or(ScalarValue::Null);
    let result = if want_min {
        MinAccumulator::try_new(data_type).and_then(|mut acc| {
            acc.update_batch(std::slice::from_ref(column))?;
            acc.evaluate()
        })
    } else {
        MaxAccumulator::try_new(data_type).and_then(|mut acc| {
            acc.update_batch(std::slice::from_ref(column))?;
            acc.evaluate()
        })
    };
    result.unwrap_or_else(|_| null())
}

/// Encodes an index entry for a table whose schema is `schema`.
pub(crate) fn encode_meta(meta: &ChunkMeta, schema: &Schema) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(32 + 8 * meta.null_counts.len());
    out.push(INDEX_MAGIC);
    out.push(INDEX_VERSION);
    out.extend_from_slice(&meta.rows.to_le_bytes());
    out.extend_from_slice(&meta.data_bytes.to_le_bytes());
    out.extend_from_slice(&meta.written_ms.to_le_bytes());
    out.extend_from_slice(&meta.txn.to_le_bytes());
    out.extend_from_slice(&meta.visible_from.to_le_bytes());
    out.extend_from_slice(&meta.removed_by.to_le_bytes());
    out.extend_from_slice(&(meta.null_counts.len() as u32).to_le_bytes());
    for n in &meta.null_counts {
        out.extend_from_slice(&n.to_le_bytes());
    }
    let stats_schema = Arc::new(Schema::new(
        schema.fields().iter().map(|f| Field::new(f.name(), f.data_type().clone(), true)).collect::<Vec<_>>(),
    ));
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let pair = [meta.min[i].clone(), meta.max[i].clone()];
        let array = ScalarValue::iter_to_array(pair).or_else(|_| {
            ScalarValue::iter_to_array([
                ScalarValue::try_from(field.data_type())?,
                ScalarValue::try_from(field.data_type())?,
            ])
        });
        columns.push(array.map_err(|e| Error::Internal(format!("chunk statistics of {}: {e}", field.name())))?);
    }
    let stats =
        RecordBatch::try_new_with_options(stats_schema, columns, &RecordBatchOptions::new().with_row_count(Some(2)))?;
    let mut writer = StreamWriter::try_new(out, &stats.schema())?;
    writer.write(&stats)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// Decodes an index entry.
pub(crate) fn decode_meta(bytes: &[u8], location: impl Fn() -> String) -> Result<ChunkMeta> {
    let corrupt = |detail: &str| Error::Corrupt { location: location(), detail: detail.to_string() };
    if bytes.len() < 22 || bytes[0] != INDEX_MAGIC {
        return Err(corrupt("not a chunk index entry"));
    }
    let version = bytes[1];
    if !(1..=INDEX_VERSION).contains(&version) {
        return Err(corrupt("unknown chunk index version"));
    }
    let u64_at = |at: usize| -> Result<u64> {
        let b = bytes.get(at..at + 8).ok_or_else(|| corrupt("truncated chunk index entry"))?;
        Ok(u64::from_le_bytes(b.try_into().expect("slice of 8 bytes")))
    };
    let rows = u64_at(2)?;
    let data_bytes = u64_at(10)?;
    let (written_ms, txn, visible_from, removed_by, mut at) = match version {
        1 => (0, 0, 0, 0, 18),
        2 => (u64_at(18)?, 0, 0, 0, 26),
        3 => (u64_at(18)?, u64_at(26)?, u64_at(34)?, 0, 42),
        _ => (u64_at(18)?, u64_at(26)?, u64_at(34)?, u64_at(42)?, 50),
    };
    let count = bytes.get(at..at + 4).ok_or_else(|| corrupt("truncated chunk index entry"))?;
    let columns = u32::from_le_bytes(count.try_into().expect("slice of 4 bytes")) as usize;
    at += 4;
    let mut null_counts = Vec::with_capacity(columns.min(4096));
    for _ in 0..columns {
        null_counts.push(u64_at(at)?);
        at += 8;
    }
    let mut reader =
        StreamReader::try_new(Cursor::new(&bytes[at..]), None).map_err(|_| corrupt("bad statistics header"))?;
    let stats =
        reader.next().ok_or_else(|| corrupt("missing statistics"))?.map_err(|_| corrupt("bad statistics batch"))?;
    if stats.num_columns() != columns || stats.num_rows() != 2 {
        return Err(corrupt("statistics do not match the column count"));
    }
    let mut min = Vec::with_capacity(columns);
    let mut max = Vec::with_capacity(columns);
    for col in stats.columns() {
        min.push(ScalarValue::try_from_array(col, 0).map_err(|_| corrupt("bad minimum"))?);
        max.push(ScalarValue::try_from_array(col, 1).map_err(|_| corrupt("bad maximum"))?);
    }
    Ok(ChunkMeta { rows, data_bytes, written_ms, txn, visible_from, removed_by, null_counts, min, max })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, TimeUnit};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![5, -3, 9])),
                Arc::new(StringArray::from(vec![Some("pear"), None, Some("apple")])),
                Arc::new(TimestampMicrosecondArray::from(vec![Some(10), Some(30), None]).with_timezone("+00:00")),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn data_round_trips_with_projection() {
        let b = batch();
        let bytes = encode_data(&b).expect("encode");
        let all = decode_data(&bytes, None, &b.schema(), || "t".into()).expect("decode");
        assert_eq!(all, b);
        let projected_schema = Arc::new(b.schema().project(&[1]).expect("project"));
        let one = decode_data(&bytes, Some(&[1]), &projected_schema, || "t".into()).expect("decode one");
        assert_eq!(one.num_columns(), 1);
        assert_eq!(one.column(0), b.column(1));
        assert!(decode_data(&bytes[..bytes.len() / 2], None, &b.schema(), || "t".into()).is_err());
    }

    #[test]
    fn meta_holds_min_max_and_nulls_and_round_trips() {
        let b = batch();
        let meta = compute_meta(&b, 123, 1_700_000_000_000);
        assert_eq!(meta.rows, 3);
        assert_eq!(meta.null_counts, vec![0, 1, 1]);
        assert_eq!(meta.min[0], ScalarValue::Int64(Some(-3)));
        assert_eq!(meta.max[0], ScalarValue::Int64(Some(9)));
        assert_eq!(meta.min[1], ScalarValue::Utf8(Some("apple".into())));
        assert_eq!(meta.max[2], ScalarValue::TimestampMicrosecond(Some(30), Some("+00:00".into())));
        let bytes = encode_meta(&meta, &b.schema()).expect("encode meta");
        let back = decode_meta(&bytes, || "t".into()).expect("decode meta");
        assert_eq!(back, meta);
        assert!(decode_meta(&bytes[..10], || "t".into()).is_err());
        assert!(decode_meta(b"garbage-garbage-garbage", || "t".into()).is_err());
        // A version 1 entry (no written time) still reads, as written at the epoch; a version 2 entry (no
        // visibility) as visible to every reader.
        let mut v1 = bytes[..18].to_vec();
        v1[1] = 1;
        v1.extend_from_slice(&bytes[50..]);
        let back = decode_meta(&v1, || "t".into()).expect("decode a version 1 entry");
        assert_eq!(back, ChunkMeta { written_ms: 0, ..meta.clone() });
        let mut v2 = bytes[..26].to_vec();
        v2[1] = 2;
        v2.extend_from_slice(&bytes[50..]);
        assert_eq!(decode_meta(&v2, || "t".into()).expect("decode a version 2 entry"), meta);
        // A version 3 entry (no removal mark) as removed by nothing.
        let tagged = ChunkMeta { txn: 77, visible_from: 0, ..meta.clone() };
        let tagged_bytes = encode_meta(&tagged, &b.schema()).expect("encode");
        let mut v3 = tagged_bytes[..42].to_vec();
        v3[1] = 3;
        v3.extend_from_slice(&tagged_bytes[50..]);
        assert_eq!(decode_meta(&v3, || "t".into()).expect("decode a version 3 entry"), tagged);
        let stamped = ChunkMeta { txn: 77, visible_from: 12, ..meta.clone() };
        let removing = ChunkMeta { removed_by: 78, ..stamped.clone() };
        for m in [&tagged, &stamped, &removing] {
            assert_eq!(&decode_meta(&encode_meta(m, &b.schema()).expect("encode"), || "t".into()).expect("decode"), m);
        }
    }

    #[test]
    fn visibility_follows_the_decision_and_the_snapshot() {
        let meta = compute_meta(&batch(), 1, 1);
        let undecided = |_| None;
        let committed_at_10 = |_| Some((true, 10));
        let aborted = |_| Some((false, 10));
        assert!(meta.visible(None, undecided) && meta.visible(Some(0), undecided));
        let stamped = ChunkMeta { txn: 5, visible_from: 10, ..meta.clone() };
        assert!(!stamped.visible(Some(9), undecided) && stamped.visible(Some(10), undecided));
        assert!(stamped.visible(None, undecided));
        let tagged = ChunkMeta { txn: 5, ..meta.clone() };
        assert!(!tagged.visible(None, undecided) && !tagged.visible(None, aborted));
        assert!(!tagged.visible(Some(9), committed_at_10) && tagged.visible(Some(10), committed_at_10));
        assert!(tagged.visible(None, committed_at_10));
        // A chunk being removed: seen until the removal's commit is in the reader's snapshot.
        let removing = ChunkMeta { removed_by: 6, ..meta.clone() };
        assert!(removing.visible(None, undecided) && removing.visible(Some(3), undecided));
        assert!(removing.visible(None, aborted) && removing.visible(Some(9), committed_at_10));
        assert!(!removing.visible(Some(10), committed_at_10) && !removing.visible(None, committed_at_10));
        assert!(removing.unsettled() && !removing.pending_part());
        assert_eq!(removing.pending_txns().collect::<Vec<_>>(), vec![6]);
        let both = ChunkMeta { txn: 5, removed_by: 6, ..meta };
        assert_eq!(both.pending_txns().collect::<Vec<_>>(), vec![5, 6]);
    }
}
