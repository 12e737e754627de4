//! DELETE and UPDATE on hot tables.
//!
//! Both rewrite the chunks that hold matching rows: under the table's DML lock, chunks are pruned with the WHERE
//! clause, each remaining chunk is read whole and the predicate evaluated; a chunk with matches is replaced by its
//! surviving (DELETE) or changed (UPDATE) rows. All replacements of one statement commit in one atomic, durable write,
//! so a statement is all-or-nothing and the affected-row count is exact.
//!
//! We plan these statements ourselves from the unoptimized logical plan instead of using DataFusion's
//! `TableProvider::delete_from`/`update` hooks: in DataFusion 55 the optimizer can fold a `WHERE false` or rewrite an
//! `IN (subquery)` into a join, after which the hook receives no filter and would change every row. Reading the
//! predicate before optimization, and refusing subqueries with a clear error, cannot go wrong that way.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, filter_record_batch, not, prep_null_mask_filter};
use datafusion::catalog::Session;
use datafusion::common::DFSchemaRef;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;

use super::provider::prune_chunks;
use crate::cold::ColdState;
use crate::error::{Error, Result};
use crate::table::HotTable;

/// A DELETE or UPDATE taken apart: the WHERE predicate and, for UPDATE, the new value of each assigned column.
#[derive(Debug)]
pub(crate) struct RowChange {
    /// The WHERE clause; `None` matches every row.
    pub(crate) predicate: Option<Expr>,
    /// For UPDATE, per table column: `Some(expr)` when the column is assigned.
    pub(crate) assignments: Option<Vec<Option<Expr>>>,
    /// The schema the expressions are written against (the table scan's, qualified).
    pub(crate) scan_schema: DFSchemaRef,
}

fn has_subquery(e: &Expr) -> bool {
    e.exists(|e| Ok(matches!(e, Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)))).unwrap_or(true)
}

/// Takes apart the input plan of a DELETE (`is_update == false`) or UPDATE of `table`.
///
/// # Errors
///
/// [`Error::Unsupported`] for forms we cannot rewrite safely (UPDATE … FROM, subqueries in WHERE or SET).
pub(crate) fn analyze(table: &str, input: &LogicalPlan, is_update: bool) -> Result<RowChange> {
    let unsupported = |what: &str| Error::Unsupported {
        what: format!("{what} in {} of table \"{table}\"", if is_update { "UPDATE" } else { "DELETE" }),
    };
    let mut node = input;
    let mut projection: Option<Vec<Expr>> = None;
    let mut predicate: Option<Expr> = None;
    loop {
        match node {
            LogicalPlan::Projection(p) if is_update && projection.is_none() && predicate.is_none() => {
                projection = Some(p.expr.clone());
                node = &p.input;
            }
            LogicalPlan::Filter(f) if predicate.is_none() => {
                predicate = Some(f.predicate.clone());
                node = &f.input;
            }
            LogicalPlan::SubqueryAlias(a) => node = &a.input,
            LogicalPlan::TableScan(scan) => {
                if let Some(p) = &predicate
                    && has_subquery(p)
                {
                    return Err(unsupported("a subquery"));
                }
                let assignments = match projection {
                    None if is_update => return Err(unsupported("an assignment list we cannot read")),
                    None => None,
                    Some(exprs) => {
                        let fields = scan.projected_schema.fields();
                        if exprs.len() != fields.len() {
                            return Err(unsupported("an assignment list we cannot read"));
                        }
                        let mut out = Vec::with_capacity(exprs.len());
                        for (expr, field) in exprs.into_iter().zip(fields.iter()) {
                            let inner = match expr {
                                Expr::Alias(a) => *a.expr,
                                other => other,
                            };
                            if has_subquery(&inner) {
                                return Err(unsupported("a subquery"));
                            }
                            let unchanged = matches!(&inner, Expr::Column(c) if c.name == *field.name());
                            out.push(if unchanged { None } else { Some(inner) });
                        }
                        Some(out)
                    }
                };
                return Ok(RowChange { predicate, assignments, scan_schema: Arc::clone(&scan.projected_schema) });
            }
            LogicalPlan::Join(_) => return Err(unsupported("FROM or USING")),
            _ => return Err(unsupported("this statement form")),
        }
    }
}

