//! The catalog state machine: tables, their columns and options, and the catalog version.
//!
//! [`Catalog::apply`] is the only way the catalog changes. It validates a [`CatalogCommand`] against the current state
//! and either changes nothing and returns an error, or applies the change, bumps [`Catalog::version`] by one and
//! returns a [`CatalogOutcome`]. Table ids are never reused, so data keyed by a dropped table's id can never be
//! mistaken for a later table's.

use std::collections::BTreeMap;

use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The identifier of a table, unique for the life of a database and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableId(pub u64);

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// The column's name.
    pub name: String,
    /// The column's Arrow type.
    pub data_type: DataType,
    /// Whether the column accepts NULL.
    pub nullable: bool,
}

/// Where a table's rows live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TableKind {
    /// Rows are stored by Quiver (hot store now, cold tier later).
    Native,
    /// Rows stay in the user's files, read in place; the table is read-only. `definition` is the `CREATE EXTERNAL
    /// TABLE` statement, which is planned again when the database opens, so that the files' current content is seen.
    External {
        /// The `CREATE EXTERNAL TABLE` statement that defined the table.
        definition: String,
        /// The files' location (a path or URL), for listings.
        location: String,
        /// The file format (`csv`, `parquet`, `json`).
        format: String,
    },
}

/// How a native table's rows are spread over the cluster: its shards, the copies kept of each, and the columns whose
/// hash picks a row's shard (docs/rfcs/0001-cluster-data-path.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sharding {
    /// The number of shards, 1 to [`SLOT_COUNT`](crate::SLOT_COUNT).
    pub shards: u32,
    /// The copies of each shard the cluster keeps (1 or more).
    pub replicas: u32,
    /// The columns hashed to choose a row's shard, in order; empty when the table has neither a shard key nor a
    /// primary key, and each statement then goes whole to one shard.
    pub shard_key: Vec<String>,
}

impl Default for Sharding {
    /// One shard, one copy: what tables created before sharding existed have.
    fn default() -> Self {
        Self { shards: 1, replicas: 1, shard_key: Vec::new() }
    }
}

/// The most copies of a shard a table may ask for.
pub const REPLICAS_MAX: u32 = 7;

/// The definition of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    /// The table's id.
    pub id: TableId,
    /// The table's name.
    pub name: String,
    /// The table's columns, in order.
    pub columns: Vec<ColumnDef>,
    /// The declared primary key's columns (stored; not yet enforced).
    pub primary_key: Vec<String>,
    /// Where the rows live.
    pub kind: TableKind,
    /// Table options given at creation (`WITH (...)` / `OPTIONS (...)`).
    pub options: BTreeMap<String, String>,
    /// How a native table's rows are spread over shards (external tables: the default, unused).
    #[serde(default)]
    pub sharding: Sharding,
    /// The catalog version that created the table.
    pub created_version: u64,
}

impl TableDef {
    /// Returns the table's Arrow schema.
    pub fn arrow_schema(&self) -> Schema {
        Schema::new(
            self.columns.iter().map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable)).collect::<Vec<_>>(),
        )
    }

    /// Returns whether the table's rows are stored by Quiver.
    pub fn is_native(&self) -> bool {
        matches!(self.kind, TableKind::Native)
    }
}

/// A change to the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CatalogCommand {
    /// Creates a table.
    CreateTable {
        /// The new table's name.
        name: String,
        /// Its columns.
        columns: Vec<ColumnDef>,
        /// Its declared primary key.
        primary_key: Vec<String>,
        /// Where its rows live.
        kind: TableKind,
        /// Its options.
        options: BTreeMap<String, String>,
        /// How a native table's rows are spread (ignored for external tables).
        #[serde(default)]
        sharding: Sharding,
        /// Succeed without change if the table exists.
        if_not_exists: bool,
    },
    /// Drops a table.
    DropTable {
        /// The table's name.
        name: String,
        /// Succeed without change if the table does not exist.
        if_exists: bool,
    },
    /// Changes a table's options (`ALTER TABLE … SET (…)` / `RESET (…)`): each key is set to its value, or removed
    /// when the value is `None`.
    SetTableOptions {
        /// The table's name.
        name: String,
        /// The changes.
        options: BTreeMap<String, Option<String>>,
    },
}

/// What applying a [`CatalogCommand`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogOutcome {
    /// The table was created.
    Created(TableDef),
    /// The table was dropped; its data must be removed.
    Dropped(TableDef),
    /// The table's options changed.
    Altered(TableDef),
    /// Nothing changed (`IF NOT EXISTS` / `IF EXISTS`).
    Unchanged,
}

