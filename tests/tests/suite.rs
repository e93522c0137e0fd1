//! Every API test in one binary (`cargo test -p vdc-tests --test suite [FILTER]`; a
//! file's tests are `FILE::name`): one link instead of one per file keeps the build's
//! disk and time down, since each test binary links all of vdc.

mod api;
mod audit;
mod bench_floor;
mod bootmodes;
mod bundles;
mod cli;
mod console_browser;
mod contract;
mod convergence;
mod events;
mod images;
mod metrics;
mod multi_controller;
mod placement;
mod quotas;
mod races;
mod rate_limits;
mod s3;
mod sessions;
mod unauthorized;
mod upgrade;
mod users;
