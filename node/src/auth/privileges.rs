//! The privileges a planned statement needs, checked against the caller's grants.
//!
//! A scan of a table needs SELECT on it; an INSERT, UPDATE or DELETE needs that privilege on its target, and, as in
//! PostgreSQL, SELECT on it too when its WHERE or an UPDATE's SET reads the target's rows (the scan of the target that an UPDATE or
//! DELETE without a condition plans needs no SELECT; a scan of any other table does).
//! `information_schema` and `pg_catalog` (which clients read to list what exists) are readable by every user, who sees
//! in their listings of tables (and of columns, in `pg_attribute`) only those it holds a privilege on ([`hide`]); the
//! `system` schema only by a superuser (it shows other users' queries and the cluster's layout). Defining or dropping tables and views,
//! CREATE TABLE AS, TRUNCATE, MERGE and COPY to a file need a superuser.

use std::sync::Arc;

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{DdlStatement, Expr, Filter, LogicalPlan, WriteOp, lit};
use quiver_meta::{Catalog, Principals, Privilege};

use super::Caller;
use crate::error::{Error, Result};

/// Schemas every user may read.
const OPEN_SCHEMAS: [&str; 2] = ["information_schema", "pg_catalog"];

/// Refuses `plan` when `caller` lacks a privilege it needs.
///
/// # Errors
///
/// [`Error::PermissionDenied`] naming the first missing privilege.
pub(crate) fn check(caller: &Caller, principals: &Principals, catalog: &Catalog, plan: &LogicalPlan) -> Result<()> {
    let Caller::User(user) = caller else { return Ok(()) };
    if principals.is_superuser(user) {
        return Ok(());
    }
    let mut target = None;
    match plan {
        LogicalPlan::Ddl(ddl) => {
            let what = match ddl {
                DdlStatement::CreateExternalTable(_) | DdlStatement::CreateMemoryTable(_) => "create a table",
                DdlStatement::DropTable(_) => "drop a table",
                DdlStatement::CreateView(_) => "create a view",
                DdlStatement::DropView(_) => "drop a view",
                _ => "change the catalog",
            };
            return caller.require_superuser(principals, what);
        }
        LogicalPlan::Copy(_) => return caller.require_superuser(principals, "COPY to a file on the server"),
        LogicalPlan::Dml(dml) => {
            let privilege = match &dml.op {
                WriteOp::Insert(_) => Privilege::Insert,
                WriteOp::Update => Privilege::Update,
                WriteOp::Delete => Privilege::Delete,
                other => return caller.require_superuser(principals, other.name()),
            };
            let table = dml.table_name.table().to_string();
            need(principals, user, &table, privilege)?;
            // As in PostgreSQL, a condition or a SET that reads the target's rows needs SELECT on it too (the count
            // of rows a DELETE … WHERE removed tells what they held; SET v = v || 'x' builds on what v held).
            let mut reads = matches!(dml.op, WriteOp::Update) && sets_from_rows(&dml.input);
            dml.input.apply(|node| {
                reads |= matches!(node, LogicalPlan::Filter(_));
                Ok(if reads { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
            })?;
            if !reads || matches!(dml.op, WriteOp::Insert(_)) {
                target = Some(table);
            }
        }
        _ => {}
    }
    let mut denied = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let schema = scan.table_name.schema();
            let open = schema.is_some_and(|s| OPEN_SCHEMAS.contains(&s));
            let table = scan.table_name.table();
            if schema == Some(crate::engine::system::SYSTEM_SCHEMA) {
                denied = Some(Error::PermissionDenied { detail: format!("only a superuser may read system.{table}") });
                return Ok(TreeNodeRecursion::Stop);
            }
            // A table function (`generate_series(1, 10)`) scans what DataFusion names `<function>()`: it reads no
            // table, and every user may call it, as in PostgreSQL.
            let function =
                scan.table_name.schema().is_none() && table.ends_with("()") && catalog.table(table).is_none();
            if !open
                && !function
                && target.as_deref() != Some(table)
                && let Err(e) = need(principals, user, table, Privilege::Select)
            {
                denied = Some(e);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    denied.map_or(Ok(()), Err)
}

/// Whether an UPDATE's projection (one expression per column of the target: the column itself when the statement
/// leaves it, the SET expression otherwise) computes a new value from any column's value.
fn sets_from_rows(input: &LogicalPlan) -> bool {
    let LogicalPlan::Projection(projection) = input else { return true };
    projection.expr.iter().any(|expr| {
        let (inner, name) = match expr {
            Expr::Alias(alias) => (alias.expr.as_ref(), alias.name.as_str()),
            other => (other, ""),
        };
        match inner {
            Expr::Column(column) => column.name != name,
            other => other.column_refs().into_iter().next().is_some(),
        }
    })
}

/// The catalog tables that list tables by name, and the column holding the name.
const LISTINGS: [(&str, &str, &str); 5] = [
    ("information_schema", "tables", "table_name"),
    ("information_schema", "columns", "table_name"),
    ("information_schema", "views", "table_name"),
    ("pg_catalog", "pg_class", "relname"),
    ("pg_catalog", "pg_tables", "tablename"),
];

/// The catalog tables that list a table's parts by the table's oid, and the column holding the oid.
const OID_LISTINGS: [(&str, &str, &str); 1] = [("pg_catalog", "pg_attribute", "attrelid")];

/// What of the catalog a plan lists: tables by name, and tables' parts by oid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Listings {
    /// It reads a catalog table that lists tables by name (`information_schema.tables`, `pg_class`, …).
    pub(crate) by_name: bool,
    /// It reads one that lists tables' columns by the table's oid (`pg_attribute`).
    pub(crate) by_oid: bool,
}

impl Listings {
    /// Whether the plan lists anything a user may have to be kept from seeing.
    pub(crate) fn any(self) -> bool {
        self.by_name || self.by_oid
    }
}

/// The name or oid column of `scan` when it reads one of the catalog's listings, with whether it holds oids.
fn listing(scan: &datafusion::logical_expr::TableScan) -> Option<(&'static str, bool)> {
    let (schema, table) = (scan.table_name.schema()?, scan.table_name.table());
    let find = |list: &[(&str, &str, &'static str)]| {
        list.iter().find(|(s, t, _)| *s == schema && *t == table).map(|(_, _, column)| *column)
    };
    find(&LISTINGS).map(|c| (c, false)).or_else(|| find(&OID_LISTINGS).map(|c| (c, true)))
}

/// What of the catalog `plan` lists (a walk over the plan alone; the catalog is not looked at).
///
/// # Errors
///
/// Never in practice (the walk's closure does not fail).
pub(crate) fn listings(plan: &LogicalPlan) -> Result<Listings> {
    let mut found = Listings::default();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some((_, by_oid)) = listing(scan)
        {
            if by_oid { found.by_oid = true } else { found.by_name = true }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

/// The tables among `tables` that `caller` holds no privilege on; none for a superuser or a trusted caller.
pub(crate) fn unseen<'a>(
    caller: &Caller,
    principals: &Principals,
    tables: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let Caller::User(user) = caller else { return Vec::new() };
    if principals.is_superuser(user) {
        return Vec::new();
    }
    tables.filter(|t| !principals.sees(user, t)).map(str::to_string).collect()
}

/// Hides from `plan`'s reads of the catalog (`information_schema.tables`, `.columns`, `.views`, `pg_catalog.pg_class`,
/// `.pg_tables` by name, `pg_catalog.pg_attribute` by oid) the tables named in `names`, whose oids are `oids`, as
/// Flight SQL's listings do: a filter on the table's name or oid above each such scan.
///
/// # Errors
///
/// When the filter cannot be planned (it always can on these tables' own columns).
pub(crate) fn hide(plan: LogicalPlan, names: &[String], oids: &[i32]) -> Result<LogicalPlan> {
    if names.is_empty() && oids.is_empty() {
        return Ok(plan);
    }
    let names: Vec<Expr> = names.iter().map(|n| lit(n.as_str())).collect();
    let oids: Vec<Expr> = oids.iter().map(|o| lit(*o)).collect();
    let hidden = plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = &node else { return Ok(Transformed::no(node)) };
        let Some((column, by_oid)) = listing(scan) else { return Ok(Transformed::no(node)) };
        let values = if by_oid { &oids } else { &names };
        let column = Column::new(Some(scan.table_name.clone()), column);
        if values.is_empty() || !scan.projected_schema.has_column(&column) {
            return Ok(Transformed::no(node));
        }
        let unseen = Expr::InList(InList::new(Box::new(Expr::Column(column)), values.clone(), true));
        Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(unseen, Arc::new(node))?)))
    })?;
    Ok(hidden.data)
}

/// Refuses unless `user` holds `privilege` on `table`.
///
/// # Errors
///
/// [`Error::PermissionDenied`].
pub(crate) fn need(principals: &Principals, user: &str, table: &str, privilege: Privilege) -> Result<()> {
    if principals.allows(user, table, privilege) {
        return Ok(());
    }
    Err(Error::PermissionDenied { detail: format!("user \"{user}\" lacks {privilege} on table \"{table}\"") })
}