/// The catalog: every table of a database, and a version that grows by one with each change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    tables: BTreeMap<String, TableDef>,
    next_table_id: u64,
    version: u64,
}

impl Catalog {
    /// Returns an empty catalog at version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the catalog version: the number of changes applied so far.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Returns the table of this name.
    pub fn table(&self, name: &str) -> Option<&TableDef> {
        self.tables.get(name)
    }

    /// Returns every table, ordered by name.
    pub fn tables(&self) -> impl Iterator<Item = &TableDef> {
        self.tables.values()
    }

    /// Applies a command.
    ///
    /// # Errors
    ///
    /// Returns [`Error::TableAlreadyExists`], [`Error::TableNotFound`] or [`Error::InvalidTableDefinition`] and leaves
    /// the catalog unchanged when the command does not fit the current state.
    pub fn apply(&mut self, command: CatalogCommand) -> Result<CatalogOutcome> {
        match command {
            CatalogCommand::CreateTable { name, columns, primary_key, kind, options, sharding, if_not_exists } => {
                if self.tables.contains_key(&name) {
                    return if if_not_exists {
                        Ok(CatalogOutcome::Unchanged)
                    } else {
                        Err(Error::TableAlreadyExists { table: name })
                    };
                }
                validate_definition(&name, &columns, &primary_key)?;
                let sharding = match kind {
                    TableKind::Native => {
                        validate_sharding(&name, &columns, &sharding)?;
                        sharding
                    }
                    TableKind::External { .. } => Sharding::default(),
                };
                self.version += 1;
                self.next_table_id += 1;
                let def = TableDef {
                    id: TableId(self.next_table_id),
                    name: name.clone(),
                    columns,
                    primary_key,
                    kind,
                    options,
                    sharding,
                    created_version: self.version,
                };
                self.tables.insert(name, def.clone());
                Ok(CatalogOutcome::Created(def))
            }
            CatalogCommand::DropTable { name, if_exists } => match self.tables.remove(&name) {
                Some(def) => {
                    self.version += 1;
                    Ok(CatalogOutcome::Dropped(def))
                }
                None if if_exists => Ok(CatalogOutcome::Unchanged),
                None => Err(Error::TableNotFound { table: name }),
            },
            CatalogCommand::SetTableOptions { name, options } => {
                let def = self.tables.get_mut(&name).ok_or_else(|| Error::TableNotFound { table: name.clone() })?;
                for (key, value) in options {
                    match value {
                        Some(v) => def.options.insert(key, v),
                        None => def.options.remove(&key),
                    };
                }
                self.version += 1;
                Ok(CatalogOutcome::Altered(def.clone()))
            }
        }
    }

    /// Encodes the catalog for storage.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a catalog is always representable as JSON")
    }

    /// Decodes a catalog written by [`Catalog::encode`].
    ///
    /// # Errors
    ///
    /// Returns [`Error::Decode`] when the bytes are not a catalog.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(Error::Decode)
    }
}

