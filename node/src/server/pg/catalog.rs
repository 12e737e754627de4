//! Installs PostgreSQL's catalog into the engine's DataFusion session, so clients' introspection works.
//!
//! [`install`] adds datafusion-pg-catalog's `pg_catalog` schema beside `public` in the `quiver` catalog (through
//! [`Engine::register_schema`]; its dynamic tables — `pg_class`, `pg_attribute`, `pg_namespace`, `pg_database`,
//! `pg_tables` — read the live catalog, so a table created a moment ago is listed), the PostgreSQL functions client
//! queries call (`format_type`, `pg_get_userbyid`, `pg_table_is_visible`, `current_schema`, `has_table_privilege`,
//! …), the `regclass`-style type names and the `int4` bounds of `generate_series`. It does what the crate's
//! `setup_pg_catalog` does, which cannot be used as is: it registers the schema through
//! `CatalogProvider::register_schema`, which the engine's catalog does not offer.
//!
//! It also replaces DataFusion's `version()` with PostgreSQL's form (`PostgreSQL 16.6 (Quiver …) on …`), which
//! tools parse to pick their SQL dialect, and adds `current_setting(name)`, which answers with the server defaults
//! of session parameters (not values a session changed with `SET`), and `to_regtype(name)`, which drivers use to
//! look types up (psycopg's `TypeInfo.fetch`). All of them are visible to every frontend, since they live in the
//! engine's shared session.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Builder, StringBuilder};
use arrow::datatypes::{DataType, Int32Type};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::generate_series_arg_coercion::CoerceIntArgsToBigInt;
use datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner;
use datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables, array_bounds_udf, create_current_database_udf,
    create_current_schema_udf, create_current_schemas_udf, create_pg_backend_pid_udf, create_pg_encoding_to_char_udf,
    create_pg_get_constraintdef, create_pg_get_partition_ancestors_udf, create_pg_get_partkeydef_udf,
    create_pg_get_statisticsobjdef_columns_udf, create_pg_get_userbyid_udf, create_pg_relation_is_publishable_udf,
    create_pg_relation_size_udf, create_pg_stat_get_numscans, create_pg_table_is_visible,
    create_pg_total_relation_size_udf, create_session_user_udf, format_type, has_privilege_udf, pg_get_expr_udf,
    quote_ident_udf,
};

use super::local::{SERVER_VERSION, setting_named};
use crate::engine::{CATALOG_NAME, Engine, SCHEMA_NAME};
use crate::error::Result;

/// Returns SQL that lists the declared primary keys of the tables matching `schema` and `table` (all when `None`),
/// in the shape of pgjdbc's `getPrimaryKeys` query: `table_cat, table_schem, table_name, column_name, key_seq,
/// pk_name`, ordered by table and key position. Constraint names follow PostgreSQL's default, `<table>_pkey`.
pub(super) async fn primary_keys_sql(engine: &Engine, schema: Option<&str>, table: Option<&str>) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut rows = Vec::new();
    if schema.is_none_or(|s| s == SCHEMA_NAME) {
        for info in engine.tables().await {
            if table.is_some_and(|t| t != info.name) {
                continue;
            }
            for (i, column) in info.primary_key.iter().enumerate() {
                rows.push(format!(
                    "({}, {}, {}, {}, {})",
                    quote(&info.name),
                    quote(column),
                    i + 1,
                    quote(&format!("{}_pkey", info.name)),
                    quote(SCHEMA_NAME)
                ));
            }
        }
    }
    let (values, filter) =
        if rows.is_empty() { ("('', '', 0, '', '')".to_string(), " WHERE false") } else { (rows.join(", "), "") };
    format!(
        "SELECT CAST(NULL AS TEXT) AS table_cat, s AS table_schem, t AS table_name, c AS column_name, \
         CAST(n AS SMALLINT) AS key_seq, p AS pk_name FROM (VALUES {values}) AS k(t, c, n, p, s){filter} \
         ORDER BY t, n"
    )
}

/// The schema PostgreSQL keeps its catalog in.
const PG_CATALOG: &str = "pg_catalog";

