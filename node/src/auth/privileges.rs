//! The privileges a planned statement needs, checked against the caller's grants.
//!
//! A scan of a table needs SELECT on it; an INSERT, UPDATE or DELETE needs that privilege on its target, and, as in
//! PostgreSQL, SELECT on it too when its WHERE reads the target's rows (the scan of the target that an UPDATE or
//! DELETE without a condition plans needs no SELECT; a scan of any other table does).
//! `information_schema` and `pg_catalog` (which clients read to list what exists) are readable by every user, who sees
//! in their listings of tables only those it holds a privilege on ([`hide_unseen`]); the
//! `system` schema only by a superuser (it shows other users' queries and the cluster's layout). Defining or dropping tables and views,
//! CREATE TABLE AS, TRUNCATE, MERGE and COPY to a file need a superuser.

use std::sync::Arc;

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{DdlStatement, Expr, Filter, LogicalPlan, WriteOp, lit};
use quiver_meta::{Principals, Privilege};

use super::Caller;
use crate::error::{Error, Result};

/// Schemas every user may read.
const OPEN_SCHEMAS: [&str; 2] = ["information_schema", "pg_catalog"];

/// Refuses `plan` when `caller` lacks a privilege it needs.
///
/// # Errors
///
/// [`Error::PermissionDenied`] naming the first missing privilege.
pub(crate) fn check(caller: &Caller, principals: &Principals, plan: &LogicalPlan) -> Result<()> {
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
            // As in PostgreSQL, a condition that reads the target's rows needs SELECT on it too (the count of rows a
            // DELETE … WHERE removed tells what they held).
            let mut reads = false;
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
            if !open
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

/// The catalog tables that list tables by name, and the column holding the name.
const LISTINGS: [(&str, &str, &str); 5] = [
    ("information_schema", "tables", "table_name"),
    ("information_schema", "columns", "table_name"),
    ("information_schema", "views", "table_name"),
    ("pg_catalog", "pg_class", "relname"),
    ("pg_catalog", "pg_tables", "tablename"),
];

/// Hides from `plan`'s reads of the catalog (`information_schema.tables`, `.columns`, `.views`, `pg_catalog.pg_class`,
/// `.pg_tables`) the tables among `tables` that `caller` holds no privilege on, as Flight SQL's listings do: a
/// filter on the table's name above each such scan. A superuser (or a trusted caller) sees everything; a plan that
/// reads none of these is returned as it is, without looking at the catalog.
///
/// # Errors
///
/// When the filter cannot be planned (it always can on these tables' own columns).
pub(crate) fn hide_unseen<'a>(
    caller: &Caller,
    principals: &Principals,
    tables: impl Iterator<Item = &'a str>,
    plan: LogicalPlan,
) -> Result<LogicalPlan> {
    let Caller::User(user) = caller else { return Ok(plan) };
    let listing = |scan: &datafusion::logical_expr::TableScan| {
        let (schema, table) = (scan.table_name.schema()?, scan.table_name.table());
        LISTINGS.iter().find(|(s, t, _)| *s == schema && *t == table).map(|(_, _, column)| *column)
    };
    let mut lists = false;
    plan.apply_with_subqueries(|node| {
        lists |= matches!(node, LogicalPlan::TableScan(scan) if listing(scan).is_some());
        Ok(if lists { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    if !lists || principals.is_superuser(user) {
        return Ok(plan);
    }
    let hidden: Vec<Expr> = tables.filter(|t| !principals.sees(user, t)).map(lit).collect();
    if hidden.is_empty() {
        return Ok(plan);
    }
    let hidden = plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = &node else { return Ok(Transformed::no(node)) };
        let Some(column) = listing(scan) else { return Ok(Transformed::no(node)) };
        let column = Column::new(Some(scan.table_name.clone()), column);
        if !scan.projected_schema.has_column(&column) {
            return Ok(Transformed::no(node));
        }
        let unseen = Expr::InList(InList::new(Box::new(Expr::Column(column)), hidden.clone(), true));
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
