//! DELETE and UPDATE: what they change in a batch of rows, and in a table's hot chunks.
//!
//! Both rewrite the chunks that hold matching rows: under the table's DML lock, chunks are pruned with the WHERE
//! clause, each remaining chunk is read whole and the predicate evaluated; a chunk with matches is replaced by its
//! surviving (DELETE) or changed (UPDATE) rows. All replacements of one statement commit in one atomic, durable write,
//! so a statement is all-or-nothing and the affected-row count is exact. Tiered rows are rewritten the same way, file
//! by file, and committed through the manifest (`crate::engine` `rewrite`).
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
use crate::error::{Error, Result};
use crate::table::{Chunk, ShardReplica};

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

/// A DELETE or UPDATE ready to apply to batches of the table's rows.
pub(crate) struct Compiled {
    predicate: Option<Arc<dyn PhysicalExpr>>,
    assignments: Option<Vec<Option<Arc<dyn PhysicalExpr>>>>,
    /// The WHERE clause against the bare table schema, for pruning chunks and files by their statistics.
    pub(crate) prune: Vec<Expr>,
}

/// Plans the expressions of `change`.
///
/// # Errors
///
/// Planning errors of the expressions.
pub(crate) fn compile(state: &dyn Session, change: &RowChange) -> Result<Compiled> {
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
    let prune = match &change.predicate {
        Some(p) => vec![unqualify(p)?],
        None => Vec::new(),
    };
    Ok(Compiled { predicate, assignments, prune })
}

impl Compiled {
    /// Applies the change to `batch`, rows of `table`: the rows it matched, and what replaces the batch (its
    /// surviving rows for DELETE, its rows changed for UPDATE; `None` when nothing matched).
    ///
    /// # Errors
    ///
    /// Evaluation errors, and [`Error::NotNullViolation`] when an UPDATE sets NULL in a NOT NULL column.
    pub(crate) fn rewrite(&self, table: &ShardReplica, batch: &RecordBatch) -> Result<(u64, Option<RecordBatch>)> {
        let mask = match &self.predicate {
            Some(p) => {
                let value = p.evaluate(batch)?.into_array(batch.num_rows())?;
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
            return Ok((0, None));
        }
        let schema = table.schema();
        let replacement = match &self.assignments {
            None => filter_record_batch(batch, &not(&mask)?)?,
            Some(exprs) => {
                let mut columns: Vec<ArrayRef> = Vec::with_capacity(exprs.len());
                for (i, expr) in exprs.iter().enumerate() {
                    let old = batch.column(i);
                    columns.push(match expr {
                        None => Arc::clone(old),
                        Some(e) => {
                            let new = e.evaluate(batch)?.into_array(batch.num_rows())?;
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
        Ok((matched as u64, Some(table.conform(&replacement)?)))
    }
}

/// What a DELETE or UPDATE does to a table's hot chunks.
#[derive(Default)]
pub(crate) struct HotChange {
    /// The rows it matched.
    pub(crate) affected: u64,
    /// Each chunk with matching rows, and what replaces it (possibly no rows).
    pub(crate) changed: Vec<(Arc<Chunk>, RecordBatch)>,
}

/// Works out what `change` does to `chunks` of `table`, changing nothing yet.
///
/// # Errors
///
/// As [`Compiled::rewrite`], and errors reading chunks.
pub(crate) fn hot_change(
    state: &dyn Session,
    table: &ShardReplica,
    change: &Compiled,
    chunks: &[Arc<Chunk>],
) -> Result<HotChange> {
    let schema = table.schema();
    let mut out = HotChange::default();
    for chunk in prune_chunks(state, &schema, chunks, &change.prune)? {
        let batch = table.read_chunk(&chunk, None, &schema)?;
        let (matched, replacement) = change.rewrite(table, &batch)?;
        let Some(replacement) = replacement else { continue };
        out.affected += matched;
        out.changed.push((chunk, replacement));
    }
    Ok(out)
}

/// Applies a hot change to the table in one atomic, durable write; returns the rows it affected.
pub(crate) async fn commit_hot(table: &Arc<ShardReplica>, change: HotChange) -> Result<u64> {
    if change.changed.is_empty() {
        return Ok(0);
    }
    let (removed, added): (Vec<Arc<Chunk>>, Vec<RecordBatch>) = change.changed.into_iter().unzip();
    let added: Vec<RecordBatch> = added.into_iter().filter(|b| b.num_rows() > 0).collect();
    let t = Arc::clone(table);
    crate::blocking::run("DML commit task", move || t.replace(&removed, added)).await??;
    Ok(change.affected)
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
