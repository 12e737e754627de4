//! Table options: `CREATE TABLE … WITH (key = value, …)` and `ALTER TABLE … SET (key = value, …)`, kept in the
//! table's catalog entry (replicated through Raft), so every node tiers a table by the same policy.
//!
//! | option | value | meaning |
//! |---|---|---|
//! | `hot_bytes_max` | a size (`'1GiB'`, `'64MiB'`, bytes) | the background tierer moves the table's hot rows on a node once they take more than this; overrides `[cold] hot_bytes_max` for the table (`'0'`: never by size) |
//! | `tier_after` | a duration (`'1h'`, `'30m'`, `'7d'`) | the background tierer moves hot rows once they were written this long ago |
//! | `ttl` | a duration, more than 0 | rows written longer ago than this are dropped, hot chunks and cold files alike (see [`super::retention`]) |
//! | `sort_key` | column names, comma-separated (`'device, ts'`) | the order of the rows in the table's cold files, instead of the primary key; files written before a change keep their order until compaction or a rewrite writes them again |
//! | `shards` | 1 to 4,096 | CREATE TABLE only: the number of shards (default `[cluster] shards_per_table`, or two per serving node) |
//! | `replicas` | 1 to 7 | CREATE TABLE only: the copies kept of each shard (default `[cluster] replication_factor`, or 2 once the cluster has two serving nodes) |
//! | `shard_key` | column names, comma-separated | CREATE TABLE only: the columns whose hash picks a row's shard (default the primary key) |
//!
//! `SET (key = DEFAULT)` removes an option. The sharding options are not kept in the options map: they become the
//! table's [`Sharding`], fixed at creation (docs/rfcs/0001-cluster-data-path.md).

use std::collections::BTreeMap;

use arrow::datatypes::Schema;
use datafusion::sql::sqlparser::ast::{Expr, SqlOption, Value};

use quiver_meta::{REPLICAS_MAX, SLOT_COUNT, Sharding};

use crate::config::{ByteSize, Millis};
use crate::error::{Error, Result};

/// The size past which the background tierer moves a table's hot rows.
pub(crate) const HOT_BYTES_MAX: &str = "hot_bytes_max";

/// The age past which the background tierer moves a table's hot rows.
pub(crate) const TIER_AFTER: &str = "tier_after";

/// The age past which a table's rows are dropped.
pub(crate) const TTL: &str = "ttl";

/// The columns a table's cold files are sorted by.
pub(crate) const SORT_KEY: &str = "sort_key";

/// The number of shards of a new table.
pub(crate) const SHARDS: &str = "shards";

/// The copies kept of each shard of a new table.
pub(crate) const REPLICAS: &str = "replicas";

/// The columns whose hash picks a row's shard.
pub(crate) const SHARD_KEY: &str = "shard_key";

/// What a new table's sharding is when its CREATE TABLE does not say (`[cluster] shards_per_table` and
/// `replication_factor`; 0 means: decided by the cluster's size at creation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardingDefaults {
    /// Shards per new table; 0: two per serving node.
    pub shards_per_table: u32,
    /// Copies of each shard; 0: 2 once the cluster has two serving nodes, else 1.
    pub replication_factor: u32,
}

/// How a shard's primary replicates its changes (`[cluster] min_in_sync`, `replication_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationOptions {
    /// The fewest in-sync copies (the primary's included) a shard takes writes with, capped at the table's
    /// `replicas`: below it a write is refused with a retryable error.
    pub min_in_sync: u32,
    /// The longest a backup may take to make a change durable before the primary takes it out of the in-sync set.
    pub timeout: std::time::Duration,
    /// Bytes of chunk data a second a catch-up sends a replica at most (0: no limit).
    pub catch_up_rate: u64,
    /// How long a part of a statement spanning shards waits for the statement's decision before the shard's primary
    /// decides it aborted.
    pub transaction_hold: std::time::Duration,
    /// A bug the simulation injects on purpose, to show that its checkers catch it.
    #[cfg(madsim)]
    pub injected_bug: Option<InjectedBug>,
}

impl Default for ReplicationOptions {
    fn default() -> Self {
        Self {
            min_in_sync: 2,
            timeout: std::time::Duration::from_secs(5),
            catch_up_rate: 64 << 20,
            transaction_hold: std::time::Duration::from_secs(600),
            #[cfg(madsim)]
            injected_bug: None,
        }
    }
}