/// Applies a DELETE or UPDATE to `table`; returns the number of rows it affected.
pub(crate) async fn apply(state: &dyn Session, table: &Arc<HotTable>, change: RowChange) -> Result<u64> {
    let predicate = match &change.predicate {
        Some(p) => Some(state.create_physical_expr(p.clone(), &change.scan_schema)?),
        None => None,
    };
    let assignments: Option<Vec<Option<Arc<dyn PhysicalExpr>>>> = match &change.assignments {
        Some(list) => Some(
            list.iter()
                .map(|a| a.as_ref().map(|e| state.create_physical_expr(e.clone(), &change.scan_schema)).transpose())
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    let _guard = table.dml_lock.lock().await;
    let version = table.version();
    // Tiered rows are in Parquet files that DELETE and UPDATE do not rewrite yet: refuse rather than change only the
    // hot rows.
    match table.cold() {
        ColdState::Ready(view) if view.files.is_empty() => {}
        ColdState::Ready(_) => {
            return Err(Error::Unsupported {
                what: format!("DELETE or UPDATE of table \"{}\", which has rows in the cold tier", table.def().name),
            });
        }
        ColdState::Unavailable(detail) => return Err(Error::ColdUnavailable { detail }),
    }
    let schema = table.schema();
    let candidates = match &change.predicate {
        Some(p) => prune_chunks(state, &schema, &version, std::slice::from_ref(&unqualify(p)?))?,
        None => version.to_vec(),
    };
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let mut affected = 0u64;
    for chunk in candidates {
        let batch = table.read_chunk(&chunk, None, &schema)?;
        let mask = match &predicate {
            Some(p) => {
                let value = p.evaluate(&batch)?.into_array(batch.num_rows())?;
                let mask = value
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| Error::Plan { message: "the WHERE clause is not a boolean expression".into() })?;
                // NULL means "not matched".
                if mask.null_count() > 0 { prep_null_mask_filter(mask) } else { mask.clone() }
            }
            None => BooleanArray::from(vec![true; batch.num_rows()]),
        };
        let matched = mask.true_count();
        if matched == 0 {
            continue;
        }
        affected += matched as u64;
        let replacement = match &assignments {
            None => filter_record_batch(&batch, &not(&mask)?)?,
            Some(exprs) => {
                let mut columns: Vec<ArrayRef> = Vec::with_capacity(exprs.len());
                for (i, expr) in exprs.iter().enumerate() {
                    let old = batch.column(i);
                    columns.push(match expr {
                        None => Arc::clone(old),
                        Some(e) => {
                            let new = e.evaluate(&batch)?.into_array(batch.num_rows())?;
                            let new =
                                if new.data_type() == old.data_type() { new } else { cast(&new, old.data_type())? };
                            zip(&mask, &new, old)?
                        }
                    });
                }
                for (field, column) in schema.fields().iter().zip(&columns) {
                    if !field.is_nullable() && column.null_count() > 0 {
                        return Err(Error::NotNullViolation {
                            table: table.def().name.clone(),
                            column: field.name().clone(),
                        });
                    }
                }
                RecordBatch::try_new(Arc::clone(&schema), columns)?
            }
        };
        if replacement.num_rows() > 0 {
            added.push(table.conform(&replacement)?);
        }
        removed.push(chunk);
    }
    if removed.is_empty() {
        return Ok(0);
    }
    let table2 = Arc::clone(table);
    crate::blocking::run("DML commit task", move || table2.replace(&removed, added)).await??;
    Ok(affected)
}

/// Strips table qualifiers so the expression can be planned against the bare table schema for pruning.
fn unqualify(e: &Expr) -> Result<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    Ok(e.clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(datafusion::common::Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })?
        .data)
}
