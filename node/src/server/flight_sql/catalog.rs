//! Answers to the Flight SQL catalog commands: what the server is ([`sql_info`]), which types it has
//! ([`xdbc_type_info`]), and which tables and keys exist ([`tables_batch`], [`primary_keys_batch`],
//! [`foreign_keys_schema`]).
//!
//! Quiver has one catalog ([`CATALOG_NAME`]) holding one schema ([`SCHEMA_NAME`]). JDBC drivers and tools such as
//! DBeaver call GetCatalogs, GetDbSchemas, GetTables and GetSqlInfo with every filter unset while connecting, so
//! every answer here must work without filters. Filters follow the Flight SQL rules: a catalog or schema given as a
//! name must match exactly (an empty string matches objects without one, of which Quiver has none); patterns use
//! `%` and `_`.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetPrimaryKeys, CommandGetTables, Nullable, Searchable, SqlInfo, SqlNullOrdering,
    SqlSupportedCaseSensitivity, SqlSupportedTransaction, SqlTransactionIsolationLevel, SupportedSqlGrammar,
    XdbcDataType, XdbcDatetimeSubcode,
};
use tonic::Status;

use crate::engine::{CATALOG_NAME, SCHEMA_NAME, TableInfo};
use crate::error::Error;
use crate::server::status::{encode_failure, status_from};

/// The table types [`TableInfo::table_type`] takes, in the order GetTableTypes lists them.
pub(super) const TABLE_TYPES: [&str; 3] = ["EXTERNAL TABLE", "TABLE", "VIEW"];

/// Returns what GetSqlInfo reports about the server.
pub(super) fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Quiver");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, arrow::ARROW_VERSION);
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    // Statements autocommit; BEGIN/COMMIT are accepted as SQL but group nothing, so neither the Flight SQL
    // transaction actions nor SQL transactions are advertised.
    b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlDefaultTransactionIsolation, SqlTransactionIsolationLevel::SqlTransactionNone as i32);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, true);
    // The dialect is PostgreSQL's: unquoted identifiers fold to lower case, `"` quotes them.
    b.append(SqlInfo::SqlIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // DataFusion orders NULL above every value: last ascending, first descending.
    b.append(SqlInfo::SqlNullOrdering, SqlNullOrdering::SqlNullsSortedHigh as i32);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    let grammars = [SupportedSqlGrammar::SqlMinimumGrammar, SupportedSqlGrammar::SqlCoreGrammar];
    b.append(SqlInfo::SqlSupportedGrammar, grammars.into_iter().fold(0i32, |mask, g| mask | (1 << g as i32)));
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    // A prepared update executes once per bound parameter row.
    b.append(SqlInfo::SqlBatchUpdatesSupported, true);
    b.build().expect("the static SQL info values have the types the Flight SQL union declares")
}

/// Returns the rows GetXdbcTypeInfo reports: the SQL types Quiver's tables can hold.
pub(super) fn xdbc_type_info() -> XdbcTypeInfoData {
    let mut b = XdbcTypeInfoDataBuilder::new();
    for t in [
        numeric_type("BOOLEAN", XdbcDataType::XdbcBit, 1, None),
        numeric_type("TINYINT", XdbcDataType::XdbcTinyint, 3, Some(10)),
        numeric_type("SMALLINT", XdbcDataType::XdbcSmallint, 5, Some(10)),
        numeric_type("INTEGER", XdbcDataType::XdbcInteger, 10, Some(10)),
        numeric_type("BIGINT", XdbcDataType::XdbcBigint, 19, Some(10)),
        // FLOAT and REAL are 32-bit in DataFusion's SQL; the sizes of binary floating point types are mantissa bits.
        numeric_type("FLOAT", XdbcDataType::XdbcFloat, 24, Some(2)),
        numeric_type("DOUBLE", XdbcDataType::XdbcDouble, 53, Some(2)),
        XdbcTypeInfo {
            create_params: Some(vec!["precision".into(), "scale".into()]),
            fixed_prec_scale: true,
            maximum_scale: Some(38),
            ..numeric_type("DECIMAL", XdbcDataType::XdbcDecimal, 38, Some(10))
        },
        text_type("VARCHAR", XdbcDataType::XdbcVarchar),
        text_type("TEXT", XdbcDataType::XdbcLongvarchar),
        XdbcTypeInfo { searchable: Searchable::Basic, ..text_type("BYTEA", XdbcDataType::XdbcVarbinary) },
        datetime_type("DATE", XdbcDataType::XdbcDate, 10, XdbcDatetimeSubcode::XdbcSubcodeYear),
        datetime_type("TIMESTAMP", XdbcDataType::XdbcTimestamp, 26, XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
    ] {
        b.append(t);
    }
    b.build().expect("the static type rows fit the GetXdbcTypeInfo schema")
}

/// The fields every row of [`xdbc_type_info`] shares.
fn base_type(name: &str, data_type: XdbcDataType, sql_data_type: XdbcDataType) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        nullable: Nullable::NullabilityNullable,
        searchable: Searchable::Full,
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        sql_data_type,
        ..XdbcTypeInfo::default()
    }
}

fn numeric_type(name: &str, data_type: XdbcDataType, column_size: i32, radix: Option<i32>) -> XdbcTypeInfo {
    XdbcTypeInfo {
        column_size: Some(column_size),
        unsigned_attribute: Some(false),
        num_prec_radix: radix,
        minimum_scale: Some(0),
        maximum_scale: Some(0),
        ..base_type(name, data_type, data_type)
    }
}