fn validate_definition(name: &str, columns: &[ColumnDef], primary_key: &[String]) -> Result<()> {
    let invalid = |detail: String| Error::InvalidTableDefinition { table: name.to_string(), detail };
    if name.is_empty() {
        return Err(invalid("the table name is empty".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for c in columns {
        if !seen.insert(c.name.as_str()) {
            return Err(invalid(format!("column \"{}\" is defined twice", c.name)));
        }
    }
    for k in primary_key {
        if !seen.contains(k.as_str()) {
            return Err(invalid(format!("primary key column \"{k}\" is not a column of the table")));
        }
    }
    Ok(())
}

fn validate_sharding(name: &str, columns: &[ColumnDef], sharding: &Sharding) -> Result<()> {
    let invalid = |detail: String| Error::InvalidTableDefinition { table: name.to_string(), detail };
    if sharding.shards == 0 || sharding.shards > crate::SLOT_COUNT {
        return Err(invalid(format!("shards must be 1 to {}, not {}", crate::SLOT_COUNT, sharding.shards)));
    }
    if sharding.replicas == 0 || sharding.replicas > REPLICAS_MAX {
        return Err(invalid(format!("replicas must be 1 to {REPLICAS_MAX}, not {}", sharding.replicas)));
    }
    let mut seen = std::collections::HashSet::new();
    for k in &sharding.shard_key {
        let Some(column) = columns.iter().find(|c| &c.name == k) else {
            return Err(invalid(format!("shard key column \"{k}\" is not a column of the table")));
        };
        if !seen.insert(k.as_str()) {
            return Err(invalid(format!("shard key column \"{k}\" is named twice")));
        }
        if !crate::state::is_shard_key_type(&column.data_type) {
            return Err(invalid(format!(
                "shard key column \"{k}\" is of type {}, which cannot be hashed to a shard",
                column.data_type
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn create(name: &str) -> CatalogCommand {
        CatalogCommand::CreateTable {
            name: name.into(),
            columns: vec![
                ColumnDef { name: "id".into(), data_type: DataType::Int64, nullable: false },
                ColumnDef { name: "v".into(), data_type: DataType::Utf8, nullable: true },
            ],
            primary_key: vec!["id".into()],
            kind: TableKind::Native,
            options: BTreeMap::new(),
            sharding: Sharding::default(),
            if_not_exists: false,
        }
    }

    #[test]
    fn create_assigns_fresh_ids_and_bumps_version() {
        let mut c = Catalog::new();
        let CatalogOutcome::Created(a) = c.apply(create("a")).expect("create a") else { panic!("not created") };
        let CatalogOutcome::Created(b) = c.apply(create("b")).expect("create b") else { panic!("not created") };
        assert_ne!(a.id, b.id);
        assert_eq!(c.version(), 2);
        assert_eq!(c.tables().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn create_existing_fails_unless_if_not_exists() {
        let mut c = Catalog::new();
        c.apply(create("a")).expect("create");
        let err = c.apply(create("a")).expect_err("duplicate must fail");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(c.version(), 1, "a failed command changes nothing");
        let mut cmd = create("a");
        if let CatalogCommand::CreateTable { if_not_exists, .. } = &mut cmd {
            *if_not_exists = true;
        }
        assert_eq!(c.apply(cmd).expect("if not exists"), CatalogOutcome::Unchanged);
        assert_eq!(c.version(), 1);
    }

    #[test]
    fn options_are_set_and_reset_and_an_unknown_table_is_refused() {
        let mut c = Catalog::new();
        c.apply(create("a")).expect("create");
        let set = |pairs: &[(&str, Option<&str>)]| CatalogCommand::SetTableOptions {
            name: "a".into(),
            options: pairs.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect(),
        };
        c.apply(set(&[("hot_bytes_max", Some("1GiB")), ("tier_after", Some("1h"))])).expect("set");
        c.apply(set(&[("tier_after", None), ("hot_bytes_max", Some("2GiB"))])).expect("reset");
        let options = &c.table("a").expect("a").options;
        assert_eq!(options, &BTreeMap::from([("hot_bytes_max".to_string(), "2GiB".to_string())]));
        assert_eq!(c.version(), 3);
        let mut missing = set(&[("x", Some("1"))]);
        if let CatalogCommand::SetTableOptions { name, .. } = &mut missing {
            *name = "b".into();
        }
        assert_eq!(c.apply(missing).expect_err("unknown").kind(), ErrorKind::NotFound);
        assert_eq!(c.version(), 3);
    }

    #[test]
    fn dropped_table_ids_are_never_reused() {
        let mut c = Catalog::new();
        let CatalogOutcome::Created(a) = c.apply(create("a")).expect("create") else { panic!("not created") };
        c.apply(CatalogCommand::DropTable { name: "a".into(), if_exists: false }).expect("drop");
        let CatalogOutcome::Created(a2) = c.apply(create("a")).expect("recreate") else { panic!("not created") };
        assert!(a2.id > a.id);
        let err = c.apply(CatalogCommand::DropTable { name: "zz".into(), if_exists: false }).expect_err("unknown");
        assert_eq!(err.to_string(), "table \"zz\" does not exist");
    }

    #[test]
    fn invalid_definitions_are_refused() {
        let mut c = Catalog::new();
        let mut cmd = create("t");
        if let CatalogCommand::CreateTable { primary_key, .. } = &mut cmd {
            *primary_key = vec!["nope".into()];
        }
        let err = c.apply(cmd).expect_err("bad pk");
        assert!(err.to_string().contains("\"nope\""), "{err}");
        assert_eq!(c.version(), 0);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut c = Catalog::new();
        c.apply(create("a")).expect("create");
        let mut ts = create("ts");
        if let CatalogCommand::CreateTable { columns, .. } = &mut ts {
            columns.push(ColumnDef {
                name: "at".into(),
                data_type: DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("+00:00".into())),
                nullable: true,
            });
        }
        c.apply(ts).expect("create ts");
        let back = Catalog::decode(&c.encode()).expect("decode");
        assert_eq!(back, c);
        assert!(Catalog::decode(b"{not json").is_err());
    }
}