/// Outside the simulation, the names of its injected bugs, which never fire (`Engine::injected` is false).
#[cfg(not(madsim))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InjectedBugKind {
    AckBeforeBackups,
    DeposedPrimaryAccepts,
    StaleEpochScan,
    StartReadLate,
}

/// Bugs the simulation injects, each breaking one rule of the data path (simulation builds only).
#[cfg(madsim)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedBug {
    /// A primary acknowledges a change once it is durable here, sending it to its backups on the side.
    AckBeforeBackups,
    /// A node trusts its own view of a shard's configuration: a primary whose backups refused or missed a change
    /// acknowledges it without them when the metadata group does not take them out of the in-sync set (it deposed
    /// the primary, or cannot be reached), a sole in-sync copy acknowledges without confirming it is still the
    /// primary, and shard requests do not wait for the metadata to catch up after a start.
    DeposedPrimaryAccepts,
    /// A replica serves a scan at whatever epoch it is asked, and a statement routes by the configuration its node
    /// has applied, unconfirmed.
    StaleEpochScan,
    /// A starting node reads whether its store held a cluster's metadata only after its internal endpoint serves:
    /// a member back with an empty disk is filled by the metadata leader meanwhile and resumes as the member it
    /// was, leading shards it holds nothing of.
    StartReadLate,
}

#[cfg(madsim)]
impl std::str::FromStr for InjectedBug {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ack-before-backups" => Ok(Self::AckBeforeBackups),
            "deposed-primary-accepts" => Ok(Self::DeposedPrimaryAccepts),
            "stale-epoch-scan" => Ok(Self::StaleEpochScan),
            "start-read-late" => Ok(Self::StartReadLate),
            other => Err(format!(
                "unknown bug '{other}' (ack-before-backups, deposed-primary-accepts, stale-epoch-scan, start-read-late)"
            )),
        }
    }
}

/// The changes `options` ask for (a `None` value removes the option), checked.
///
/// # Errors
///
/// [`Error::Unsupported`] for an option that is not a `key = value` pair, an unknown key, or a key not supported
/// yet; [`Error::Plan`] for a value of the wrong form.
pub(crate) fn parse(options: &[SqlOption]) -> Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    for option in options {
        let SqlOption::KeyValue { key, value } = option else {
            return Err(Error::Unsupported { what: format!("table option {option}") });
        };
        let key = key.value.to_lowercase();
        let text = match value {
            Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case("default") => None,
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
                Value::Number(n, _) => Some(n.clone()),
                other => return Err(bad_value(&key, &other.to_string())),
            },
            other => return Err(bad_value(&key, &other.to_string())),
        };
        match (key.as_str(), &text) {
            (HOT_BYTES_MAX, Some(t)) => {
                t.parse::<ByteSize>().map_err(|e| bad_value(&key, &e))?;
            }
            (TIER_AFTER, Some(t)) => {
                t.parse::<Millis>().map_err(|e| bad_value(&key, &e))?;
            }
            (TTL, Some(t)) => {
                let ttl = t.parse::<Millis>().map_err(|e| bad_value(&key, &e))?;
                if ttl.0 == 0 {
                    return Err(bad_value(&key, "must be more than 0 (SET (ttl = DEFAULT) keeps rows forever)"));
                }
            }
            (SORT_KEY, Some(t)) => {
                let names = names_of(t);
                if names.iter().any(|n| n.is_empty()) {
                    return Err(bad_value(&key, &format!("\"{t}\" is not a list of column names")));
                }
            }
            (SHARDS, Some(t)) => {
                number_in(&key, t, 1, SLOT_COUNT)?;
            }
            (REPLICAS, Some(t)) => {
                number_in(&key, t, 1, REPLICAS_MAX)?;
            }
            (SHARD_KEY, Some(t)) => {
                if names_of(t).iter().any(|n| n.is_empty()) {
                    return Err(bad_value(&key, &format!("\"{t}\" is not a list of column names")));
                }
            }
            (HOT_BYTES_MAX | TIER_AFTER | TTL | SORT_KEY | SHARDS | REPLICAS | SHARD_KEY, None) => {}
            _ => {
                return Err(Error::Unsupported {
                    what: format!(
                        "table option {key} (known: {HOT_BYTES_MAX}, {TIER_AFTER}, {TTL}, {SORT_KEY}, {SHARDS}, \
                         {REPLICAS}, {SHARD_KEY})"
                    ),
                });
            }
        }
        out.insert(key, text);
    }
    Ok(out)
}

