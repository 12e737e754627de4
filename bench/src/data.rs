//! TPC-H data, generated in memory with `tpchgen-arrow`.

use arrow::array::RecordBatch;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow, SupplierArrow,
};

/// Rows per generated batch.
pub const BATCH_ROWS: usize = 64 * 1024;

/// One generated table.
pub struct Table {
    /// The TPC-H table name.
    pub name: &'static str,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
}

impl Table {
    /// Returns the table's row count.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Generates `lineitem` at scale factor `sf`.
pub fn lineitem(sf: f64) -> Table {
    Table {
        name: "lineitem",
        batches: LineItemArrow::new(LineItemGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS).collect(),
    }
}

/// Generates all eight tables at scale factor `sf`.
pub fn all(sf: f64) -> Vec<Table> {
    vec![
        Table {
            name: "region",
            batches: RegionArrow::new(RegionGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS).collect(),
        },
        Table {
            name: "nation",
            batches: NationArrow::new(NationGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS).collect(),
        },
        Table {
            name: "supplier",
            batches: SupplierArrow::new(SupplierGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS).collect(),
        },
        Table {
            name: "customer",
            batches: CustomerArrow::new(CustomerGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS).collect(),
        },
        Table {
            name: "part",
            batches: PartArrow::new(PartGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS).collect(),
        },
        Table {
            name: "partsupp",
            batches: PartSuppArrow::new(PartSuppGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS).collect(),
        },
        Table {
            name: "orders",
            batches: OrderArrow::new(OrderGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS).collect(),
        },
        lineitem(sf),
    ]
}
