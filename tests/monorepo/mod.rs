//! Repositories as teams have them: an app in a subfolder of the repository (`deploy.path`),
//! with shared folders beside it (`deploy.paths`), deployed only when they change.

mod apps;
mod subfolder;