/// Parses a whole number from `low` to `high` for option `key`.
fn number_in(key: &str, text: &str, low: u32, high: u32) -> Result<u32> {
    match text.trim().parse::<u32>() {
        Ok(n) if (low..=high).contains(&n) => Ok(n),
        _ => Err(bad_value(key, &format!("\"{text}\" is not a whole number from {low} to {high}"))),
    }
}

/// Refuses changes to the options fixed at CREATE TABLE.
///
/// # Errors
///
/// [`Error::Unsupported`] naming the option.
pub(crate) fn check_alterable(changes: &BTreeMap<String, Option<String>>) -> Result<()> {
    match changes.keys().find(|k| matches!(k.as_str(), SHARDS | REPLICAS | SHARD_KEY)) {
        Some(key) => Err(Error::Unsupported { what: format!("changing table option {key} after CREATE TABLE") }),
        None => Ok(()),
    }
}

/// Takes the sharding options out of a new table's `options` and resolves them with `defaults`: the shard key is
/// checked against the table's columns (each a column of a type that hashes, named once), and defaults to the
/// primary key; `serving_nodes` sizes the defaults left to the cluster.
///
/// # Errors
///
/// [`Error::Plan`] naming the option and the column at fault.
pub(crate) fn take_sharding(
    options: &mut BTreeMap<String, String>,
    schema: &Schema,
    primary_key: &[String],
    defaults: ShardingDefaults,
    serving_nodes: usize,
) -> Result<Sharding> {
    let nodes = serving_nodes.max(1) as u32;
    let shards = match options.remove(SHARDS) {
        Some(t) => number_in(SHARDS, &t, 1, SLOT_COUNT)?,
        None if defaults.shards_per_table > 0 => defaults.shards_per_table.min(SLOT_COUNT),
        None => (2 * nodes).min(SLOT_COUNT),
    };
    let replicas = match options.remove(REPLICAS) {
        Some(t) => number_in(REPLICAS, &t, 1, REPLICAS_MAX)?,
        None if defaults.replication_factor > 0 => defaults.replication_factor.min(REPLICAS_MAX),
        None => nodes.min(2),
    };
    let shard_key = match options.remove(SHARD_KEY) {
        None => primary_key.to_vec(),
        Some(text) => {
            let mut key: Vec<String> = Vec::new();
            for name in names_of(&text) {
                let Some(i) = column_index(schema, name) else {
                    return Err(bad_value(SHARD_KEY, &format!("the table has no column \"{name}\"")));
                };
                let field = schema.field(i);
                if !quiver_meta::is_shard_key_type(field.data_type()) {
                    return Err(bad_value(
                        SHARD_KEY,
                        &format!(
                            "column \"{name}\" is of type {}, which cannot be hashed to a shard",
                            field.data_type()
                        ),
                    ));
                }
                if key.contains(field.name()) {
                    return Err(bad_value(SHARD_KEY, &format!("column \"{name}\" is named twice")));
                }
                key.push(field.name().clone());
            }
            key
        }
    };
    // A primary key with a column of a type that does not hash cannot be the default shard key: such a table's
    // statements go whole to one shard, as for a table without keys. (Named shard keys were checked above.)
    let hashes = shard_key
        .iter()
        .all(|k| schema.field_with_name(k).is_ok_and(|f| quiver_meta::is_shard_key_type(f.data_type())));
    let shard_key = if hashes { shard_key } else { Vec::new() };
    Ok(Sharding { shards, replicas, shard_key })
}

/// The names of a `sort_key` value, trimmed (an empty one where the list has a gap).
fn names_of(text: &str) -> Vec<&str> {
    text.split(',').map(str::trim).collect()
}

/// Checks the options a table would have against its columns: each `sort_key` column is a column of the table, of a
/// type that sorts (not nested), named once.
///
/// # Errors
///
/// [`Error::Plan`] naming the column that is not.
pub(crate) fn check(options: &BTreeMap<String, String>, schema: &Schema) -> Result<()> {
    let Some(text) = options.get(SORT_KEY) else { return Ok(()) };
    let mut seen = Vec::new();
    for name in names_of(text) {
        let Some(i) = column_index(schema, name) else {
            return Err(bad_value(SORT_KEY, &format!("the table has no column \"{name}\"")));
        };
        let field = schema.field(i);
        if field.data_type().is_nested() {
            return Err(bad_value(
                SORT_KEY,
                &format!("column \"{name}\" is of type {}, which does not sort", field.data_type()),
            ));
        }
        if seen.contains(&i) {
            return Err(bad_value(SORT_KEY, &format!("column \"{name}\" is named twice")));
        }
        seen.push(i);
    }
    Ok(())
}