fn text_type(name: &str, data_type: XdbcDataType) -> XdbcTypeInfo {
    XdbcTypeInfo {
        literal_prefix: Some("'".into()),
        literal_suffix: Some("'".into()),
        case_sensitive: true,
        ..base_type(name, data_type, data_type)
    }
}

/// Date and time types report SQL_DATETIME as their SQL type and say which one in the subcode. (The date subcode is 1,
/// which the generated enum calls `XdbcSubcodeYear`: protobuf keeps only the first of aliased names.)
fn datetime_type(name: &str, data_type: XdbcDataType, column_size: i32, subcode: XdbcDatetimeSubcode) -> XdbcTypeInfo {
    XdbcTypeInfo {
        column_size: Some(column_size),
        literal_prefix: Some(format!("{name} '")),
        literal_suffix: Some("'".into()),
        datetime_subcode: Some(subcode),
        ..base_type(name, data_type, XdbcDataType::XdbcDatetime)
    }
}

/// Whether a catalog filter of a Flight SQL command selects Quiver's catalog.
fn catalog_matches(filter: Option<&str>) -> bool {
    filter.is_none_or(|c| c == CATALOG_NAME)
}

/// Whether a schema filter (an exact name, not a pattern) selects Quiver's schema.
fn schema_matches(filter: Option<&str>) -> bool {
    filter.is_none_or(|s| s == SCHEMA_NAME)
}

/// Builds the GetTables answer: `tables` filtered as `query` asks, with each table's Arrow schema when it asks for
/// them.
pub(super) fn tables_batch(query: CommandGetTables, tables: &[TableInfo]) -> Result<RecordBatch, Status> {
    let mut builder = query.into_builder();
    for t in tables {
        builder.append(CATALOG_NAME, SCHEMA_NAME, &t.name, t.table_type, &t.schema).map_err(encode_failure)?;
    }
    builder.build().map_err(encode_failure)
}

/// The GetPrimaryKeys schema the Flight SQL specification gives.
static PRIMARY_KEYS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
});

/// Returns the schema of GetPrimaryKeys answers.
pub(super) fn primary_keys_schema() -> SchemaRef {
    Arc::clone(&PRIMARY_KEYS_SCHEMA)
}

/// Builds the GetPrimaryKeys answer: one row per column of the table's declared key, in key order. Keys have no
/// name (`key_name` is null): Quiver does not name constraints.
pub(super) fn primary_keys_batch(query: &CommandGetPrimaryKeys, tables: &[TableInfo]) -> Result<RecordBatch, Status> {
    let mut catalog = StringBuilder::new();
    let mut schema = StringBuilder::new();
    let mut table = StringBuilder::new();
    let mut column = StringBuilder::new();
    let mut key_name = StringBuilder::new();
    let mut sequence = Int32Builder::new();
    if catalog_matches(query.catalog.as_deref()) && schema_matches(query.db_schema.as_deref()) {
        for t in tables.iter().filter(|t| t.name == query.table) {
            for (i, name) in t.primary_key.iter().enumerate() {
                catalog.append_value(CATALOG_NAME);
                schema.append_value(SCHEMA_NAME);
                table.append_value(&t.name);
                column.append_value(name);
                key_name.append_null();
                let position = i32::try_from(i + 1)
                    .map_err(|_| status_from(&Error::Internal(format!("table \"{}\" has a key too long", t.name))))?;
                sequence.append_value(position);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(catalog.finish()),
        Arc::new(schema.finish()),
        Arc::new(table.finish()),
        Arc::new(column.finish()),
        Arc::new(key_name.finish()),
        Arc::new(sequence.finish()),
    ];
    RecordBatch::try_new(primary_keys_schema(), columns).map_err(|e| status_from(&Error::Arrow(e)))
}

/// The schema the Flight SQL specification gives GetExportedKeys, GetImportedKeys and GetCrossReference.
static FOREIGN_KEYS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
});

/// Returns the schema of the foreign-key answers. Quiver has no foreign keys, so those answers are always empty;
/// they are still served, because JDBC tools ask for them whenever they show a table.
pub(super) fn foreign_keys_schema() -> SchemaRef {
    Arc::clone(&FOREIGN_KEYS_SCHEMA)
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int32Array};
    use arrow::datatypes::Int32Type;

    use super::*;

    fn table(name: &str, key: &[&str]) -> TableInfo {
        TableInfo {
            name: name.into(),
            schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
            table_type: "TABLE",
            primary_key: key.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn static_answers_build() {
        assert!(sql_info().record_batch([]).expect("sql info").num_rows() > 10);
        let types = xdbc_type_info().record_batch(None).expect("types");
        assert_eq!(types.num_rows(), 13);
    }

    #[test]
    fn primary_keys_lists_the_key_in_order() {
        let tables = [table("a", &["x", "y"]), table("b", &["z"])];
        let query = CommandGetPrimaryKeys { catalog: None, db_schema: None, table: "a".into() };
        let batch = primary_keys_batch(&query, &tables).expect("batch");
        assert_eq!(batch.schema(), primary_keys_schema());
        let columns: Vec<_> = batch.column(3).as_string::<i32>().iter().flatten().collect();
        assert_eq!(columns, ["x", "y"]);
        assert_eq!(batch.column(5).as_primitive::<Int32Type>(), &Int32Array::from(vec![1, 2]));
    }

    #[test]
    fn primary_keys_of_another_catalog_is_empty() {
        let tables = [table("a", &["x"])];
        let query = CommandGetPrimaryKeys { catalog: Some("other".into()), db_schema: None, table: "a".into() };
        assert_eq!(primary_keys_batch(&query, &tables).expect("batch").num_rows(), 0);
    }
}