/// Installs `pg_catalog` and the PostgreSQL functions into `engine`'s session; does nothing if already installed.
///
/// # Errors
///
/// Fails when the catalog's embedded static tables cannot be loaded.
pub(super) fn install(engine: &Engine) -> Result<()> {
    let ctx = engine.session();
    if ctx.catalog(CATALOG_NAME).and_then(|c| c.schema(PG_CATALOG)).is_some() {
        return Ok(());
    }
    let static_tables = Arc::new(PgCatalogStaticTables::try_new()?);
    let schema = PgCatalogSchemaProvider::try_new(
        Arc::clone(ctx.state().catalog_list()),
        Arc::clone(&static_tables),
        EmptyContextProvider,
    )?;
    engine.register_schema(PG_CATALOG, Arc::new(schema));

    let functions = [
        create_current_database_udf(CATALOG_NAME),
        create_current_schema_udf(),
        create_current_schemas_udf(),
        create_pg_get_userbyid_udf(),
        has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
        create_pg_table_is_visible(),
        format_type::create_format_type_udf(),
        create_session_user_udf(),
        pg_get_expr_udf::create_pg_get_expr_udf(),
        create_pg_get_partkeydef_udf(),
        create_pg_relation_is_publishable_udf(),
        create_pg_get_statisticsobjdef_columns_udf(),
        create_pg_encoding_to_char_udf(),
        create_pg_backend_pid_udf(),
        create_pg_relation_size_udf(),
        create_pg_total_relation_size_udf(),
        create_pg_stat_get_numscans(),
        create_pg_get_constraintdef(),
        create_pg_get_partition_ancestors_udf(),
        quote_ident_udf::create_quote_ident_udf(),
        quote_ident_udf::create_parse_ident_udf(),
        array_bounds_udf::create_array_upper_udf(),
        array_bounds_udf::create_array_lower_udf(),
        version_udf(),
        current_setting_udf(),
        to_regtype_udf(&static_tables)?,
    ];
    for f in functions {
        ctx.register_udf(f);
    }
    ctx.register_udtf("pg_get_keywords", Arc::clone(&static_tables.pg_get_keywords) as _);

    // `x::regclass`, `::regtype`, … must parse; they plan as int4, the type of oid columns.
    {
        let state = ctx.state_ref();
        let mut state = state.write();
        let planned =
            SessionStateBuilder::new_from_existing(state.clone()).with_type_planner(Arc::new(PgOidTypePlanner)).build();
        *state = planned;
    }
    // psql passes int4 bounds (from array_upper, …) to generate_series, whose stock version wants int8.
    CoerceIntArgsToBigInt::widen(ctx);
    Ok(())
}

/// `version()` in PostgreSQL's form.
fn version_udf() -> ScalarUDF {
    let version = format!(
        "PostgreSQL {SERVER_VERSION} (Quiver {}) on {}-{}, compiled by rustc",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(version.clone()))))),
    )
}

/// SQL spellings of type names that differ from their `pg_type.typname`.
const TYPE_ALIASES: &[(&str, &str)] = &[
    ("bigint", "int8"),
    ("boolean", "bool"),
    ("character", "bpchar"),
    ("char", "bpchar"),
    ("character varying", "varchar"),
    ("decimal", "numeric"),
    ("double precision", "float8"),
    ("int", "int4"),
    ("integer", "int4"),
    ("real", "float4"),
    ("smallint", "int2"),
    ("time without time zone", "time"),
    ("time with time zone", "timetz"),
    ("timestamp without time zone", "timestamp"),
    ("timestamp with time zone", "timestamptz"),
];

/// `to_regtype(name)`: the oid of a type by name (`text`, `integer`, `pg_catalog.int4`, `text[]`), NULL when there
/// is none.
fn to_regtype_udf(static_tables: &PgCatalogStaticTables) -> Result<ScalarUDF> {
    let mut oids: HashMap<String, i32> = HashMap::new();
    for batch in static_tables.pg_type.data() {
        let (Some(names), Some(ids)) = (batch.column_by_name("typname"), batch.column_by_name("oid")) else {
            continue;
        };
        let names = arrow::compute::cast(names, &DataType::Utf8)?;
        let ids = arrow::compute::cast(ids, &DataType::Int32)?;
        for (name, id) in names.as_string::<i32>().iter().zip(ids.as_primitive::<Int32Type>().iter()) {
            if let (Some(name), Some(id)) = (name, id) {
                oids.insert(name.to_string(), id);
            }
        }
    }
    let lookup = move |name: &str| -> Option<i32> {
        let name = name.trim().to_ascii_lowercase();
        let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
        let (base, array) = match name.strip_suffix("[]") {
            Some(base) => (base.trim_end(), true),
            None => (name, false),
        };
        let base = TYPE_ALIASES.iter().find(|(alias, _)| *alias == base).map_or(base, |(_, typname)| *typname);
        oids.get(&if array { format!("_{base}") } else { base.to_string() }).copied()
    };
    Ok(create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = arrays
                .first()
                .ok_or_else(|| DataFusionError::Plan("to_regtype takes a type name".into()))?
                .as_string::<i32>();
            let mut out = Int32Builder::with_capacity(names.len());
            for name in names {
                out.append_option(name.and_then(&lookup));
            }
            let array: ArrayRef = Arc::new(out.finish());
            Ok(ColumnarValue::Array(array))
        }),
    ))
}

/// `current_setting(name)`: the server default of a session parameter.
fn current_setting_udf() -> ScalarUDF {
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = arrays
                .first()
                .ok_or_else(|| DataFusionError::Plan("current_setting takes a parameter name".into()))?
                .as_string::<i32>();
            let mut out = StringBuilder::with_capacity(names.len(), names.len() * 8);
            for name in names {
                match name {
                    None => out.append_null(),
                    Some(name) => match setting_named(&name.to_ascii_lowercase()) {
                        Some(setting) => out.append_value(setting.default),
                        None => {
                            return Err(DataFusionError::Execution(format!(
                                "unrecognized configuration parameter \"{name}\""
                            )));
                        }
                    },
                }
            }
            let array: ArrayRef = Arc::new(out.finish());
            Ok(ColumnarValue::Array(array))
        }),
    )
}