/// A column by the name given in an option: as written, else folded to lower case as SQL folds unquoted names.
fn column_index(schema: &Schema, name: &str) -> Option<usize> {
    schema.index_of(name).or_else(|_| schema.index_of(&name.to_lowercase())).ok()
}

/// The columns (indices in `schema`) of the table's `sort_key`, if it has one that names only its columns.
pub(crate) fn sort_key(options: &BTreeMap<String, String>, schema: &Schema) -> Option<Vec<usize>> {
    names_of(options.get(SORT_KEY)?).into_iter().map(|n| column_index(schema, n)).collect()
}

fn bad_value(key: &str, detail: &str) -> Error {
    Error::Plan { message: format!("table option {key}: {detail}") }
}

/// The table's own `hot_bytes_max`, if it has one (an unreadable value, which `parse` never lets in: none).
pub(crate) fn hot_bytes_max(options: &BTreeMap<String, String>) -> Option<u64> {
    options.get(HOT_BYTES_MAX).and_then(|t| t.parse::<ByteSize>().ok()).map(|b| b.0)
}

/// The table's `tier_after` in milliseconds, if it has one.
pub(crate) fn tier_after(options: &BTreeMap<String, String>) -> Option<u64> {
    options.get(TIER_AFTER).and_then(|t| t.parse::<Millis>().ok()).map(|m| m.0)
}

