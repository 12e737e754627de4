//! The table registry: what DataFusion sees as catalog `quiver`, schema `public`.
//!
//! The engine's catalog is the source of truth for tables; the registry maps each name to its DataFusion provider
//! (a [`crate::query::provider::HotTableProvider`] for native tables, a listing table for external ones). DataFusion
//! itself registers views and external tables through [`SchemaProvider::register_table`]; the engine records those in
//! its catalog after DataFusion has accepted them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionContext;

use super::{CATALOG_NAME, SCHEMA_NAME};

/// Name → provider for every table and view.
#[derive(Debug, Default)]
pub(crate) struct TableRegistry {
    tables: RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
    /// Extra schemas (such as `pg_catalog`) installed by frontends.
    extra_schemas: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
}

impl TableRegistry {
    pub(crate) fn insert(&self, name: &str, provider: Arc<dyn TableProvider>) {
        self.tables.write().expect("registry poisoned").insert(name.to_string(), provider);
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        self.tables.write().expect("registry poisoned").remove(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        self.tables.read().expect("registry poisoned").get(name).cloned()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tables.read().expect("registry poisoned").contains_key(name)
    }

    pub(crate) fn is_view(&self, name: &str) -> bool {
        self.get(name).is_some_and(|p| p.table_type() == TableType::View)
    }

    pub(crate) fn views(&self) -> Vec<(String, Arc<dyn TableProvider>)> {
        self.tables
            .read()
            .expect("registry poisoned")
            .iter()
            .filter(|(_, p)| p.table_type() == TableType::View)
            .map(|(n, p)| (n.clone(), Arc::clone(p)))
            .collect()
    }

    pub(crate) fn add_schema(&self, name: &str, schema: Arc<dyn SchemaProvider>) {
        self.extra_schemas.write().expect("registry poisoned").insert(name.to_string(), schema);
    }

    /// Drops the extra schemas. `pg_catalog` holds the session's catalog list, which holds this registry: a cycle
    /// that would keep every table, and with them the hot store and its lock, alive after the engine is gone.
    pub(crate) fn clear_schemas(&self) {
        std::mem::take(&mut *self.extra_schemas.write().unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

#[derive(Debug)]
struct RegistrySchema(Arc<TableRegistry>);

#[async_trait]
impl SchemaProvider for RegistrySchema {
    fn table_names(&self) -> Vec<String> {
        self.0.tables.read().expect("registry poisoned").keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.0.get(name))
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let mut tables = self.0.tables.write().expect("registry poisoned");
        if tables.contains_key(&name) {
            return Err(DataFusionError::Plan(format!("table \"{name}\" already exists")));
        }
        tables.insert(name, table);
        Ok(None)
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.0.remove(name))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

#[derive(Debug)]
struct RegistryCatalog {
    public: Arc<dyn SchemaProvider>,
    registry: Arc<TableRegistry>,
}

impl CatalogProvider for RegistryCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = vec![SCHEMA_NAME.to_string()];
        names.extend(self.registry.extra_schemas.read().expect("registry poisoned").keys().cloned());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SCHEMA_NAME {
            Some(Arc::clone(&self.public))
        } else {
            self.registry.extra_schemas.read().expect("registry poisoned").get(name).cloned()
        }
    }
}

/// Installs the registry as the session's default catalog.
pub(crate) fn install(ctx: &SessionContext, registry: Arc<TableRegistry>) {
    let public: Arc<dyn SchemaProvider> = Arc::new(RegistrySchema(Arc::clone(&registry)));
    ctx.register_catalog(CATALOG_NAME, Arc::new(RegistryCatalog { public, registry }));
}
