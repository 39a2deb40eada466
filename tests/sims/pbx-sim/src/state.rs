//! The simulator-wide state: the default token and the companies by id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::company::{Company, CompanyConfig, Stats};

pub struct AppState {
    pub default_token: String,
    companies: RwLock<HashMap<String, Arc<Company>>>,
}

impl AppState {
    pub fn new(default_token: String) -> Self {
        Self {
            default_token,
            companies: RwLock::default(),
        }
    }

    pub fn company(&self, id: &str) -> Option<Arc<Company>> {
        self.companies.read().get(id).cloned()
    }

    /// Creates the company or replaces its settings, returning it.
    pub fn configure(&self, id: &str, config: CompanyConfig, reset: bool) -> Arc<Company> {
        let mut companies = self.companies.write();
        match companies.get(id) {
            Some(company) => {
                company.configure(config, reset);
                Arc::clone(company)
            }
            None => {
                let company = Arc::new(Company::new(config));
                companies.insert(id.to_owned(), Arc::clone(&company));
                company
            }
        }
    }

    pub fn stats(&self) -> BTreeMap<String, Stats> {
        self.companies
            .read()
            .iter()
            .map(|(id, company)| (id.clone(), company.stats()))
            .collect()
    }

    pub fn reset_stats(&self) {
        for company in self.companies.read().values() {
            company.reset_stats();
        }
    }
}