/// The table's `ttl` in milliseconds, if it has one.
pub(crate) fn ttl(options: &BTreeMap<String, String>) -> Option<u64> {
    options.get(TTL).and_then(|t| t.parse::<Millis>().ok()).map(|m| m.0).filter(|&ms| ms > 0)
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn options_of(sql: &str) -> Vec<SqlOption> {
        use datafusion::sql::sqlparser::ast::{AlterTableOperation, CreateTableOptions, Statement};
        match Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse").remove(0) {
            Statement::CreateTable(ct) => match ct.table_options {
                CreateTableOptions::With(o) => o,
                other => panic!("{other:?}"),
            },
            Statement::AlterTable(at) => match &at.operations[0] {
                AlterTableOperation::SetOptionsParens { options } => options.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sizes_are_checked_defaults_reset_and_unknown_keys_are_refused() {
        let parsed = parse(&options_of("CREATE TABLE t (x INT) WITH (hot_bytes_max = '1GiB')")).expect("parse");
        assert_eq!(parsed, BTreeMap::from([(HOT_BYTES_MAX.to_string(), Some("1GiB".to_string()))]));
        let stored = BTreeMap::from([(HOT_BYTES_MAX.to_string(), "1GiB".to_string())]);
        assert_eq!(hot_bytes_max(&stored), Some(1 << 30));
        let parsed = parse(&options_of("ALTER TABLE t SET (hot_bytes_max = 4096)")).expect("number");
        assert_eq!(parsed[HOT_BYTES_MAX].as_deref(), Some("4096"));
        let parsed = parse(&options_of("ALTER TABLE t SET (hot_bytes_max = DEFAULT)")).expect("default");
        assert_eq!(parsed[HOT_BYTES_MAX], None);
        let e = parse(&options_of("ALTER TABLE t SET (hot_bytes_max = 'lots')")).expect_err("bad size").to_string();
        assert!(e.contains("hot_bytes_max") && e.contains("lots"), "{e}");
        let e = parse(&options_of("CREATE TABLE t (x INT) WITH (colour = 'red')")).expect_err("unknown").to_string();
        assert!(e.contains("colour") && e.contains("known: hot_bytes_max, tier_after, ttl, sort_key, shards"), "{e}");
        let parsed = parse(&options_of("CREATE TABLE t (x INT) WITH (tier_after = '1h', ttl = '30d')")).expect("ages");
        let stored: BTreeMap<String, String> = parsed.into_iter().map(|(k, v)| (k, v.expect("value"))).collect();
        assert_eq!((tier_after(&stored), ttl(&stored)), (Some(3_600_000), Some(30 * 86_400_000)));
        let e = parse(&options_of("ALTER TABLE t SET (tier_after = 'soon')")).expect_err("bad age").to_string();
        assert!(e.contains("tier_after") && e.contains("soon"), "{e}");
        let e = parse(&options_of("ALTER TABLE t SET (ttl = '0')")).expect_err("no ttl of 0").to_string();
        assert!(e.contains("ttl") && e.contains("more than 0"), "{e}");
    }

    #[test]
    fn sharding_options_resolve_against_the_columns_and_the_cluster_size() {
        use arrow::datatypes::{DataType, Field};
        let schema = Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("tags", DataType::new_list(DataType::Utf8, true), true),
        ]);
        let stored = |sql: &str| -> BTreeMap<String, String> {
            parse(&options_of(sql)).expect("parse").into_iter().map(|(k, v)| (k, v.expect("value"))).collect()
        };
        let pk = vec!["device".to_string()];
        let auto = ShardingDefaults::default();
        // Defaults from the cluster's size: two shards a node, two copies once there are two nodes.
        let mut none = BTreeMap::new();
        let one = take_sharding(&mut none, &schema, &pk, auto, 1).expect("defaults");
        assert_eq!(one, Sharding { shards: 2, replicas: 1, shard_key: pk.clone() });
        let three = take_sharding(&mut none, &schema, &pk, auto, 3).expect("defaults");
        assert_eq!((three.shards, three.replicas), (6, 2));
        let configured = ShardingDefaults { shards_per_table: 4, replication_factor: 3 };
        let c = take_sharding(&mut none, &schema, &pk, configured, 3).expect("configured");
        assert_eq!((c.shards, c.replicas), (4, 3));
        // Named in the statement: taken out of the options map, names as the table spells them.
        let mut given =
            stored("CREATE TABLE t (x INT) WITH (shards = 8, replicas = '3', shard_key = 'TS, device', ttl = '1d')");
        let s = take_sharding(&mut given, &schema, &pk, auto, 1).expect("given");
        assert_eq!(s, Sharding { shards: 8, replicas: 3, shard_key: vec!["ts".into(), "device".into()] });
        assert_eq!(given.keys().collect::<Vec<_>>(), vec!["ttl"], "only the tiering options stay options");
        for (sql, says) in [
            ("CREATE TABLE t (x INT) WITH (shards = 0)", "from 1 to 4096"),
            ("CREATE TABLE t (x INT) WITH (replicas = 9)", "from 1 to 7"),
            ("CREATE TABLE t (x INT) WITH (shards = 'many')", "\"many\""),
        ] {
            let e = parse(&options_of(sql)).expect_err(sql).to_string();
            assert!(e.contains(says), "{sql}: {e}");
        }
        for (key, says) in [("nope", "no column \"nope\""), ("tags", "cannot be hashed"), ("ts, ts", "named twice")] {
            let mut options = BTreeMap::from([(SHARD_KEY.to_string(), key.to_string())]);
            let e = take_sharding(&mut options, &schema, &pk, auto, 1).expect_err(key).to_string();
            assert!(e.contains(says), "{key}: {e}");
        }
        // A primary key that does not hash leaves the table without a shard key.
        let s = take_sharding(&mut BTreeMap::new(), &schema, &["tags".to_string()], auto, 1).expect("pk");
        assert!(s.shard_key.is_empty());
        let alter = parse(&options_of("ALTER TABLE t SET (shards = 4)")).expect("parse");
        let e = check_alterable(&alter).expect_err("fixed at creation").to_string();
        assert!(e.contains("shards") && e.contains("after CREATE TABLE"), "{e}");
        check_alterable(&parse(&options_of("ALTER TABLE t SET (ttl = '1d')")).expect("parse")).expect("ttl changes");
    }

    #[test]
    fn sort_keys_name_columns_of_the_table_once() {
        use arrow::datatypes::{DataType, Field};
        let schema = Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("tags", DataType::new_list(DataType::Utf8, true), true),
        ]);
        let parsed = parse(&options_of("CREATE TABLE t (x INT) WITH (sort_key = 'ts, Device')")).expect("parse");
        let stored: BTreeMap<String, String> = parsed.into_iter().map(|(k, v)| (k, v.expect("value"))).collect();
        check(&stored, &schema).expect("both are columns");
        assert_eq!(sort_key(&stored, &schema), Some(vec![1, 0]));
        let e = parse(&options_of("ALTER TABLE t SET (sort_key = 'ts,,device')")).expect_err("gap").to_string();
        assert!(e.contains("sort_key") && e.contains("not a list"), "{e}");
        for (value, says) in [("ts, nope", "no column \"nope\""), ("tags", "does not sort"), ("ts, ts", "named twice")]
        {
            let options = BTreeMap::from([(SORT_KEY.to_string(), value.to_string())]);
            let e = check(&options, &schema).expect_err(value).to_string();
            assert!(e.contains(says), "{value}: {e}");
        }
        assert_eq!(sort_key(&BTreeMap::new(), &schema), None);
    }
}
